"""Engines for batched decoding: who owns the batch's KV cache and runs its steps. The batched decoder
(:mod:`infer.decode.batch`) asks for five things and never touches a cache itself:

    hidden, logits = engine.prefill(prompts, capacities)  # n prompts [1, L_i] -> [n, H], [n, V]; not in the batch
    engine.join(keep)                                # ... now the pending ones ``keep`` are: the last rows
    hidden, logits = engine.step(ids, offsets, tree_mask)  # [B, T] tokens at each row's length + offsets
    engine.accept(paths)                             # each row keeps its accepted path (None: a plain step)
    engine.drop(keep)                                # rows that finished leave

- :class:`EagerBatchEngine`: transformers' ``DynamicCache`` shared by the rows, any shape. Rows keep a ``valid``
  [B, S] mask of their real slots; an accepted path is moved to the front of the step's block and the rest become
  holes that the mask hides, squeezed out now and then (:func:`infer.model.backbone.pack_rows`).
- :class:`CompiledBatchEngine`: the compiled engine's steps for many rows. Each row owns a row of a preallocated
  cache [rows, kv_heads, S, D] and fills it from slot 0 with no holes (an accepted path is moved in place), so its
  mask is just "my slots before my length, and my tree ancestors", built inside the compiled step. One row runs
  the one-row packages; plain steps of 2 and 4 rows (and 8 where our bf16 kernel runs it,
  :mod:`infer.engine.kernels`) have fixed-shape packages (a batch in between padded up, more rows run as steps of
  the largest); trees of several rows run a package whose batch size is dynamic (our bf16 kernels run every
  step where they apply). Prompts that arrive together are prefilled in one packed forward. Rows leave by moving the
  later rows down; the cache grows by reallocation.

Greedy rows equal their batch-1 output on either engine (fp32, tested), and bit for bit in bf16 where our kernels
run the compiled steps (tests/infer/engine/test_kernels.py).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from ..model.backbone import (
    additive_mask,
    compact_rows,
    decoder_and_head,
    forward_hidden,
    merge_rows,
    pack_rows,
    project,
    select_rows,
)
from .single import (
    CAPACITY_STEP,
    CompiledEngine,
    EngineError,
    _restore_attention,
    failure_line,
    load_steps,
    prefill_into,
    step_package,
)

FIXED_SHAPES = ((2, 1), (4, 1))  # (rows, tokens a row) with steps of their own (README: why)
KERNEL_SHAPES = ((8, 1),)  # more where the bf16 kernel runs them (infer/engine/kernels.py): 8 rows cost ~4's


def default_shapes(single) -> tuple:
    """The fixed shapes of ``single``'s batched steps here: :data:`FIXED_SHAPES`, and :data:`KERNEL_SHAPES` where
    the model uses the bf16 kernel (without it one 8-row step is slower than two of 4)."""
    return FIXED_SHAPES + (KERNEL_SHAPES if single.kernel else ())


class EagerBatchEngine:
    """One DynamicCache for the batch, holes hidden by each row's ``valid`` mask: the reference."""

    name = "eager"
    buckets = None  # any size

    def __init__(self, model):
        from transformers import DynamicCache

        self.model = model
        self.decoder, self.lm_head = decoder_and_head(model)
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.cache = DynamicCache()
        self.valid = torch.zeros(0, 0, dtype=torch.bool, device=self.device)  # [B, S]: real slots of each row
        self.lengths: list[int] = []  # each row's tokens (= the position id of its next token)
        self._pending = None

    def fresh(self) -> EagerBatchEngine:
        """An empty engine on the same model (to measure latency without touching this one's rows)."""
        return EagerBatchEngine(self.model)

    def prefill(self, prompts: list[torch.Tensor], capacities: list[int] | None = None):
        """Each prompt [1, L_i], alone -> (last hidden [n, H], logits [n, V]); :meth:`join` adds them to the batch
        (``capacities``: unused, the cache grows as it goes)."""
        from transformers import DynamicCache

        self._pending, hidden = [], []
        for input_ids in prompts:
            L = input_ids.shape[1]
            cache = DynamicCache()
            pos = torch.arange(L, device=self.device)[None]
            hidden.append(forward_hidden(self.decoder, input_ids, cache, pos)[0, -1])
            self._pending.append((cache, torch.ones(1, L, dtype=torch.bool, device=self.device), L))
        hidden = torch.stack(hidden)
        return hidden, project(self.model, self.lm_head, hidden)

    def join(self, keep: list[int] | None = None) -> None:
        """The pending prompts ``keep`` (indices, ascending; None: all) become the batch's last rows."""
        pending, self._pending = self._pending, []
        for i in range(len(pending)) if keep is None else keep:
            cache, valid, L = pending[i]
            if not self.lengths:
                self.cache, self.valid = cache, valid
            else:
                self.valid = merge_rows(self.cache, self.valid, cache, valid)
            self.lengths.append(L)

    def step(
        self, ids: torch.Tensor, offsets: torch.Tensor | None = None, tree_mask: torch.Tensor | None = None
    ):
        """ids [B, T] at positions lengths[b] + offsets [B, T] (None: a plain step, T = 1), each seeing its row's
        slots and its tree ancestors (tree_mask [B, T, T] bool; padding nodes see only themselves)
        -> (hidden [B, T, H], logits [B, T, V])."""
        B, T = ids.shape
        S = self.valid.shape[1]
        pos = torch.tensor(self.lengths, device=self.device)[:, None]
        if tree_mask is None:
            visible = F.pad(self.valid, (0, 1), value=True)[:, None]  # [B, 1, S + 1]
        else:
            pos = pos + offsets
            visible = torch.cat([self.valid[:, None].expand(B, T, S), tree_mask], 2)  # [B, T, S + T]
        hidden = forward_hidden(self.decoder, ids, self.cache, pos, additive_mask(visible, self.dtype))
        self.pending = T
        return hidden, project(self.model, self.lm_head, hidden)

    def accept(self, paths: list[torch.Tensor] | None = None) -> None:
        """Row b keeps the last step's positions ``paths[b]`` [A_b] (ascending; None: a plain step, all kept)."""
        if paths is None:
            self.valid = F.pad(self.valid, (0, self.pending), value=True)
            self.lengths = [n + self.pending for n in self.lengths]
            return
        S = self.valid.shape[1]
        self.valid = compact_rows(self.cache, self.valid, S, paths)
        self.lengths = [n + p.numel() for n, p in zip(self.lengths, paths)]
        # packing squeezes the holes out, which shortens the cache only to the longest row: pack when that saves
        # a quarter of it (>= 64 slots)
        S = self.valid.shape[1]
        if S - max(self.lengths) > max(64, S // 4):
            self.valid = pack_rows(self.cache, self.valid)

    def drop(self, keep: list[int]) -> None:
        """Keep the rows ``keep`` (ascending), in that order."""
        if len(keep) == len(self.lengths):
            return
        self.lengths = [self.lengths[i] for i in keep]
        if not keep:
            from transformers import DynamicCache

            self.cache, self.valid = DynamicCache(), self.valid[:0]
            return
        idx = torch.tensor(keep, device=self.device)
        select_rows(self.cache, idx)
        self.valid = self.valid.index_select(0, idx)


class CompiledBatchEngine:
    """The compiled engine's steps for a batch: a preallocated cache with one row per sequence, no holes.
    ``single``: the one-row :class:`infer.engine.single.CompiledEngine` whose model, packages and folder it shares
    (one row runs its packages); ``fixed_shapes``: (rows, tokens a row) with steps of their own (default:
    :func:`default_shapes`; fixed shape, compiled for it; rows a power of two, a batch in between padded to
    it); any other shape runs the steps whose batch size is dynamic."""

    name = "compiled"

    def __init__(self, single: CompiledEngine, steps: dict | None = None, fixed_shapes=None):
        self.single = single
        for name in ("model", "decoder", "lm_head", "device", "dtype", "buckets", "backend", "autotune",
                     "verbose", "folder", "module", "layers", "kv_heads", "head_dim", "bucket", "kernel"):  # fmt: skip
            setattr(self, name, getattr(single, name))
        shapes = default_shapes(single) if fixed_shapes is None else fixed_shapes
        self.fixed_shapes = tuple(sorted((int(r), int(t)) for r, t in shapes))
        if any(r < 2 or r & (r - 1) or t > self.buckets[-1] for r, t in self.fixed_shapes):
            raise EngineError(  # padding rows live in the power-of-two cache
                f"fixed shapes need rows a power of two >= 2 and tokens <= {self.buckets[-1]}, got {shapes}"
            )
        self.steps = steps  # (rows: an int, or None for any, tokens) -> the compiled step
        if steps is None:
            self.steps = load_steps(self, step_shapes(self.buckets, self.fixed_shapes))
        self.kv: list[torch.Tensor] = []  # every layer's keys, then values [rows, kv_heads, S, D]
        self.lengths: list[int] = []  # each row's tokens = its cache slots in use = its next position id
        # the slots each row may come to hold (prompt + new tokens + tree room)
        self.capacities: list[int] = []
        self._pending: list[tuple[int, int]] = []  # (length, capacity) of each prefilled row not joined yet
        # plain steps of more rows than this run as steps of this many rows (see step)
        self._chunk = max((r for r, t in self.fixed_shapes if t == 1), default=None)
        sizes = set(self.buckets) | {t for _, t in self.fixed_shapes}
        self._eye = {b: torch.eye(b, dtype=torch.bool, device=self.device) for b in sizes}

    def fresh(self) -> CompiledBatchEngine:
        """An empty engine sharing this one's compiled steps (to measure latency without touching its rows)."""
        return CompiledBatchEngine(self.single, self.steps, self.fixed_shapes)

    # ---------------------------------------------------------------------------------------- the cache
    def _ensure(self, rows: int, slots: int) -> None:
        """At least ``rows`` cache rows of ``slots`` + the largest step; grown by reallocation (rows: powers of
        two; slots: multiples of CAPACITY_STEP), what is there copied over."""
        B0, S0 = (self.kv[0].shape[0], self.kv[0].shape[2]) if self.kv else (0, 0)
        need = -(-(slots + self.buckets[-1]) // CAPACITY_STEP) * CAPACITY_STEP
        if rows <= B0 and need <= S0:
            return
        B1, S1 = max(B0, 1 << max(0, rows - 1).bit_length()), max(S0, need)
        shape = (B1, self.kv_heads, S1, self.head_dim)
        new = [torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in range(2 * self.layers)]
        for old, t in zip(self.kv, new):
            t[:B0, :, :S0] = old
        self.kv = new

    @torch.no_grad()
    def prefill(self, prompts: list[torch.Tensor], capacities: list[int] | None = None):
        """As :meth:`EagerBatchEngine.prefill`, but the prompts run together (packed into one eager forward, each
        weight read once: :func:`infer.engine.single.prefill_into`) into the next free cache rows; ``capacities``:
        the tokens each row may hold (prompt + new tokens + tree room)."""
        lengths = [p.shape[1] for p in prompts]
        capacities = [max(c, n) for c, n in zip(capacities or lengths, lengths)]
        row, n = len(self.lengths), len(prompts)
        self._ensure(row + n, max(capacities))
        hidden = prefill_into(self, prompts, [t[row : row + n] for t in self.kv])  # [n, H]
        self._pending = list(zip(lengths, capacities))
        return hidden, project(self.model, self.lm_head, hidden)

    def join(self, keep: list[int] | None = None) -> None:
        """As :meth:`EagerBatchEngine.join`: a prefilled row that does not join leaves a gap the later ones close."""
        pending, self._pending, row = self._pending, [], len(self.lengths)
        for j, i in enumerate(range(len(pending)) if keep is None else keep):
            if i != j:
                for t in self.kv:
                    t[row + j] = t[row + i]
            self.lengths.append(pending[i][0])
            self.capacities.append(pending[i][1])

    @torch.no_grad()
    def step(
        self, ids: torch.Tensor, offsets: torch.Tensor | None = None, tree_mask: torch.Tensor | None = None
    ):
        """As :meth:`EagerBatchEngine.step`, padded to a compiled bucket (padding nodes: copies of the root that
        see only themselves). Plain steps of more rows than the largest fixed batch size run as steps of that size,
        each on its slice of the cache rows: here, without our bf16 kernel, 2 x 4 rows took 27 ms where 8 rows in one
        step took 34 (with it, one 8-row step: 18 ms)."""
        B, T = ids.shape
        if T == 1:  # a tree of roots only is a plain step
            offsets = tree_mask = None
        Tb = self.bucket(T)
        self._ensure(B, max(self.lengths))
        chunk = self._chunk
        if tree_mask is None and T == Tb and chunk is not None and B > chunk:
            parts = [self._run(ids[i : i + chunk], None, None, i, Tb) for i in range(0, B, chunk)]
            hidden, logits = torch.cat([h for h, _ in parts]), torch.cat([g for _, g in parts])
        else:
            hidden, logits = self._run(ids, offsets, tree_mask, 0, Tb)
        self.pending = T
        return hidden[:, :T], logits[:, :T]

    def _run(self, ids, offsets, tree_mask, first: int, Tb: int):
        """One compiled call for the cache rows first .. first + B - 1 (ids [B, T]) -> (hidden, logits) [B, Tb, .].
        One row: the one-row steps; else the fixed shape with the fewest matmul rows that holds B rows of T tokens
        (padded with dummy rows in free cache rows: token 0 at slot 0, seeing only itself), else the dynamic-batch
        steps."""
        B, T = ids.shape
        fits = sorted((r * t, r, t) for r, t in self.fixed_shapes if B > 1 and r >= B and T <= t <= Tb)
        Bb, Tb = (fits[0][1], fits[0][2]) if fits else (1 if B == 1 else B, Tb)
        start = torch.tensor(self.lengths[first : first + B] + [0] * (Bb - B), device=self.device)  # [Bb]
        if tree_mask is None and T == Tb and Bb == B:
            vis = self._eye[Tb].expand(B, -1, -1)
            pos = start[:, None].expand(B, Tb)
        else:
            padded = torch.zeros(Bb, Tb, dtype=torch.long, device=self.device)
            padded[:B] = ids[:, :1]
            padded[:B, :T] = ids
            ids = padded
            vis = self._eye[Tb].repeat(Bb, 1, 1)
            off = torch.zeros(Bb, Tb, dtype=torch.long, device=self.device)
            if tree_mask is not None:
                vis[:B, :T, :T] = tree_mask
                off[:B, :T] = offsets
            pos = start[:, None] + off
        run = self.single.steps[Tb] if Bb == 1 else self.steps.get((Bb, Tb), self.steps.get((None, Tb)))
        kv = [t[first : first + Bb] for t in self.kv]  # rows of a contiguous tensor: contiguous
        hidden, logits = run(ids, pos.contiguous(), vis.contiguous(), start, *kv)
        return hidden[:B], logits[:B]

    def accept(self, paths: list[torch.Tensor] | None = None) -> None:
        """As :meth:`EagerBatchEngine.accept`: each row's accepted path moved in place to follow its cache."""
        if paths is None:
            self.lengths = [n + self.pending for n in self.lengths]
            return
        B, A = len(paths), max(p.numel() for p in paths)
        dst = torch.arange(A, device=self.device).expand(B, A).clone()
        src = dst.clone()  # beyond a row's path: a slot copied onto itself
        for b, p in enumerate(paths):
            src[b, : p.numel()] = p
        if bool((src != dst).any()):
            start = torch.tensor(self.lengths, device=self.device)[:, None]
            shape = (B, self.kv_heads, A, self.head_dim)
            src_idx = (start + src)[:, None, :, None].expand(shape)
            dst_idx = (start + dst)[:, None, :, None].expand(shape)
            for t in self.kv:
                rows = t[:B]
                rows.scatter_(2, dst_idx, rows.gather(2, src_idx))
        self.lengths = [n + p.numel() for n, p in zip(self.lengths, paths)]

    def drop(self, keep: list[int]) -> None:
        """Keep the rows ``keep`` (ascending), moved down to rows 0..len(keep)-1 in that order."""
        if keep != list(range(len(keep))):
            idx = torch.tensor(keep, device=self.device)
            for t in self.kv:
                t[: len(keep)] = t.index_select(0, idx)
        self.lengths = [self.lengths[i] for i in keep]
        self.capacities = [self.capacities[i] for i in keep]
        self._shrink()

    def _shrink(self) -> None:
        """Every step attends over all S slots (masked), so a long row that left must not leave its S behind: the
        cache is freed when the batch empties and cut to what the remaining rows may need when that halves it."""
        if not self.lengths:
            self.kv = []
            return
        need = -(-(max(self.capacities) + self.buckets[-1]) // CAPACITY_STEP) * CAPACITY_STEP
        if self.kv and need <= self.kv[0].shape[2] // 2:
            self.kv = [t[:, :, :need].clone() for t in self.kv]


def batch_packages(single) -> list[str]:
    """The package files the batched steps of ``single``'s model load (see :func:`infer.engine.single.load_step`)."""
    return [
        step_package(single.folder, r, b, single.kernel)
        for r, b in step_shapes(single.buckets, default_shapes(single))
    ]


def step_shapes(buckets, fixed_shapes) -> list[tuple[int | None, int]]:
    """(rows, tokens) of every batched step: the fixed shapes, and the dynamic-batch steps of every bucket but the
    1-token one when fixed 1-token shapes exist (plain steps of any batch then run as fixed steps of those sizes)."""
    plain_fixed = any(t == 1 for _, t in fixed_shapes)
    dynamic = [(None, b) for b in buckets if not (b == 1 and plain_fixed)]
    return dynamic + [(r, t) for r, t in fixed_shapes if t <= buckets[-1]]


@torch.no_grad()
def measure_batch_engine(engine, sizes, batch: int, prefix_len: int = 128, reps: int = 3) -> list[float]:
    """Median milliseconds of one step of ``batch`` rows, each a chain of T tokens for T in ``sizes``, after
    ``prefix_len``-token prompts, on an empty copy of ``engine`` (its rows untouched): interleaved repetitions
    after a warm-up round, as :func:`infer.engine.single.measure_engine` does for one row."""
    import statistics
    import time

    eng = engine.fresh()
    vocab = eng.lm_head.weight.shape[0]
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, vocab, (1, prefix_len), generator=g).to(eng.device) for _ in range(batch)]
    eng.prefill(prompts, [prefix_len + max(sizes)] * batch)
    eng.join()
    runs = [[] for _ in sizes]
    for rep in range(reps + 1):
        for i, T in enumerate(sizes):
            ids = torch.randint(0, vocab, (batch, T), generator=g).to(eng.device)
            offsets = torch.arange(T, device=eng.device).expand(batch, T)
            tree = torch.ones(T, T, dtype=torch.bool, device=eng.device).tril().expand(batch, T, T)
            t0 = time.perf_counter()
            _, logits = eng.step(ids, offsets if T > 1 else None, tree if T > 1 else None)
            logits.argmax(-1).tolist()
            if rep:
                runs[i].append(
                    1000 * (time.perf_counter() - t0)
                )  # nothing accepted: the rows stay as they were
    return [statistics.median(r) for r in runs]


def make_batch_engine(model, single=None, verbose: bool = True, build: bool = True):
    """-> (batched engine, one-line reason): compiled when ``single`` (the pipeline's engine) is compiled and its
    batched steps load here, or build when ``build`` (``--engine compiled``; ``auto`` never compiles by itself),
    else eager (a build failure falls back with the reason)."""
    if single is None or single.name != "compiled":
        return EagerBatchEngine(model), "eager (the one-row engine is eager)"
    if not build and single.backend == "aoti" and not all(os.path.exists(p) for p in batch_packages(single)):
        return EagerBatchEngine(
            model
        ), "eager: the batched steps were not built here yet (once: --engine compiled)"
    try:
        engine = CompiledBatchEngine(single)
    except Exception as e:  # noqa: BLE001 - any compiler failure means eager, said once
        _restore_attention(model)
        return EagerBatchEngine(model), f"eager: compiling the batched steps failed ({failure_line(e)})"
    return engine, f"compiled (batched steps of {'/'.join(map(str, engine.buckets))} tokens)"


__all__ = [
    "CompiledBatchEngine",
    "EagerBatchEngine",
    "EngineError",
    "make_batch_engine",
    "measure_batch_engine",
]
