"""The drafter: who proposes each step's candidate trees, for one row or a batch of rows.

One verb, :meth:`Drafter.propose`: the rows' state (the hidden state the heads read, the root token, the row's context
index) -> each row's :class:`Draft` (a tree with its token ids, masks and node probabilities), or None when every
row should take a plain step. Behind it: the heads (Medusa or sequential, static or dynamic trees, :mod:`.decode`'s
drafting functions), the context (:mod:`.context`, each row its own index), or both in one tree; and the budget's
three decisions (:mod:`.budget`): do the heads draft this step (their own trees must pay for their drafting, else
they pause and re-check now and then), how much of a union to verify (the heads' cost is spent by then: only the
nodes' yield per step time counts), and, when only the context proposes, how much of its chain (often none).

Both decode loops (:func:`.decode.generate`, :class:`.batch.BatchDecoder`) call it the same way; what they feed back
is the budget's step timings and the context's decode events (:func:`.context.observe_tree`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .context import MAX_TOKENS, ContextStats, union_tree
from .tree import Tree, TreeBuffers, static_tree, top_nodes, tree_buffers, tree_tokens


@dataclass
class RowState:
    """What the drafters read of one row."""

    hidden: torch.Tensor  # [H] the hidden state at the last accepted position (the heads' input)
    root: int  # the token the model chose there (not yet in the cache)
    index: object = None  # infer.draft.context.ContextIndex of the row's tokens (context drafting), else None


@dataclass
class Draft:
    """One row's tree for this step."""

    tree: Tree  # root first; ``source`` set when the context took part
    tokens: torch.Tensor  # [T] token ids, root first
    buffers: TreeBuffers  # tree_mask [T, T], position offsets [T]
    logp: torch.Tensor | None  # [K, m] the heads' top log-probs behind the probabilities (None: tree.score)
    match: int = 0  # the n-gram length that found the row's context chain (0: none)


class Drafter:
    """Proposes the rows' trees each step (see the module docstring). ``room``: the largest tree a step may verify,
    root included (the node budget, or a fixed-shape engine's largest step); ``batched``: the batched decoder's
    budget question (drafting costs every row) instead of the single sequence's."""

    def __init__(self, model, heads, cfg, room: int, batched: bool = False):
        from ..decode.single import DEFAULT_CHOICES, DecodeConfig

        if isinstance(cfg, DecodeConfig):
            cfg = cfg.drafting  # the engine's settings alone (infer.decode.single.Drafting)

        self.cfg, self.room, self.batched = cfg, room, batched
        # the context proposes a chain (alone, or beside the heads)
        self.use_context = cfg.context or cfg.hybrid
        self.heads = None if cfg.context else heads
        self.plain = cfg.tree == "none" or (self.heads is None and not self.use_context)
        if self.plain:
            self.heads = None
        self.lm_head = model.get_output_embeddings()
        self.embed = (
            model.get_input_embeddings() if self.heads is not None and self.heads.sequential else None
        )
        self.static = self.static_buffers = None
        self.depth = 0
        if self.heads is not None:
            h = self.heads
            self.depth = h.num_heads if cfg.depth is None else min(cfg.depth, h.num_heads)
            if cfg.tree == "static":
                choices = cfg.medusa_choices or [c for c in DEFAULT_CHOICES if len(c) <= self.depth]
                self.static = static_tree(choices)
                if self.static.max_depth > self.depth:
                    raise ValueError(
                        f"the static tree is {self.static.max_depth} deep but only {self.depth} heads are used"
                    )
                self.static_buffers = tree_buffers(self.static)
        self.top_m = cfg.top_m if self.static is None else int(self.static.rank.max()) + 1
        # the context nodes' acceptance rates, shared by the rows (and requests, when given)
        self.stats = None
        if self.use_context:
            self.stats = cfg.context_stats if cfg.context_stats is not None else ContextStats()
        self.chain_max = min(cfg.node_budget, MAX_TOKENS, max(room - 1, 1))

    def budget_for(self, latency):
        """The latency profile the budget decisions use (None: fixed trees), given the loop's profile."""
        return None if self.plain or self.static is not None else latency

    def _chains_cannot_pay(self, chains, matches, budget) -> bool:
        """The context's chains alone, judged by the budget before any tree is built (the trees would hold just
        these nodes, scored by the same calibrated rates): True when a plain step pays more. On a batch where trees
        never pay this saved building and cutting B union trees every step (~7 % of a 4-row step here)."""
        logp = [
            torch.tensor([math.log(self.stats.rate("context", m, d)) for d in range(1, len(c) + 1)]).cumsum(0)
            for c, m in zip(chains, matches)
        ]
        return budget.chain_budget(logp) == 0

    @torch.no_grad()
    def propose(self, rows: list[RowState], budget=None) -> tuple[list[Draft] | None, bool, float]:
        """-> (each row's Draft, or None: a plain step for every row; whether the heads drafted; seconds the heads
        spent). ``budget``: the :class:`.budget.LatencyProfile` for this many rows, or None."""
        from ..decode.single import draft_trees

        if self.plain:
            return None, False, 0.0
        device = rows[0].hidden.device
        B = len(rows)
        auto = budget is not None and self.heads is not None
        if self.heads is None:
            heads_now = False
        elif not auto:
            heads_now = True
        else:
            heads_now = budget.may_draft(B, self.depth) if self.batched else budget.want_draft()
        chains = [r.index.propose(self.chain_max) if r.index is not None else [] for r in rows]
        if not heads_now and not any(chains):  # nothing proposed: a plain step, no trees built
            return None, False, 0.0
        matches = [r.index.match if r.index is not None else 0 for r in rows]
        if not heads_now and budget is not None and self._chains_cannot_pay(chains, matches, budget):
            return None, False, 0.0
        roots = [torch.tensor(r.root, device=device) for r in rows]
        trees, tops, logps, n, heads_s = [None] * B, [None] * B, [None] * B, None, 0.0
        if heads_now:  # the heads run once for the whole batch (sequential heads: once per depth)
            hiddens = torch.stack([r.hidden for r in rows])  # [B, H]
            drafted, spent = draft_trees(
                self.heads, self.lm_head, self.embed, hiddens, [r.root for r in rows], self.cfg, self.depth,
                self.top_m, self.static,
            )  # fmt: skip
            heads_s = spent  # the heads' own share (tree building is the rest of the drafting time)
            trees = [t for t, _, _ in drafted]
            tops = [tok for _, tok, _ in drafted]
            logps = [lp for _, _, lp in drafted]
            if auto:  # the n best paths with the best tokens/s; and: do the heads pay for themselves?
                n = budget.best_budget([t.score[1:].sort(descending=True).values for t in trees])
        if any(chains) or not heads_now:  # the context's chains join the trees (or are the trees)
            for b, chain in enumerate(chains):
                if chain or trees[b] is None:
                    drafted = roots[b][None] if trees[b] is None else tree_tokens(trees[b], roots[b], tops[b])
                    trees[b] = union_tree(trees[b], drafted, chain, matches[b], self.stats)
                    tops[b] = logps[b] = None
            # the drafting is spent: cut by what the nodes yield per step time
            if budget is not None and any(chains):
                n = budget.chain_budget([t.score[1:].sort(descending=True).values for t in trees])
        for b, tree in enumerate(trees):
            if tree is not self.static:  # a static tree is verified as it is
                if n is not None:
                    tree = top_nodes(tree, n)
                if tree.size > self.room:  # a union over the budget (or the engine's largest step): its best
                    tree = top_nodes(tree, self.room - 1)
                trees[b] = tree
        if all(t.size == 1 for t in trees):  # the budget cut every tree to its root: a plain step
            return None, heads_now, heads_s
        drafts = [
            Draft(
                tree,
                tree_tokens(tree, roots[b], tops[b]),
                self.static_buffers if tree is self.static else tree_buffers(tree),
                logps[b],
                matches[b],
            )
            for b, tree in enumerate(trees)
        ]
        return drafts, heads_now, heads_s
