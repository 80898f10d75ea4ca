"""The context drafter: continuations of the current suffix found earlier in the prompt and in the text generated so
far (prompt lookup decoding, over token ids), proposed as a chain the engine verifies in one step.

The index is incremental: when a token is appended, each n-gram (n = 1..max_ngram) that ends just before it is
recorded with the position where its continuation starts (the latest occurrence wins), so a proposal costs
``max_ngram`` dictionary lookups and an update ``max_ngram`` inserts per token, whatever the context's length (no
rescan of an 8k-token prompt each step). Longest matches first.

Each chain node gets the log of the running acceptance rate observed at its depth (starting at 1/2), so the tree's
predicted tokens/step follows what this context actually yields.
"""

from __future__ import annotations

import itertools
import math

import torch

from .tree import Tree

MAX_NGRAM = 3  # the longest suffix matched (then shorter ones)
MAX_TOKENS = 10  # the longest chain proposed (an engine's largest step cuts it further)


class ContextIndex:
    def __init__(self, tokens: list[int], max_ngram: int = MAX_NGRAM):
        self.max_ngram = max_ngram
        self.tokens: list[int] = []
        self.seen: dict[tuple[int, ...], int] = {}  # n-gram -> where its latest continuation starts
        self.proposed = [0] * (MAX_TOKENS + 1)  # per depth: chain nodes verified
        self.accepted = [0] * (MAX_TOKENS + 1)  # per depth: of them accepted
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
                return toks[start : start + k]
        return []

    def observe(self, chain_len: int, accepted: int) -> None:
        """A verified chain of ``chain_len`` tokens of which the first ``accepted`` were accepted."""
        for d in range(1, chain_len + 1):
            self.proposed[d] += 1
            self.accepted[d] += d <= accepted

    def chain_tree(self, chain: list[int], device) -> Tree:
        """The proposal as a tree: root + one node per token, each the child of the previous; scores are the
        running per-depth acceptance rates (smoothed towards 1/2), summed along the chain."""
        T = len(chain) + 1
        logp = [math.log((self.accepted[d] + 1) / (self.proposed[d] + 2)) for d in range(1, T)]
        score = [0.0, *itertools.accumulate(logp)]
        return Tree(
            parents=torch.arange(-1, T - 1, device=device).clamp(min=0),
            depth=torch.arange(T, device=device),
            rank=torch.zeros(T, dtype=torch.long, device=device),
            score=torch.tensor(score, device=device),
            tokens=torch.tensor([0, *chain], dtype=torch.long, device=device),
        )
