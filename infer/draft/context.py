"""The context drafter, and the one tree over the heads' candidates and the context's continuation.

**The index** (prompt lookup over token ids): continuations of the current suffix found earlier in the prompt and
in the text generated so far. When a token is appended, each n-gram (n = 1..max_ngram) that ends just before it is
recorded with the position where its continuation starts (the latest occurrence wins), so a proposal costs
``max_ngram`` dictionary lookups and an update ``max_ngram`` inserts per token, whatever the context's length (no
rescan of an 8k-token prompt each step). Longest matches first.

**One tree** (:func:`union_tree`): the context's chain is walked down the heads' tree from the root; where a heads
node already holds the chain's token the node is shared (a token proposed by both counts once), elsewhere the chain
continues as new nodes. Every node's score is the log of P(node accepted | parent accepted), the same meaning as
the heads' calibrated probabilities: a heads node keeps its own; a context node gets the acceptance rate that
:class:`ContextStats` measured for nodes like it — same kind (context alone, or shared with the heads), same match
length (the n-gram that found the chain), same depth — from the decode events of the requests before (every
verified context node whose parent was accepted is one event). Path scores are sums along the path, so the dynamic
tree's budget cut (:func:`infer.draft.tree.top_nodes`) ranks both sources together and the predicted tokens/step follows
what the context actually yields. With no heads tree the union is the chain alone (context-only drafting).
"""

from __future__ import annotations

import math

import torch

from .tree import Tree

MAX_NGRAM = 3  # the longest suffix matched (then shorter ones)
MAX_TOKENS = 10  # the longest chain proposed (an engine's largest step cuts it further)
SOURCES = ("root", "heads", "context", "both", "heads")  # Tree.source codes -> who proposed each node
HEADS, CONTEXT, BOTH, RIVAL = (
    1,
    2,
    3,
    4,
)  # RIVAL: a heads node beside a context node that proposes another token


class ContextIndex:
    def __init__(self, tokens: list[int], max_ngram: int = MAX_NGRAM):
        self.max_ngram = max_ngram
        self.tokens: list[int] = []
        self.seen: dict[tuple[int, ...], int] = {}  # n-gram -> where its latest continuation starts
        self.match = 0  # the n-gram length behind the last proposal (0: none)
        self.extend(tokens)

    def extend(self, new: list[int]) -> None:
        """Append accepted tokens: the n-grams ending before each one now have a continuation."""
        toks = self.tokens
        for t in new:
            i = len(toks)
            for n in range(1, min(self.max_ngram, i) + 1):
                self.seen[tuple(toks[i - n : i])] = i
            toks.append(int(t))

    def propose(self, k: int) -> list[int]:
        """Up to ``k`` tokens that followed the longest earlier occurrence of the current suffix, or []."""
        toks = self.tokens
        for n in range(min(self.max_ngram, len(toks)), 0, -1):
            start = self.seen.get(tuple(toks[-n:]))
            if start is not None:
                self.match = n
                return toks[start : start + k]
        self.match = 0
        return []


class ContextStats:
    """Running P(node accepted | parent accepted) of context nodes per (kind, match length, depth), kind "context"
    (the context alone proposed it) or "both" (a heads node holds the same token); and of kind "rival": a heads node
    whose sibling is a context node with another token (the heads' own probability, calibrated without the context,
    over-claims there: such a node is scored by the lower of the two). Smoothed toward a prior (a few
    pseudo-events); counts are halved past ``HORIZON`` events so they follow the traffic of the moment. One object
    may serve every request of a pipeline (decode events accumulate across requests)."""

    PRIOR = {
        "context": (1.0, 2.0),
        "both": (2.0, 3.0),
        "rival": (1.0, 3.0),
    }  # pseudo (accepted, verified) events
    HORIZON = 256

    def __init__(self):
        self.counts: dict[tuple[str, int, int], list[float]] = {}

    def rate(self, kind: str, match: int, depth: int) -> float:
        a, n = self.counts.get((kind, match, min(depth, MAX_TOKENS)), (0.0, 0.0))
        pa, pn = self.PRIOR[kind]
        return (a + pa) / (n + pn)

    def observe(self, kind: str, match: int, depth: int, accepted: bool) -> None:
        cell = self.counts.setdefault((kind, match, min(depth, MAX_TOKENS)), [0.0, 0.0])
        cell[0] += accepted
        cell[1] += 1
        if cell[1] > self.HORIZON:
            cell[0] /= 2
            cell[1] /= 2


def union_tree(
    tree: Tree | None, tokens: torch.Tensor, chain: list[int], match: int, stats: ContextStats
) -> Tree:
    """The heads' tree (None: the root alone) with its token ids ``tokens`` [T] (root first) and the context's
    ``chain`` found by a ``match``-gram -> one tree [T'] with tokens, per-node ``source`` and path scores (see the
    module docstring). Parents precede children; the heads' nodes keep their positions."""
    device = tokens.device
    if tree is None:
        tree = Tree(
            *(torch.zeros(1, dtype=torch.long, device=device) for _ in range(3)),
            torch.zeros(1, device=device),
        )
    par, dep, rank = tree.parents.tolist(), tree.depth.tolist(), tree.rank.tolist()
    tok, sc = tokens.tolist(), tree.score.tolist()
    logq = [0.0] + [sc[i] - sc[par[i]] for i in range(1, len(par))]
    src = [0] + [HEADS] * (len(par) - 1)
    kids = {(par[i], tok[i]): i for i in range(1, len(par))}
    cur = 0
    for d, t in enumerate(chain, start=1):
        i = kids.get((cur, t))
        if i is None:  # the chain leaves the heads' tree: a node of its own
            i = len(par)
            par.append(cur), dep.append(d), rank.append(0), tok.append(int(t)), src.append(CONTEXT)
            logq.append(math.log(stats.rate("context", match, d)))
        else:
            src[i] = BOTH
            logq[i] = math.log(stats.rate("both", match, d))
        for j in range(1, len(par)):  # the heads' other children of the same parent: rivals of the chain
            if par[j] == par[i] and j != i and src[j] == HEADS:
                src[j] = RIVAL
                logq[j] = min(logq[j], math.log(stats.rate("rival", match, d)))
        cur = i
    score = [0.0] * len(par)
    for i in range(1, len(par)):
        score[i] = score[par[i]] + logq[i]
    long = lambda x: torch.tensor(x, dtype=torch.long, device=device)  # noqa: E731
    return Tree(
        parents=long(par), depth=long(dep), rank=long(rank), score=torch.tensor(score, device=device),
        tokens=long(tok), source=long(src),
    )  # fmt: skip


def observe_tree(
    tree: Tree, path: torch.Tensor, match: int, stats: ContextStats | None, counts: dict
) -> None:
    """After verification: every context node whose parent was accepted is one event for ``stats``; ``counts``
    (source name -> accepted tokens) gains the accepted path's nodes by who proposed them."""
    if tree.source is None:  # a tree of the heads alone
        counts["heads"] = counts.get("heads", 0) + path.numel() - 1
        return
    src, par, dep = tree.source.tolist(), tree.parents.tolist(), tree.depth.tolist()
    on = set(path.tolist())
    for i in path.tolist()[1:]:
        counts[SOURCES[src[i]]] = counts.get(SOURCES[src[i]], 0) + 1
    if stats is None:
        return
    kinds = {CONTEXT: "context", BOTH: "both", RIVAL: "rival"}
    for i in range(1, len(src)):
        if src[i] in kinds and par[i] in on:
            stats.observe(kinds[src[i]], match, dep[i], i in on)
