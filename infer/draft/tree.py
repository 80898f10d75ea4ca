"""Candidate trees for Medusa verification, as free functions over tensors.

A tree has T = N + 1 positions: position 0 is the root (the token the base model already chose, not yet in the
KV cache), positions 1..N are candidate nodes, ordered so that parents precede children (by depth). Node i at
depth d >= 1 takes its token from head d-1 at rank ``rank[i]`` of that head's top list.

- :func:`static_tree` builds the node set once from a ``medusa_choices`` list (paths of per-head ranks).
- :func:`sparse_tree_from_accuracies` derives an n-node ``medusa_choices`` from a per-head top-k accuracy table.
- :func:`dynamic_tree` builds the node set every step from the heads' top-m log-probabilities: the n most probable
  paths of the Cartesian product (arXiv 2502.05947), by a per-depth beam, K small top-k calls, no Python loop
  over nodes.
- :func:`conditional_tree` is the same n-best search over path-conditioned probabilities (sequential heads): built
  depth by depth, the next head runs once, batched, on the current best frontier nodes, each gets its top-m, and
  the n best paths overall are kept (a path's score = the sum of its nodes' conditional log-probabilities).
  :func:`conditional_static_tree` gives a ``medusa_choices`` tree its tokens the same way.
- :func:`top_nodes` keeps the n best nodes of a scored tree (the auto budget's cut).
- :func:`tree_buffers` turns a node set into ``tree_mask``, position offsets and ``retrieve_indices``.

An ``expand(depth, paths)`` callable drafts one depth: paths [F, depth + 1] token ids (root first) of F frontier
nodes -> (tokens [F, m], log-probs [F, m]) of each node's m candidate children, sorted descending.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

Expand = Callable[[int, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Tree:
    """A node set. All tensors are [T] with the root at index 0 (parent 0, depth 0, head -1, rank 0)."""

    parents: torch.Tensor  # [T] long: index of the parent position; the root is its own parent
    depth: torch.Tensor  # [T] long: 0 for the root
    rank: torch.Tensor  # [T] long: rank within head (depth-1)'s top list
    score: torch.Tensor  # [T] float: log-probability of the path (0 for the root)
    tokens: torch.Tensor | None = (
        None  # [T] long: token ids when the builder drafted them (root: placeholder)
    )
    source: torch.Tensor | None = (
        None  # [T] long: who proposed each node (infer.draft.context.SOURCES), when mixed
    )

    @property
    def size(self) -> int:
        return self.parents.shape[0]

    @property
    def max_depth(self) -> int:
        return int(self.depth.max())


@dataclass
class TreeBuffers:
    tree_mask: torch.Tensor  # [T, T] bool: position i attends to position j iff j is i or an ancestor of i
    position_offsets: torch.Tensor  # [T] long: depth, added to the prefix length for position ids
    retrieve_indices: torch.Tensor  # [P, D+1] long: tree positions along each root-to-leaf path, -1 padded


def tree_tokens(tree: Tree, root_token: torch.Tensor, topk_tokens: torch.Tensor) -> torch.Tensor:
    """root token [] + per-head candidates [K, m] -> tree token ids [T] (or the tree's own drafted tokens)."""
    if tree.tokens is not None:
        tokens = tree.tokens.clone()
        tokens[0] = root_token
        return tokens
    head = (tree.depth - 1).clamp(min=0)
    tokens = topk_tokens[head, tree.rank.clamp(max=topk_tokens.shape[1] - 1)]
    tokens[0] = root_token
    return tokens


def ancestor_mask(parents: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
    """[T], [T] -> [T, T] bool, True where column j is row i itself or one of its ancestors."""
    T = parents.shape[0]
    mask = torch.eye(T, dtype=torch.bool, device=parents.device)
    rows = torch.arange(T, device=parents.device)
    cur = rows
    for _ in range(int(depth.max())):  # D iterations of tensor ops, not a loop over nodes
        cur = parents[cur]
        mask[rows, cur] = True
    return mask


def tree_buffers(tree: Tree) -> TreeBuffers:
    mask = ancestor_mask(tree.parents, tree.depth)
    T = tree.size
    is_leaf = torch.ones(T, dtype=torch.bool, device=mask.device)
    is_leaf[tree.parents[1:]] = False
    leaves = is_leaf.nonzero().squeeze(1)  # [P], in tree order
    rows, cols = mask[leaves].nonzero(as_tuple=True)
    retrieve = torch.full((leaves.numel(), tree.max_depth + 1), -1, dtype=torch.long, device=mask.device)
    retrieve[rows, tree.depth[cols]] = cols
    return TreeBuffers(tree_mask=mask, position_offsets=tree.depth.clone(), retrieve_indices=retrieve)


def _root(device) -> tuple[torch.Tensor, ...]:
    z = torch.zeros(1, dtype=torch.long, device=device)
    return z, z, z, torch.zeros(1, device=device)


# ---------------------------------------------------------------------------------------------- static tree
def static_tree(medusa_choices: list[list[int]] | list[tuple[int, ...]]) -> Tree:
    """A tree from Medusa's ``medusa_choices``: each entry is a path of per-head ranks, e.g. (0, 1) = head 0's
    top-1 token followed by head 1's second token. Every prefix of a path must be listed too."""
    paths = sorted({tuple(int(r) for r in p) for p in medusa_choices}, key=lambda p: (len(p), p))
    if not paths:
        raise ValueError("medusa_choices is empty")
    index = {(): 0}
    parents, depth, rank = [0], [0], [0]
    for i, p in enumerate(paths, start=1):
        if not p or min(p) < 0:
            raise ValueError(f"medusa_choices: bad path {list(p)} (ranks must be >= 0, paths non-empty)")
        if p[:-1] not in index:
            raise ValueError(f"medusa_choices: path {list(p)} is listed without its prefix {list(p[:-1])}")
        index[p] = i
        parents.append(index[p[:-1]])
        depth.append(len(p))
        rank.append(p[-1])
    t = lambda x: torch.tensor(x, dtype=torch.long)  # noqa: E731
    return Tree(parents=t(parents), depth=t(depth), rank=t(rank), score=torch.zeros(len(parents)))


def sparse_tree_from_accuracies(accuracies: list[list[float]], num_nodes: int) -> list[tuple[int, ...]]:
    """Medusa's sparse-tree recipe: grow greedily by the product of per-head top-k accuracies.

    ``accuracies[k][r]`` = P(head k's rank-r token is the right one). Returns ``num_nodes`` paths, each added
    after its parent, always the frontier path with the highest product.
    """
    K = len(accuracies)
    frontier = [(-accuracies[0][r], (r,)) for r in range(len(accuracies[0]))]
    heapq.heapify(frontier)
    chosen: list[tuple[int, ...]] = []
    while frontier and len(chosen) < num_nodes:
        neg, path = heapq.heappop(frontier)
        chosen.append(path)
        d = len(path)
        if d < K:
            for r, acc in enumerate(accuracies[d]):
                heapq.heappush(frontier, (neg * acc, path + (r,)))
    return chosen


# --------------------------------------------------------------------------------------------- dynamic tree
def dynamic_tree(topk_logp: torch.Tensor, num_nodes: int) -> Tree:
    """The ``num_nodes`` most probable paths of the Cartesian product of the heads' top-m lists.

    topk_logp: [K, m] log-probabilities of each head's top-m tokens (sorted descending, raw or calibrated): Medusa
    heads do not see the path, so every node of depth d gets the same m candidates. Node tokens are taken from
    the heads' top lists by rank (:func:`tree_tokens`).
    """
    K, m = topk_logp.shape
    ranks = torch.arange(m, device=topk_logp.device)

    def expand(d: int, paths: torch.Tensor):
        F = paths.shape[0]
        return ranks.expand(F, m), topk_logp[d].expand(F, m)

    tree = conditional_tree(expand, torch.zeros((), dtype=torch.long, device=topk_logp.device), K, num_nodes)
    tree.tokens = None  # the "tokens" drafted above are ranks
    return tree


def conditional_tree(
    expand: Expand,
    root_token: torch.Tensor,
    depth: int,
    num_nodes: int,
    beam: int | None = None,
    min_mass: float = 0.0,
) -> Tree:
    """The ``num_nodes`` most probable paths when each node's children come from ``expand`` (see module docstring
    and :func:`conditional_tree_steps`, which builds it)."""
    steps = conditional_tree_steps(root_token, depth, num_nodes, beam, min_mass)
    try:
        request = next(steps)
        while True:
            request = steps.send(expand(*request))
    except StopIteration as done:
        return done.value


def conditional_trees(expand_rows, root_tokens: list[torch.Tensor], depth: int, num_nodes: int,
                      beam: int | None = None, min_mass: float = 0.0) -> list[Tree]:  # fmt: skip
    """:func:`conditional_tree` for several rows in lockstep: each depth, one ``expand_rows(d, [(row, paths
    [F_row, d+1]), ...]) -> [(tokens [F_row, m], logp [F_row, m]), ...]`` call serves every row still growing
    (a batch's heads run once per depth, not once per row and depth). Row b's tree is what conditional_tree
    would build with the same expansions."""
    steps = [conditional_tree_steps(r, depth, num_nodes, beam, min_mass) for r in root_tokens]
    waiting, trees = {}, {}
    for b, gen in enumerate(steps):
        waiting[b] = next(gen)  # every row asks for depth 0 first
    while waiting:
        d = min(req[0] for req in waiting.values())
        rows = [b for b, req in waiting.items() if req[0] == d]
        answers = expand_rows(d, [(b, waiting[b][1]) for b in rows])
        for b, answer in zip(rows, answers):
            try:
                waiting[b] = steps[b].send(answer)
            except StopIteration as done:
                trees[b] = done.value
                del waiting[b]
    return [trees[b] for b in range(len(steps))]


def conditional_tree_steps(
    root_token: torch.Tensor, depth: int, num_nodes: int, beam: int | None = None, min_mass: float = 0.0
):
    """The conditional tree builder as a generator: yields ``(d, paths [F, d+1])`` (the frontier whose children
    head d must draft), receives ``(tokens [F, m], logp [F, m])``, returns the Tree.

    A path's score is the sum of its log-probabilities; scores never rise along a path, and ties go to the
    shallower node, so the kept set is closed under parents: a tree. Only the best ``num_nodes`` nodes of depth
    d-1 can have children among the overall best, so each depth expands at most that many (a beam, exact).
    ``beam`` < num_nodes expands only that many per depth (cheaper drafting; exact for the best ``beam`` paths).
    ``min_mass``: stop before a depth whose frontier's total path probability is below it (its children, whose
    probabilities sum to at most that, could add no more than ``min_mass`` expected tokens: not worth a head call).
    """
    device = root_token.device
    scores, parents, ranks, depths, toks = [], [], [], [], []
    paths = root_token.reshape(1, 1)  # [F, d + 1] token paths of the frontier
    prev_score = torch.zeros(1, device=device)  # the root
    prev_start, total = 0, 0  # global id of depth d-1's first node; nodes so far
    for d in range(depth):
        if d > 0 and min_mass > 0 and float(torch.logsumexp(prev_score, 0)) < math.log(min_mass):
            break
        cand_tok, cand_logp = yield d, paths  # [F, m] each
        m = cand_logp.shape[1]
        cand = (prev_score[:, None] + cand_logp).reshape(-1)  # [F * m]
        best, idx = torch.topk(cand, min(num_nodes, cand.numel()))  # sorted descending
        local = idx // m
        scores.append(best)
        parents.append(local + prev_start if d > 0 else torch.full_like(idx, -1))
        ranks.append(idx % m)
        depths.append(torch.full_like(idx, d + 1))
        toks.append(cand_tok.reshape(-1)[idx])
        width = best.numel() if beam is None else min(beam, best.numel())  # the next depth's frontier
        paths = torch.cat([paths[local[:width]], toks[-1][:width, None]], 1)
        prev_start, total = total, total + best.numel()
        prev_score = best[:width]
    score, parent, rank, depth_, tok = (torch.cat(x) for x in (scores, parents, ranks, depths, toks))
    z, z2, z3, zs = _root(device)
    candidates = Tree(  # by depth, then by score: a tree whose n best nodes are the answer
        parents=torch.cat([z, parent + 1]),  # global id -> position (the root, -1, becomes 0)
        depth=torch.cat([z2, depth_]),
        rank=torch.cat([z3, rank]),
        score=torch.cat([zs, score]),
        tokens=torch.cat([root_token.reshape(1), tok]),
    )
    return top_nodes(candidates, num_nodes)


def conditional_static_tree(tree: Tree, expand: Expand, root_token: torch.Tensor) -> Tree:
    """A static tree (``medusa_choices``) whose node tokens and scores come from ``expand``: node (r_1..r_d) is
    rank r_d among the children that ``expand`` drafts for its parent's path. Each depth's parents run at once."""
    T, D = tree.size, tree.max_depth
    paths = torch.zeros(
        T, D + 1, dtype=torch.long, device=root_token.device
    )  # [T, D+1] token path of each node
    paths[0, 0] = root_token
    score = torch.zeros(T, device=root_token.device)
    for d in range(1, D + 1):
        nodes = (tree.depth == d).nonzero().squeeze(1)
        par, inv = tree.parents[nodes].unique(return_inverse=True)  # the parents that have children here
        cand_tok, cand_logp = expand(d - 1, paths[par, :d])  # [P, m]
        r = tree.rank[nodes].clamp(max=cand_tok.shape[1] - 1)
        paths[nodes, :d] = paths[tree.parents[nodes], :d]
        paths[nodes, d] = cand_tok[inv, r]
        score[nodes] = score[tree.parents[nodes]] + cand_logp[inv, r]
    tokens = paths[torch.arange(T, device=paths.device), tree.depth]
    return Tree(parents=tree.parents, depth=tree.depth, rank=tree.rank, score=score, tokens=tokens)


def top_nodes(tree: Tree, num_nodes: int) -> Tree:
    """The ``num_nodes`` best-scored nodes of a tree (closed under parents: scores never rise along a path, and
    ties go to the shallower node), in depth-then-score order; parents remapped."""
    if num_nodes >= tree.size - 1:
        return tree
    order = torch.sort(tree.score[1:], descending=True, stable=True).indices[:num_nodes] + 1
    order = order[torch.sort(tree.depth[order], stable=True).indices]
    keep = torch.cat([order.new_zeros(1), order])
    new_pos = torch.full((tree.size,), -1, dtype=torch.long, device=keep.device)
    new_pos[keep] = torch.arange(keep.numel(), device=keep.device)
    pick = lambda x: None if x is None else x[keep]  # noqa: E731
    return Tree(
        parents=new_pos[tree.parents[keep]],
        depth=tree.depth[keep],
        rank=tree.rank[keep],
        score=tree.score[keep],
        tokens=pick(tree.tokens),
        source=pick(tree.source),
    )
