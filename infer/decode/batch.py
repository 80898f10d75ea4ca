"""Batched Medusa decoding: B prompts of different lengths decode together, each row with its own tree (dynamic or
static), its own accepted length per step, its own position ids and its own stop; finished rows leave the batch
and new rows join it at step boundaries (the server's continuous batching).

The batch's engine (:mod:`infer.engine.batch`: eager, or compiled fixed-shape steps) owns the KV cache. A new row
is prefilled (prompts that arrive together: in one packed forward, on the compiled engine) and joins as the last
row. Each step every row verifies its tree in one forward of [B, T] tokens (T = the biggest tree, smaller trees
padded with nodes that see only themselves), each row at its own position ids, and keeps its accepted path.
Drafting and acceptance are batch-1's own functions (:mod:`infer.decode.single`, :mod:`infer.draft.drafters`), so
greedy output of every row equals its batch-1 output (fp32).

    decoder = BatchDecoder(model, heads, cfg, eos)
    rows = decoder.add_many(prompts)               # ids [1, L_b] each (or decoder.add(ids) one by one)
    while decoder.active:
        decoder.step()                             # rows[b].result grows; finished rows leave
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..draft.context import observe_tree
from ..draft.drafters import Drafter, RowState
from ..engine.batch import EagerBatchEngine
from ..model.backbone import check_window, stop_ids
from .single import (
    DecodeConfig,
    DecodeResult,
    Sampling,
    accept_deterministic,
    accept_sample,
    check_static_fits,
    emit_tokens,
    engine_room,
    expected_tokens,
    is_greedy,
    now,
    pick_token,
)

PREFILL_TOKENS = 2048  # prompts prefilled together: at most this many tokens in one forward


@dataclass
class Row:
    """One sequence of the batch."""

    sampling: Sampling  # its max_new_tokens / acceptance / temperature (drafting settings: the batch's)
    result: DecodeResult
    on_tokens: Callable[[list[int]], None] | None = None  # called with each step's new tokens (streaming)
    generator: torch.Generator | None = None
    tag: object = None  # the caller's id for this row
    root: int = 0  # the last emitted token: the next step's root
    hidden: torch.Tensor | None = field(default=None, repr=False)  # [H] hidden state the heads read
    done: bool = False
    cancelled: bool = False
    index: object = None  # the context drafter's index of this row's tokens (drafter "context")


class BatchDecoder:
    """Continuous batched decoding over one shared cache. ``cfg.tree == "none"`` or no heads: plain batched
    decoding with the same machinery (the fair baseline). ``latency``: an :class:`infer.draft.budget.BatchLatency`, the
    node budget chosen each step for the whole batch from the profile of its batch size. ``engine``: a batched
    engine (:mod:`infer.engine.batch`; default: a new eager one)."""

    def __init__(
        self,
        model,
        heads=None,
        cfg: DecodeConfig | None = None,
        eos: set[int] | None = None,
        latency=None,
        engine=None,
    ):
        self.model, self.cfg = model, cfg or DecodeConfig()
        self.engine = engine if engine is not None else EagerBatchEngine(model)
        if self.engine.lengths:
            raise ValueError(
                "the batched engine already holds rows: give each decoder its own (engine.fresh())"
            )
        self.drafter = Drafter(model, heads, self.cfg.drafting, engine_room(self.cfg, heads, self.engine),
                               batched=True)  # fmt: skip
        check_static_fits(self.drafter, self.engine)
        self.plain, self.heads = self.drafter.plain, self.drafter.heads
        self.eos = stop_ids(model) if eos is None else eos
        self.device = next(model.parameters()).device
        self.latency = None if self.plain or self.cfg.tree != "dynamic" else latency
        self.rows: list[Row] = []
        self.added: list[Row] = []  # what the last add_many made (see there)

    @property
    def active(self) -> list[Row]:
        return list(self.rows)

    # ------------------------------------------------------------------------------------------- rows in/out
    @torch.no_grad()
    def add(
        self,
        input_ids: torch.Tensor,
        sampling: Sampling | DecodeConfig | None = None,
        on_tokens=None,
        generator=None,
        tag=None,
    ) -> Row:
        """Prefill one prompt ``input_ids`` [1, L] and append it to the batch -> its Row (already holding the
        prefill's token; ``row.done`` when that token ended it). ``sampling``: the row's own settings (a
        DecodeConfig's sampling part is taken; default: the decoder's)."""
        return self.add_many([input_ids], [sampling], [on_tokens], [generator], [tag])[0]

    @torch.no_grad()
    def add_many(
        self, prompts: list[torch.Tensor], samplings=None, on_tokens=None, generators=None, tags=None
    ):
        """:meth:`add` for several prompts, prefilled together in groups of at most PREFILL_TOKENS tokens
        (one forward reads each weight once for the group) -> their Rows. Per-prompt lists (None: defaults for all);
        every prompt is checked before any is prefilled."""
        n = len(prompts)
        self.added = []  # rows made so far, kept if a later group raises (the server reads it)
        samplings, on_tokens, generators, tags = (
            [None] * n if x is None else list(x) for x in (samplings, on_tokens, generators, tags)
        )
        capacities = []
        for i, input_ids in enumerate(prompts):
            if input_ids.dim() != 2 or input_ids.shape[0] != 1 or input_ids.shape[1] == 0:
                raise ValueError(f"input_ids must be [1, L] with L >= 1, got {tuple(input_ids.shape)}")
            if samplings[i] is None or isinstance(samplings[i], DecodeConfig):
                samplings[i] = (samplings[i] or self.cfg).sampling
            capacities.append(input_ids.shape[1] + samplings[i].max_new_tokens + self.drafter.room)
            check_window(self.model, capacities[-1])
        rows, group = self.added, []
        for i in range(n + 1):  # groups of consecutive prompts of at most PREFILL_TOKENS tokens in all
            size = sum(prompts[j].shape[1] for j in group + [min(i, n - 1)])
            if group and (i == n or size > PREFILL_TOKENS):
                rows.extend(self._prefill_group(
                    [prompts[j] for j in group], [capacities[j] for j in group],
                    *([x[j] for j in group] for x in (samplings, on_tokens, generators, tags)),
                ))  # fmt: skip
                group = []
            group.append(i)
        return rows

    def _prefill_group(self, prompts, capacities, samplings, on_tokens, generators, tags) -> list[Row]:
        t0 = now(self.device)
        hidden, logits = self.engine.prefill(prompts, capacities)  # [n, H], [n, V]
        roots = [pick_token(logits[i], samplings[i], generators[i]) for i in range(len(prompts))]
        elapsed = now(self.device) - t0
        rows, keep = [], []  # nothing is emitted before every step that can raise has run
        for i, input_ids in enumerate(prompts):
            row = Row(samplings[i], DecodeResult(tokens=[]), on_tokens=on_tokens[i], generator=generators[i],
                      tag=tags[i])  # fmt: skip
            row.root, row.hidden = roots[i], hidden[i]
            row.result.time_prefill = row.result.time_total = elapsed
            row.done = emit_tokens(row.result, [row.root], self.eos, row.sampling, row.on_tokens, step=False)
            if self.drafter.use_context:
                from ..draft.context import ContextIndex

                row.index = ContextIndex(input_ids[0].tolist() + [row.root])
            rows.append(row)
            if not row.done:
                keep.append(i)
        self.engine.join(keep)
        self.rows += [rows[i] for i in keep]
        return rows

    def _tree_inputs(self, drafts):
        """Each row's draft, padded to the biggest tree -> ids [B, T], position offsets [B, T], tree_mask
        [B, T, T] (padding nodes: copies of the root at offset 0 that see only themselves)."""
        B, T = len(drafts), max(d.tokens.numel() for d in drafts)
        ids = torch.zeros(B, T, dtype=torch.long, device=self.device)
        offsets = torch.zeros(B, T, dtype=torch.long, device=self.device)
        tree_mask = torch.eye(T, dtype=torch.bool, device=self.device).repeat(B, 1, 1)
        for b, (r, d) in enumerate(zip(self.rows, drafts)):
            n = d.tokens.numel()
            ids[b, :n], ids[b, n:] = d.tokens, r.root
            offsets[b, :n] = d.buffers.position_offsets
            tree_mask[b, :n, :n] = d.buffers.tree_mask
        return ids, offsets, tree_mask

    def cancel(self, row: Row) -> None:
        """Stop a row (a client went away): it leaves the batch at the next step boundary."""
        row.cancelled = True

    def _drop(self, keep: list[int]) -> None:
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in keep]
        self.engine.drop(keep)

    # ------------------------------------------------------------------------------------------------ a step
    @torch.no_grad()
    def step(self) -> list[Row]:
        """One decoding step for every row -> the rows that finished (or were cancelled) and left the batch."""
        gone = [r for r in self.rows if r.cancelled]
        self._drop([i for i, r in enumerate(self.rows) if not r.cancelled])
        if not self.rows:
            return gone
        t0 = now(self.device)
        B = len(self.rows)
        latency = self.latency.for_batch(B) if self.latency is not None else None
        states = [RowState(r.hidden, r.root, r.index) for r in self.rows]
        drafts, heads_now, heads_s = self.drafter.propose(states, latency)  # None: every row a plain step
        t1 = now(self.device)
        if drafts is not None:
            ids, offsets, tree_mask = self._tree_inputs(drafts)
        else:  # plain step: every row verifies its root alone
            ids = torch.tensor([[r.root] for r in self.rows], device=self.device)  # [B, 1]
            offsets = tree_mask = None
        T = ids.shape[1]
        t2 = now(self.device)
        hiddens, logits = self.engine.step(ids, offsets, tree_mask)  # [B, T, H], [B, T, V]
        finished = []
        if drafts is not None:
            paths = []
            for b, (r, d) in enumerate(zip(self.rows, drafts)):
                n = d.tokens.numel()
                if r.sampling.acceptance == "sample":
                    path, root = accept_sample(d.tree, d.tokens, logits[b, :n], r.sampling, r.generator)
                else:
                    path, root = accept_deterministic(
                        d.tree, d.buffers.tree_mask, d.tokens, logits[b, :n], r.sampling, r.generator
                    )
                r.result.predicted.append(expected_tokens(d.tree, d.buffers.tree_mask, d.logp))
                r.result.tree_sizes.append(n)
                paths.append(path)
                r.hidden, r.root = hiddens[b, path[-1]], root
                new = d.tokens[path[1:]].tolist() + [root]
                observe_tree(d.tree, path, d.match, self.drafter.stats, r.result.sources)
                if r.index is not None:
                    r.index.extend(new)
                if emit_tokens(r.result, new, self.eos, r.sampling, r.on_tokens):
                    finished.append(r)
            self.engine.accept(paths)
        else:  # nothing to move in the cache: every row keeps its one new slot
            greedy = logits[:, 0].argmax(-1).tolist()  # one host sync for the batch
            for b, r in enumerate(self.rows):
                root = (
                    greedy[b] if is_greedy(r.sampling) else pick_token(logits[b, 0], r.sampling, r.generator)
                )
                if not self.plain:
                    r.result.predicted.append(1.0)
                r.result.tree_sizes.append(1)
                r.hidden, r.root = hiddens[b, 0], root
                if r.index is not None:
                    r.index.extend([root])
                if emit_tokens(r.result, [root], self.eos, r.sampling, r.on_tokens):
                    finished.append(r)
            self.engine.accept(None)
        for r in finished:
            r.done = True
        t3 = now(self.device)
        rows = list(self.rows)
        self._drop([i for i, r in enumerate(self.rows) if not r.done])
        t4 = now(self.device)
        if latency is not None:  # fixed: the bookkeeping every step pays (masks, positions, cache moves)
            latency.observe(T, t3 - t2, (t1 - t0) / B if heads_now else None, (t2 - t1) + (t4 - t3))
        for r in rows:  # per-row time: the batch's step time is every row's wall clock
            r.result.time_heads += heads_s
            r.result.time_tree += t2 - t0 - heads_s
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
    configs: list[Sampling | DecodeConfig] | None = None,
    generators: list[torch.Generator] | None = None,
    engine=None,
) -> list[DecodeResult]:
    """Decode ``prompts`` (each [1, L_b]) together -> one DecodeResult per prompt, in order. ``configs``: per-row
    settings (max_new_tokens, acceptance, temperature); ``generators``: per-row random generators (sampling);
    ``engine``: a batched engine (default: eager)."""
    dec = BatchDecoder(model, heads, cfg, eos, latency, engine)
    rows = dec.add_many(prompts, configs, generators=generators)
    while dec.active:
        dec.step()
    return [r.result for r in rows]


def row_config(cfg: DecodeConfig, **changes) -> Sampling:
    """A row's settings: the batch's sampling settings with its own max_new_tokens / acceptance / temperature."""
    return dataclasses.replace(cfg.sampling, **changes)
