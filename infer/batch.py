"""Batched Medusa decoding: B prompts of different lengths decode together, each row with its own tree (dynamic or
static), its own accepted length per step, its own position ids and its own stop; finished rows leave the batch
and new rows join it at step boundaries (the server's continuous batching).

The batch shares one KV cache [B, heads, S, D]. A new row is prefilled alone (exactly as batch-1 decoding does)
and its cache appended as a new batch row. Each step every row verifies its tree in one forward of [B, T] tokens
(T = the biggest tree, smaller trees padded with nodes that see only themselves), with a 4-D mask built from each
row's ``valid`` slots and tree mask, and position ids ``pos_b + depth``. After acceptance, each row's accepted path
is moved to the front of the step's block (:func:`infer.backbone.compact_rows`); the rest are holes that the mask
hides, squeezed out now and then (:func:`infer.backbone.pack_rows`). Drafting and acceptance are batch-1's own
functions (:mod:`infer.decode`), so greedy output of every row equals its batch-1 output (fp32).

    decoder = BatchDecoder(model, heads, cfg, eos)
    rows = [decoder.add(ids) for ids in prompts]   # ids [1, L_b]
    while decoder.active:
        decoder.step()                             # rows[b].result grows; finished rows leave
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .backbone import (
    additive_mask,
    check_window,
    compact_rows,
    decoder_and_head,
    forward_hidden,
    merge_rows,
    pack_rows,
    project,
    select_rows,
    stop_ids,
)
from .context import MAX_TOKENS, observe_tree, union_tree
from .decode import (
    DEFAULT_CHOICES,
    DecodeConfig,
    DecodeResult,
    _emit,
    _now,
    _pick,
    accept_deterministic,
    accept_sample,
    draft_trees,
    expected_tokens,
    is_greedy,
    tree_room,
)
from .tree import static_tree, top_nodes, tree_buffers, tree_tokens


@dataclass
class Row:
    """One sequence of the batch."""

    cfg: DecodeConfig  # its own max_new_tokens / acceptance / temperature (the drafting settings are the batch's)
    result: DecodeResult
    on_tokens: Callable[[list[int]], None] | None = None  # called with each step's new tokens (streaming)
    generator: torch.Generator | None = None
    tag: object = None  # the caller's id for this row
    root: int = 0  # the last emitted token: the next step's root
    pos: int = 0  # its position id (= tokens of the row so far, prompt included, minus one)
    hidden: torch.Tensor | None = field(default=None, repr=False)  # [H] hidden state the heads read
    done: bool = False
    cancelled: bool = False
    index: object = None  # the context drafter's index of this row's tokens (drafter "context")


class BatchDecoder:
    """Continuous batched decoding over one shared cache. ``cfg.tree == "none"`` or no heads: plain batched
    decoding with the same machinery (the fair baseline). ``latency``: an :class:`infer.budget.BatchLatency`, the
    node budget chosen each step for the whole batch from the profile of its batch size."""

    def __init__(
        self, model, heads=None, cfg: DecodeConfig | None = None, eos: set[int] | None = None, latency=None
    ):
        from transformers import DynamicCache

        self.model, self.cfg = model, cfg or DecodeConfig()
        self.context = self.cfg.context  # each row drafts from its own context alone (prompt lookup)
        self.use_context = self.cfg.context or self.cfg.hybrid  # ... alone or beside the heads, in one tree
        self.plain = self.cfg.tree == "none" or (heads is None and not self.use_context)
        self.heads = None if self.plain or self.context else heads
        self.eos = stop_ids(model) if eos is None else eos
        self.decoder, self.lm_head = decoder_and_head(model)
        self.embed = model.get_input_embeddings() if self.heads is not None and heads.sequential else None
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.latency = None if self.plain or self.cfg.tree != "dynamic" else latency
        self.static = self.static_buffers = None
        self.depth = 0
        if self.heads is not None:
            self.depth = heads.num_heads if self.cfg.depth is None else min(self.cfg.depth, heads.num_heads)
            if self.cfg.tree == "static":
                choices = self.cfg.medusa_choices or [c for c in DEFAULT_CHOICES if len(c) <= self.depth]
                self.static = static_tree(choices)
                if self.static.max_depth > self.depth:
                    raise ValueError(
                        f"the static tree is {self.static.max_depth} deep but {self.depth} heads are used"
                    )
                self.static_buffers = tree_buffers(self.static)
        self.top_m = self.cfg.top_m if self.static is None else int(self.static.rank.max()) + 1
        self.stats = (
            None  # the context nodes' acceptance rates (infer.context.ContextStats), shared by the rows
        )
        if self.use_context:
            from .context import ContextStats

            self.stats = self.cfg.context_stats if self.cfg.context_stats is not None else ContextStats()
        self.rows: list[Row] = []
        self.cache = DynamicCache()
        self.valid = torch.zeros(0, 0, dtype=torch.bool, device=self.device)  # [B, S]: real slots of each row

    @property
    def active(self) -> list[Row]:
        return list(self.rows)

    # ------------------------------------------------------------------------------------------- rows in/out
    @torch.no_grad()
    def add(
        self,
        input_ids: torch.Tensor,
        cfg: DecodeConfig | None = None,
        on_tokens=None,
        generator=None,
        tag=None,
    ):
        """Prefill one prompt ``input_ids`` [1, L] alone and append it to the batch -> its Row (already holding
        the prefill's token; ``row.done`` when that token ended it)."""
        from transformers import DynamicCache

        if input_ids.dim() != 2 or input_ids.shape[0] != 1 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids must be [1, L] with L >= 1, got {tuple(input_ids.shape)}")
        cfg = cfg or self.cfg
        check_window(self.model, input_ids.shape[1] + cfg.max_new_tokens + tree_room(self.cfg, self.heads))
        row = Row(cfg=cfg, result=DecodeResult(tokens=[]), on_tokens=on_tokens, generator=generator, tag=tag)
        t0 = _now(self.device)
        L = input_ids.shape[1]
        cache = DynamicCache()
        hidden = forward_hidden(self.decoder, input_ids, cache, torch.arange(L, device=self.device)[None])[
            0, -1
        ]
        row.root = _pick(project(self.model, self.lm_head, hidden), cfg, generator)
        row.hidden, row.pos = hidden, L
        row.result.time_prefill = _now(self.device) - t0
        row.result.time_total = row.result.time_prefill
        row.done = _emit(row.result, [row.root], self.eos, cfg, on_tokens, step=False)
        if self.use_context:
            from .context import ContextIndex

            row.index = ContextIndex(input_ids[0].tolist() + [row.root])
        if row.done:
            return row
        valid = torch.ones(1, L, dtype=torch.bool, device=self.device)
        if not self.rows:
            self.cache, self.valid = cache, valid
        else:
            self.valid = merge_rows(self.cache, self.valid, cache, valid)
        self.rows.append(row)
        return row

    def _tree_inputs(self, trees, tops, S: int):
        """Each row's tree, padded to the biggest -> ids [B, T], position ids [B, T], visible [B, T, S + T]
        (a row sees its own valid slots and tree ancestors; padding nodes see only themselves), and per row its
        tree tokens [T_b] and tree mask [T_b, T_b]."""
        buffers = [self.static_buffers if t is self.static else tree_buffers(t) for t in trees]
        tokens = [tree_tokens(t, root_t, top) for t, (root_t, top, _) in zip(trees, tops)]
        B, T = len(trees), max(t.numel() for t in tokens)
        ids = torch.zeros(B, T, dtype=torch.long, device=self.device)
        pos = torch.zeros(B, T, dtype=torch.long, device=self.device)
        visible = torch.zeros(B, T, S + T, dtype=torch.bool, device=self.device)
        visible[:, :, S:] = torch.eye(T, dtype=torch.bool, device=self.device)
        for b, r in enumerate(self.rows):
            n = tokens[b].numel()
            ids[b, :n], ids[b, n:] = tokens[b], r.root
            pos[b, :n], pos[b, n:] = buffers[b].position_offsets + r.pos, r.pos
            visible[b, :n, :S] = self.valid[b]
            visible[b, :n, S : S + n] = buffers[b].tree_mask
        return ids, pos, visible, tokens, [b.tree_mask for b in buffers]

    def cancel(self, row: Row) -> None:
        """Stop a row (a client went away): it leaves the batch at the next step boundary."""
        row.cancelled = True

    def _drop(self, keep: list[int]) -> None:
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            from transformers import DynamicCache

            self.cache, self.valid = DynamicCache(), self.valid[:0]
            return
        idx = torch.tensor(keep, device=self.device)
        select_rows(self.cache, idx)
        self.valid = self.valid.index_select(0, idx)

    # ------------------------------------------------------------------------------------------------ a step
    @torch.no_grad()
    def step(self) -> list[Row]:
        """One decoding step for every row -> the rows that finished (or were cancelled) and left the batch."""
        gone = [r for r in self.rows if r.cancelled]
        self._drop([i for i, r in enumerate(self.rows) if not r.cancelled])
        if not self.rows:
            return gone
        t0 = _now(self.device)
        B, S = len(self.rows), self.valid.shape[1]
        latency = self.latency.for_batch(B) if self.latency is not None else None
        heads_now = self.heads is not None and (latency is None or latency.may_draft(B, self.depth))
        roots = [torch.tensor(r.root, device=self.device) for r in self.rows]
        chains, matches = [[] for _ in self.rows], [0] * B  # each row's continuation from its own context
        if self.use_context:
            k = min(self.cfg.node_budget, MAX_TOKENS)
            chains = [r.index.propose(k) for r in self.rows]
            matches = [r.index.match for r in self.rows]
        trees, tops, n = [None] * B, [(root, None, None) for root in roots], None
        if heads_now:  # the heads run once for the whole batch (sequential heads: once per depth)
            hiddens = torch.stack([r.hidden for r in self.rows])  # [B, H]
            drafted, _ = draft_trees(
                self.heads, self.lm_head, self.embed, hiddens, [r.root for r in self.rows], self.cfg,
                self.depth, self.top_m, self.static,
            )  # fmt: skip
            trees = [t for t, _, _ in drafted]
            tops = [(root, tok, lp) for root, (_, tok, lp) in zip(roots, drafted)]
            if latency is not None:  # one budget for the batch: each row's n best paths, summed tokens/s
                n = latency.best_budget([t.score[1:].sort(descending=True).values for t in trees])
        if not self.plain and (
            any(chains) or not heads_now
        ):  # rows without a tree: their root (+ their chain)
            for b, chain in enumerate(chains):
                if chain or trees[b] is None:
                    drafted = (
                        roots[b][None] if trees[b] is None else tree_tokens(trees[b], roots[b], tops[b][1])
                    )
                    trees[b] = union_tree(trees[b], drafted, chain, matches[b], self.stats)
                    tops[b] = (roots[b], None, None)
            room = tree_room(self.cfg, self.heads)  # a union over the budget: its best nodes
            trees = [top_nodes(t, room - 1) if t.size > room else t for t in trees]
            if latency is not None and any(
                chains
            ):  # the drafting is spent: cut by what the nodes yield per time
                n = latency.chain_budget([t.score[1:].sort(descending=True).values for t in trees])
        if n is not None:
            trees = [top_nodes(t, n) for t in trees]
        t1 = _now(self.device)
        drafting = not self.plain and any(t.size > 1 for t in trees)
        if drafting:
            ids, pos, visible, tokens, masks = self._tree_inputs(trees, tops, S)
        else:  # plain step: every row verifies its root alone
            ids = torch.tensor([[r.root] for r in self.rows], device=self.device)  # [B, 1]
            pos = torch.tensor([[r.pos] for r in self.rows], device=self.device)
            visible = F.pad(self.valid, (0, 1), value=True)[:, None]  # [B, 1, S + 1]
        T = ids.shape[1]
        t2 = _now(self.device)
        hiddens = forward_hidden(
            self.decoder, ids, self.cache, pos, additive_mask(visible, self.dtype)
        )  # [B, T, H]
        logits = project(self.model, self.lm_head, hiddens)  # [B, T, V]
        finished = []
        if drafting:
            paths = []
            for b, r in enumerate(self.rows):
                tree, n = trees[b], tokens[b].numel()
                if r.cfg.acceptance == "sample":
                    path, root = accept_sample(tree, tokens[b], logits[b, :n], r.cfg, r.generator)
                else:
                    path, root = accept_deterministic(
                        tree, masks[b], tokens[b], logits[b, :n], r.cfg, r.generator
                    )
                r.result.predicted.append(expected_tokens(tree, masks[b], tops[b][2]))
                r.result.tree_sizes.append(n)
                paths.append(path)
                r.hidden, r.root, r.pos = hiddens[b, path[-1]], root, r.pos + path.numel()
                new = tokens[b][path[1:]].tolist() + [root]
                observe_tree(tree, path, matches[b], self.stats, r.result.sources)
                if r.index is not None:
                    r.index.extend(new)
                if _emit(r.result, new, self.eos, r.cfg, r.on_tokens):
                    finished.append(r)
            self.valid = compact_rows(self.cache, self.valid, S, paths)
        else:  # nothing to move in the cache: every row keeps its one new slot
            greedy = logits[:, 0].argmax(-1).tolist()  # one host sync for the batch
            for b, r in enumerate(self.rows):
                root = greedy[b] if is_greedy(r.cfg) else _pick(logits[b, 0], r.cfg, r.generator)
                if not self.plain:
                    r.result.predicted.append(1.0)
                r.result.tree_sizes.append(1)
                r.hidden, r.root, r.pos = hiddens[b, 0], root, r.pos + 1
                if r.index is not None:
                    r.index.extend([root])
                if _emit(r.result, [root], self.eos, r.cfg, r.on_tokens):
                    finished.append(r)
            self.valid = F.pad(self.valid, (0, 1), value=True)
        for r in finished:
            r.done = True
        t3 = _now(self.device)
        rows = list(self.rows)
        self._drop([i for i, r in enumerate(self.rows) if not r.done])
        # each row's real cache slots are its prompt and accepted tokens (its position); packing squeezes the holes
        # out, which shortens the cache only to the longest row: pack when that saves a quarter of it (>= 64 slots)
        S = self.valid.shape[1]
        if self.rows and S - max(r.pos for r in self.rows) > max(64, S // 4):
            self.valid = pack_rows(self.cache, self.valid)
        t4 = _now(self.device)
        if latency is not None:  # fixed: the bookkeeping every step pays (masks, positions, cache moves)
            latency.observe(T, t3 - t2, (t1 - t0) / B if heads_now else None, (t2 - t1) + (t4 - t3))
        for r in rows:  # per-row time: the batch's step time is every row's wall clock
            r.result.time_heads += t1 - t0
            r.result.time_tree += t2 - t1
            r.result.time_verify += t3 - t2
            r.result.time_total += t4 - t0
        return gone + finished


def generate_batch(
    model,
    prompts: list[torch.Tensor],
    heads=None,
    cfg: DecodeConfig | None = None,
    eos: set[int] | None = None,
    latency=None,
    configs: list[DecodeConfig] | None = None,
    generators: list[torch.Generator] | None = None,
) -> list[DecodeResult]:
    """Decode ``prompts`` (each [1, L_b]) together -> one DecodeResult per prompt, in order. ``configs``: per-row
    settings (max_new_tokens, acceptance, temperature); ``generators``: per-row random generators (sampling)."""
    dec = BatchDecoder(model, heads, cfg, eos, latency)
    rows = []
    for b, ids in enumerate(prompts):
        row_cfg = configs[b] if configs is not None else None
        rows.append(dec.add(ids, row_cfg, generator=generators[b] if generators is not None else None))
    while dec.active:
        dec.step()
    return [r.result for r in rows]


def row_config(cfg: DecodeConfig, **changes) -> DecodeConfig:
    """A row's settings: the batch's drafting settings with its own max_new_tokens / acceptance / temperature."""
    return dataclasses.replace(cfg, **changes)
