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
from .context import observe_tree
from .decode import (
    DecodeConfig,
    DecodeResult,
    Sampling,
    accept_deterministic,
    accept_sample,
    emit_tokens,
    expected_tokens,
    is_greedy,
    now,
    pick_token,
    tree_room,
)
from .drafters import Drafter, RowState


@dataclass
class Row:
    """One sequence of the batch."""

    sampling: Sampling  # its max_new_tokens / acceptance / temperature (drafting settings: the batch's)
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
        self.drafter = Drafter(model, heads, self.cfg.drafting, tree_room(self.cfg, heads),
                               batched=True)  # fmt: skip
        self.plain, self.heads = self.drafter.plain, self.drafter.heads
        self.eos = stop_ids(model) if eos is None else eos
        self.decoder, self.lm_head = decoder_and_head(model)
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.latency = None if self.plain or self.cfg.tree != "dynamic" else latency
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
        sampling: Sampling | DecodeConfig | None = None,
        on_tokens=None,
        generator=None,
        tag=None,
    ):
        """Prefill one prompt ``input_ids`` [1, L] alone and append it to the batch -> its Row (already holding
        the prefill's token; ``row.done`` when that token ended it). ``sampling``: the row's own settings (a
        DecodeConfig's sampling part is taken; default: the decoder's)."""
        from transformers import DynamicCache

        if input_ids.dim() != 2 or input_ids.shape[0] != 1 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids must be [1, L] with L >= 1, got {tuple(input_ids.shape)}")
        if sampling is None or isinstance(sampling, DecodeConfig):
            sampling = (sampling or self.cfg).sampling
        check_window(self.model, input_ids.shape[1] + sampling.max_new_tokens + self.drafter.room)
        row = Row(sampling, DecodeResult(tokens=[]), on_tokens=on_tokens, generator=generator, tag=tag)
        t0 = now(self.device)
        L = input_ids.shape[1]
        cache = DynamicCache()
        hidden = forward_hidden(self.decoder, input_ids, cache, torch.arange(L, device=self.device)[None])[
            0, -1
        ]
        row.root = pick_token(project(self.model, self.lm_head, hidden), sampling, generator)
        row.hidden, row.pos = hidden, L
        row.result.time_prefill = now(self.device) - t0
        row.result.time_total = row.result.time_prefill
        row.done = emit_tokens(row.result, [row.root], self.eos, sampling, on_tokens, step=False)
        if self.drafter.use_context:
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

    def _tree_inputs(self, drafts, S: int):
        """Each row's draft, padded to the biggest tree -> ids [B, T], position ids [B, T], visible [B, T, S + T]
        (a row sees its own valid slots and tree ancestors; padding nodes see only themselves)."""
        B, T = len(drafts), max(d.tokens.numel() for d in drafts)
        ids = torch.zeros(B, T, dtype=torch.long, device=self.device)
        pos = torch.zeros(B, T, dtype=torch.long, device=self.device)
        visible = torch.zeros(B, T, S + T, dtype=torch.bool, device=self.device)
        visible[:, :, S:] = torch.eye(T, dtype=torch.bool, device=self.device)
        for b, (r, d) in enumerate(zip(self.rows, drafts)):
            n = d.tokens.numel()
            ids[b, :n], ids[b, n:] = d.tokens, r.root
            pos[b, :n], pos[b, n:] = d.buffers.position_offsets + r.pos, r.pos
            visible[b, :n, :S] = self.valid[b]
            visible[b, :n, S : S + n] = d.buffers.tree_mask
        return ids, pos, visible

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
        t0 = now(self.device)
        B, S = len(self.rows), self.valid.shape[1]
        latency = self.latency.for_batch(B) if self.latency is not None else None
        states = [RowState(r.hidden, r.root, r.index) for r in self.rows]
        drafts, heads_now, heads_s = self.drafter.propose(states, latency)  # None: every row a plain step
        t1 = now(self.device)
        if drafts is not None:
            ids, pos, visible = self._tree_inputs(drafts, S)
        else:  # plain step: every row verifies its root alone
            ids = torch.tensor([[r.root] for r in self.rows], device=self.device)  # [B, 1]
            pos = torch.tensor([[r.pos] for r in self.rows], device=self.device)
            visible = F.pad(self.valid, (0, 1), value=True)[:, None]  # [B, 1, S + 1]
        T = ids.shape[1]
        t2 = now(self.device)
        hiddens = forward_hidden(
            self.decoder, ids, self.cache, pos, additive_mask(visible, self.dtype)
        )  # [B, T, H]
        logits = project(self.model, self.lm_head, hiddens)  # [B, T, V]
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
                r.hidden, r.root, r.pos = hiddens[b, path[-1]], root, r.pos + path.numel()
                new = d.tokens[path[1:]].tolist() + [root]
                observe_tree(d.tree, path, d.match, self.drafter.stats, r.result.sources)
                if r.index is not None:
                    r.index.extend(new)
                if emit_tokens(r.result, new, self.eos, r.sampling, r.on_tokens):
                    finished.append(r)
            self.valid = compact_rows(self.cache, self.valid, S, paths)
        else:  # nothing to move in the cache: every row keeps its one new slot
            greedy = logits[:, 0].argmax(-1).tolist()  # one host sync for the batch
            for b, r in enumerate(self.rows):
                root = (
                    greedy[b] if is_greedy(r.sampling) else pick_token(logits[b, 0], r.sampling, r.generator)
                )
                if not self.plain:
                    r.result.predicted.append(1.0)
                r.result.tree_sizes.append(1)
                r.hidden, r.root, r.pos = hiddens[b, 0], root, r.pos + 1
                if r.index is not None:
                    r.index.extend([root])
                if emit_tokens(r.result, [root], self.eos, r.sampling, r.on_tokens):
                    finished.append(r)
            self.valid = F.pad(self.valid, (0, 1), value=True)
        for r in finished:
            r.done = True
        t3 = now(self.device)
        rows = list(self.rows)
        self._drop([i for i, r in enumerate(self.rows) if not r.done])
        # each row's real cache slots are its prompt and accepted tokens (its position); packing squeezes the holes
        # out, which shortens the cache only to the longest row: pack when that saves a quarter of it (>= 64 slots)
        S = self.valid.shape[1]
        if self.rows and S - max(r.pos for r in self.rows) > max(64, S // 4):
            self.valid = pack_rows(self.cache, self.valid)
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


def row_config(cfg: DecodeConfig, **changes) -> Sampling:
    """A row's settings: the batch's sampling settings with its own max_new_tokens / acceptance / temperature."""
    return dataclasses.replace(cfg.sampling, **changes)
