"""The engine: who owns the model's step. Decode loops ask it for three things — ``prefill`` a prompt, ``step`` a
block of T tokens (a tree, or one token) against the cache, ``accept`` the path that survived — and never touch the
cache themselves.

- :class:`EagerEngine`: transformers' ``DynamicCache`` and any shape, as the model runs out of the box.
- :class:`CompiledEngine`: a KV cache preallocated for the context it serves, and steps of a few fixed shapes
  (``buckets``: a tree of T nodes is padded to the next bucket with dummy nodes that see only themselves), each
  exported with ``torch.export`` and compiled ahead of time by AOTInductor, with the weights frozen and the matmul
  kernels picked by measurement (inductor's autotuning between its C++ GEMM template and oneDNN; on this CPU the
  template's 1-token bf16 GEMV is ~2x oneDNN's). The attention mask is built inside the compiled step from the cache
  length and the tree mask; the accepted path is moved in place inside the preallocated buffers. The packages are
  cached on disk under the toolkit's cache, so only the first start pays the compilation.

Both drive the unmodified ``AutoModelForCausalLM`` (4-D masks, explicit position ids): the model stays the source of
truth for weights and architecture. ``make_engine("auto")`` picks compiled only where a build here measured it
faster (:func:`build_compiled`), else eager, and says why.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os

import torch
from torch import nn

from ..model.backbone import (
    compact_kv,
    decoder_and_head,
    forward_hidden,
    project,
    tree_attention_mask,
    truncate_cache,
)
from . import kernels

ENGINES = ("auto", "compiled", "eager")
DEFAULT_BUCKETS = (1, 4)  # step shapes compiled: plain steps and trees of up to 3 nodes (README: why)
CAPACITY_STEP = 256  # the cache is allocated in multiples of this many slots
PACKAGE_FORMAT = 3  # bumped when the compiled step changes: packages and records of older formats are rebuilt


class EngineError(RuntimeError):
    """A compiled engine that cannot be built or run here (the caller falls back to eager)."""


class EagerEngine:
    """transformers' DynamicCache, any step shape, no compilation: the reference."""

    name = "eager"
    buckets = None  # any size

    def __init__(self, model):
        self.model = model
        self.decoder, self.lm_head = decoder_and_head(model)
        self.dtype = next(model.parameters()).dtype
        self.cache = None
        self.length = 0  # cached tokens

    def prefill(self, input_ids: torch.Tensor, capacity: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """input_ids [1, L] -> (last hidden state [H], its logits [V]); the cache holds the prompt."""
        from transformers import DynamicCache

        L = input_ids.shape[1]
        self.cache = DynamicCache()
        pos = torch.arange(L, device=input_ids.device)[None]
        hidden = forward_hidden(self.decoder, input_ids, self.cache, pos)[0, -1]
        self.length = L
        return hidden, project(self.model, self.lm_head, hidden)

    def step(self, tokens: torch.Tensor, offsets: torch.Tensor | None = None, tree_mask=None):
        """tokens [T] placed after the cache at positions length + offsets [T] (None: a plain step, T = 1), seeing
        the cache and their tree ancestors (tree_mask [T, T] bool) -> (hidden [T, H], logits [T, V])."""
        device = tokens.device
        if tree_mask is None:
            pos = torch.tensor([[self.length]], device=device)
            hidden = forward_hidden(self.decoder, tokens[None], self.cache, pos)[0]
        else:
            mask4d = tree_attention_mask(tree_mask, self.length, self.dtype)
            hidden = forward_hidden(
                self.decoder, tokens[None], self.cache, (offsets + self.length)[None], mask4d
            )[0]
        self.pending = tokens.numel()
        return hidden, project(self.model, self.lm_head, hidden)

    def accept(self, path: torch.Tensor | None = None) -> None:
        """Keep the last step's positions ``path`` [A] (ascending, step-relative; None: all of a plain step)."""
        if path is None:
            self.length += self.pending
            return
        compact_kv(self.cache, self.length, path)
        self.length += path.numel()

    def rewind(self, length: int) -> None:
        truncate_cache(self.cache, length)
        self.length = length


class _CacheWriter:
    """What the model's attention layers see as their cache: ``update`` writes this step's entries into the
    preallocated per-layer keys / values [B, kv_heads, S, D], row b's at its own ``slots[b]`` ([B, T]), and returns
    the first ``view`` slots."""

    is_compileable = True

    def __init__(self, keys, values, slots, view):
        self.keys, self.values, self.slots, self.view = keys, values, slots, view

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        k, v = self.keys[layer_idx], self.values[layer_idx]
        B, h, T, D = key_states.shape
        rows = torch.arange(B, device=k.device)[:, None, None]  # [B, 1, 1]
        heads = torch.arange(h, device=k.device)[None, :, None]  # [1, h, 1]
        at = (rows, heads, self.slots[:, None, :])  # -> [B, h, T]: an index_put the compiler does in place
        k.index_put_(at, key_states)
        v.index_put_(at, value_states)
        return k[:, :, : self.view], v[:, :, : self.view]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Asked only when position ids are missing, which never happens here."""
        raise EngineError("the preallocated cache needs explicit position ids")


class StepModule(nn.Module):
    """The fixed-shape step, as a module to export and compile ahead of time:
    (ids [B, Tb], pos [B, Tb], tree_mask [B, Tb, Tb] bool, start [B] long, *kv: every layer's keys then every
    layer's values [B, kv_heads, S, D]) -> (hidden [B, Tb, H], logits [B, Tb, V] fp32). Row b's Tb entries are
    written into its cache row from slot ``start[b]``; they see its slots < start[b] and their tree ancestors (the
    mask is built here, in the compiled code); S (the cache length) stays dynamic, so one compiled step serves every
    context length (and B too, for the batched steps)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids, pos, tree_mask, start, *kv):
        n = len(kv) // 2
        (B, Tb), S = ids.shape, kv[0].shape[2]
        dtype = kv[0].dtype
        slots = start[:, None] + torch.arange(Tb, device=ids.device)  # [B, Tb]
        col = torch.arange(S, device=ids.device)[None, :]  # [1, S]
        rel = col - start[:, None]  # [B, S]
        in_tree = (rel >= 0) & (rel < Tb)
        tree_vis = tree_mask.gather(2, rel.clamp(0, Tb - 1)[:, None, :].expand(B, Tb, S))  # [B, Tb, S]
        visible = (col < start[:, None])[:, None, :] | (in_tree[:, None, :] & tree_vis)
        mask = torch.zeros(B, 1, Tb, S, dtype=dtype, device=ids.device)
        mask = mask.masked_fill(~visible[:, None], torch.finfo(dtype).min)
        decoder, lm_head = decoder_and_head(self.model)
        cache = _CacheWriter(kv[:n], kv[n:], slots, S)
        hidden = decoder(input_ids=ids, cache=cache, position_ids=pos, attention_mask=mask, use_cache=True)
        hidden = hidden.last_hidden_state
        return hidden, project(self.model, lm_head, hidden)


def prefill_into(owner, prompts: list[torch.Tensor], kv: list[torch.Tensor]) -> torch.Tensor:
    """Run prompts (each [1, L_i]) eagerly into len(prompts) preallocated cache rows (``kv``: every layer's keys
    then values, [n, kv_heads, S, D] views), each from slot 0 -> each row's last hidden state [n, H]. The prompts
    run packed, one after the other in a single row of sum(L_i) tokens (each weight read once for all of them, no
    padding), each seeing only itself (a block-diagonal causal mask) at its own positions 0..L_i - 1."""
    dev = prompts[0].device
    lengths = [p.shape[1] for p in prompts]
    ids = torch.cat([p.reshape(1, -1) for p in prompts], dim=1)  # [1, N]
    rows = torch.cat([torch.full((n,), i, device=dev) for i, n in enumerate(lengths)])  # [N]
    pos = torch.cat([torch.arange(n, device=dev) for n in lengths])  # [N]
    cache = _PackedWriter(kv[: owner.layers], kv[owner.layers :], rows, pos)
    visible = (rows[:, None] == rows[None, :]) & (pos[:, None] >= pos[None, :])  # [N, N]
    mask = torch.zeros(visible.shape, dtype=owner.dtype, device=dev)
    mask.masked_fill_(~visible, torch.finfo(owner.dtype).min)
    with _packed_attention(owner.decoder, lengths):
        out = owner.decoder(
            input_ids=ids, cache=cache, position_ids=pos[None], attention_mask=mask[None, None]
        )
    ends = torch.tensor(lengths, device=dev).cumsum(0) - 1
    return out.last_hidden_state[0, ends]


PACKED_ATTENTION = "medusa_packed"  # a packed prefill's attention: each prompt's block on its own (below)
_segments: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("medusa_packed", default=None)


def packed_attention(
    module, query, key, value, attention_mask, scaling=None, dropout=0.0, softcap=None, **kwargs
):
    """A packed prefill's attention, prompt by prompt (query [1, H, N, D], key / value [1, kv_heads, N, D], mask
    [1, 1, N, N]; the prompts' lengths from :func:`_packed_attention`) -> ([1, N, H, D], None). Each prompt runs
    transformers' SDPA attention on its own block (copied out, so a prompt is computed the same way alone or among
    others), or :func:`grouped_attention` where logits are soft-capped: attention over the whole row would compute
    every prompt against every other only to mask it out (5x the work for 8 prompts of ~70 tokens)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if kwargs.get("s_aux") is not None or kwargs.get("sinks") is not None:
        raise EngineError("attention sinks are not supported by the compiled engine")
    out, a = [], 0
    for n in _segments.get() or [query.shape[2]]:
        b = a + n
        q, k, v = (x[:, :, a:b].contiguous() for x in (query, key, value))
        mask = None if attention_mask is None else attention_mask[:, :, a:b, a:b].contiguous()
        if softcap is None:
            o = sdpa_attention_forward(module, q, k, v, mask, scaling=scaling, **kwargs)[0]
        else:
            o = grouped_attention(module, q, k, v, mask, scaling=scaling, softcap=softcap, **kwargs)[0]
        out.append(o)
        a = b
    return torch.cat(out, dim=1), None


@contextlib.contextmanager
def _packed_attention(decoder, lengths: list[int]):
    """While a packed prefill of prompts of ``lengths`` runs (one prompt too: it must be computed as it would be
    among others), the model attends prompt by prompt (:func:`packed_attention`)."""
    from transformers import AttentionInterface

    if PACKED_ATTENTION not in AttentionInterface._global_mapping:
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

        AttentionInterface.register(PACKED_ATTENTION, packed_attention)
        ALL_MASK_ATTENTION_FUNCTIONS.register(PACKED_ATTENTION, eager_mask)
    current = decoder.config._attn_implementation
    token = _segments.set(lengths)
    decoder.set_attn_implementation(PACKED_ATTENTION)
    try:
        yield
    finally:
        decoder.set_attn_implementation(current)
        _segments.reset(token)


class _PackedWriter(_CacheWriter):
    """The cache a packed prefill's attention sees: token j's keys / values go to cache row ``rows[j]``, slot
    ``slots[j]``; attention reads the packed step's own entries (the mask keeps each prompt to itself)."""

    def __init__(self, keys, values, rows, slots):
        self.keys, self.values, self.rows, self.slots = keys, values, rows, slots

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):  # [1, h, N, D] each
        h = key_states.shape[1]
        at = (self.rows[None, :], torch.arange(h, device=key_states.device)[:, None], self.slots[None, :])
        self.keys[layer_idx].index_put_(at, key_states[0])  # -> [h, N, D]
        self.values[layer_idx].index_put_(at, value_states[0])
        return key_states, value_states


def cache_shape(model) -> tuple[int, int, int]:
    """-> (layers, kv_heads, head_dim) of the model's attention cache."""
    cfg = model.config
    text = getattr(cfg, "get_text_config", lambda: cfg)()
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return text.num_hidden_layers, kv_heads, head_dim


class CompiledEngine:
    """A preallocated KV cache + one ahead-of-time compiled step per bucket (batch size 1). ``backend``:
    ``aoti`` (torch.export + AOTInductor: frozen weights, autotuned matmuls, a package on disk that later starts
    load in a second) or ``inductor`` (torch.compile in process, no freezing: quick to build, for tests)."""

    name = "compiled"

    def __init__(self, model, buckets=DEFAULT_BUCKETS, autotune: bool = True, backend: str = "aoti",
                 folder: str | None = None, verbose: bool = False):  # fmt: skip
        if getattr(model.config, "is_encoder_decoder", False):
            raise EngineError("encoder-decoder models are not supported by the compiled engine")
        if backend not in BACKENDS:
            raise EngineError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.model = model
        self.decoder, self.lm_head = decoder_and_head(model)
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.buckets = tuple(sorted({int(b) for b in buckets}))
        if not self.buckets or self.buckets[0] != 1:
            raise EngineError(f"buckets must include 1 (plain steps), got {buckets}")
        self.autotune, self.backend, self.verbose = autotune, backend, verbose
        # our bf16 kernels in every step where they apply (infer/engine/kernels.py)
        self.kernel = kernels.wanted(model) if backend == "aoti" else None
        self.folder = folder or package_folder(model, autotune)
        self.layers, self.kv_heads, self.head_dim = cache_shape(model)
        self.kv: list[torch.Tensor] = []  # every layer's keys, then every layer's values [1, kv_heads, S, D]
        self.length = 0
        self._eye = {b: torch.eye(b, dtype=torch.bool, device=self.device) for b in self.buckets}
        if backend == "inductor":  # traced lazily at the first call: the model keeps eager attention
            _set_step_attention(model)
        self.module = StepModule(model).eval()
        steps = load_steps(self, [(1, b) for b in self.buckets])
        self.steps = {b: steps[(1, b)] for b in self.buckets}

    @property
    def capacity(self) -> int:
        return self.kv[0].shape[2] if self.kv else 0

    def bucket(self, T: int) -> int:
        for b in self.buckets:
            if b >= T:
                return b
        raise EngineError(f"a step of {T} tokens exceeds the largest compiled step ({self.buckets[-1]})")

    # ---------------------------------------------------------------------------------------- the cache
    def _ensure(self, capacity: int) -> None:
        need = -(-(capacity + self.buckets[-1]) // CAPACITY_STEP) * CAPACITY_STEP
        if self.capacity < need:
            shape = (1, self.kv_heads, need, self.head_dim)
            self.kv = [
                torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in range(2 * self.layers)
            ]

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor, capacity: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """input_ids [1, L] -> (last hidden [H], logits [V]), run eagerly into the preallocated cache;
        ``capacity``: the tokens this generation may hold (prompt + new tokens + tree room)."""
        L = input_ids.shape[1]
        self._ensure(max(capacity, L))
        hidden = prefill_into(self, [input_ids], [t[:1] for t in self.kv])[0]
        self.length = L
        return hidden, project(self.model, self.lm_head, hidden)

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, offsets: torch.Tensor | None = None, tree_mask=None):
        """As :meth:`EagerEngine.step`: tokens [T] -> (hidden [T, H], logits [T, V]), padded to a bucket."""
        T = tokens.numel()
        Tb = self.bucket(T)
        if self.length + Tb > self.capacity:
            raise EngineError(f"the cache of {self.capacity} slots is full (prefill with a larger capacity)")
        dev = self.device
        pos = torch.full((1, Tb), self.length, dtype=torch.long, device=dev)
        if tree_mask is None and T == Tb:  # a plain step: nothing to pad
            ids, vis = tokens[None], self._eye[Tb][None]
        else:  # padding nodes: copies of the root that see only themselves
            ids = tokens[:1].repeat(Tb)[None]
            ids[0, :T] = tokens
            vis = self._eye[Tb].clone()[None]
            if tree_mask is not None:
                pos[0, :T] += offsets
                vis[0, :T, :T] = tree_mask
        start = torch.tensor([self.length], device=dev)
        hidden, logits = self.steps[Tb](ids, pos, vis, start, *self.kv)
        self.pending = T
        return hidden[0, :T], logits[0, :T]

    def accept(self, path: torch.Tensor | None = None) -> None:
        """As :meth:`EagerEngine.accept`: the accepted path is moved in place inside the preallocated cache."""
        if path is None:
            self.length += self.pending
            return
        A = path.numel()
        if not bool((path == torch.arange(A, device=path.device)).all()):
            idx = path + self.length
            for t in self.kv:
                t[:, :, self.length : self.length + A] = t.index_select(2, idx)
        self.length += A

    def rewind(self, length: int) -> None:
        self.length = length


BACKENDS = ("aoti", "inductor")


def step_example(owner, B: int, Tb: int, S: int = 2 * CAPACITY_STEP):
    """Example inputs of a step of B rows x Tb tokens over an S-slot cache (for export and tests)."""
    dev, dtype = owner.device, owner.dtype
    shape = (B, owner.kv_heads, S, owner.head_dim)
    kv = [torch.zeros(shape, device=dev, dtype=dtype) for _ in range(2 * owner.layers)]
    ids = torch.zeros(B, Tb, dtype=torch.long, device=dev)
    pos = torch.arange(Tb, device=dev).expand(B, -1) + 7
    tree = torch.ones(Tb, Tb, dtype=torch.bool, device=dev).tril().expand(B, -1, -1).contiguous()
    return (ids, pos, tree, torch.full((B,), 7, device=dev), *kv)


def step_package(folder: str, rows: int | None, Tb: int, kernel: str | None = None) -> str:
    """The package file of the step of ``rows`` (None: any from 2) x Tb tokens (``kernel``: the library of our
    kernels the model uses here, :func:`infer.engine.kernels.wanted`, named in the file)."""
    name = {None: f"bstep-{Tb}", 1: f"step-{Tb}"}.get(rows, f"step-{rows}x{Tb}")
    if kernel is not None:
        name += f"-{kernel}"
    return os.path.join(folder, f"{name}.pt2")


def load_steps(owner, shapes: list[tuple[int | None, int]]) -> dict:
    """The compiled steps of ``shapes`` ((rows, tokens) each, see :func:`load_step`) for ``owner`` -> {shape: step};
    packages not on disk yet are built first, side by side where cores allow (:mod:`infer.engine.builds`)."""
    if owner.backend == "aoti":
        from .builds import build_in_parallel

        build_in_parallel(owner, [(t, r) for r, t in shapes])
    return {(r, t): load_step(owner, t, r) for r, t in shapes}


def load_step(owner, Tb: int, rows: int | None):
    """The compiled step of ``rows`` x Tb tokens for ``owner`` (a compiled engine: model, module, folder, backend,
    ...), loaded from the disk cache or built into it: a fixed number of rows (``step-T.pt2`` for one,
    ``step-BxT.pt2`` for more; matmul kernels autotuned for that shape) or ``rows=None``: any batch size from 2
    (``bstep-T.pt2``: the batch dimension dynamic, oneDNN's prepacked matmuls)."""
    if owner.backend == "inductor":
        from torch._dynamo import config as dynamo_config

        compiled = torch.compile(owner.module, fullgraph=True, dynamic=False)

        # every step shape (rows, tokens, cache length) of every engine compiles the same code again: this
        # in-process backend (tests) must not hit dynamo's recompile limits, in any thread (they are per thread)
        def run(*args):
            with dynamo_config.patch(recompile_limit=1024, accumulated_recompile_limit=4096):
                return compiled(*args)

        return run
    path = build_step(owner, Tb, rows)
    if owner.kernel is not None:
        kernels.load_library()  # the package calls its ops
    from torch._inductor import aoti_load_package

    return aoti_load_package(path)


def build_step(owner, Tb: int, rows: int | None) -> str:
    """Build the package of the step of ``rows`` x Tb tokens into ``owner.folder`` unless it is there -> its path."""
    path = step_package(owner.folder, rows, Tb, owner.kernel)
    if not os.path.exists(path):
        _set_step_attention(owner.model)  # exported with it; the model gets its own back after
        ours = owner.kernel is not None  # our kernels in every step (infer/engine/kernels.py)
        linears = kernels.packed_linears(owner.model) if ours else contextlib.nullcontext()
        try:
            example = step_example(owner, rows or 4, Tb)
            with linears, kernels.attention_op(ours):
                _build_package(owner.module, example, path, owner.autotune and rows is not None, owner.verbose,
                               Tb, rows, invariant=ours)  # fmt: skip
        finally:
            _restore_attention(owner.model)
    return path


def package_folder(model, autotune: bool) -> str:
    """Where this model's compiled steps live: one folder per (model, weights, dtype, device, threads, torch, CPU)."""
    from ..cache import cache_root
    from ..model.hardware import profile_key

    key = profile_key(model, next(model.parameters()).device) | {
        "autotune": autotune,
        "format": PACKAGE_FORMAT,
    }
    key["weights"] = weights_fingerprint(model)  # the packages hold frozen weights: new weights, new packages
    return os.path.join(cache_root(), "engine", _digest(key))


def _digest(key: dict) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


def weights_fingerprint(model) -> str:
    """A cheap digest of the weights (names, shapes, dtypes and ~4k evenly spaced values of each tensor): a model
    folder whose weights changed (a new fine-tune under the same name) never loads packages compiled for the old."""
    import hashlib

    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in model.state_dict().items():
            flat = p.detach().reshape(-1)
            sample = flat[:: max(1, flat.numel() // 4096)][:4096]
            h.update(f"{name}{tuple(p.shape)}{p.dtype}".encode())
            h.update(sample.float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _build_package(
    module,
    example,
    path: str,
    autotune: bool,
    verbose: bool,
    Tb: int,
    rows: int | None,
    invariant: bool = False,
) -> None:
    """torch.export the step (cache length dynamic; ``rows`` None: the batch size too) and compile it with
    AOTInductor into ``path``. ``invariant``: the step's matmuls and attention are our kernels, and inductor rounds
    to the model's dtype wherever eager would (``emulate_precision_casts``): it fuses ops differently for different
    shapes, and without the roundings a fused kernel keeps fp32 where another shape's does not (a plain step and a
    tree step then disagreed from the fourth layer on)."""
    import time

    from torch._inductor import aoti_compile_and_package

    t0 = time.perf_counter()
    if verbose:
        what = {None: "batched ", 1: ""}.get(rows, f"{rows}-row ")
        print(f"engine: compiling the {what}{Tb}-token step (once; a minute or two) ...", flush=True)
    S = torch.export.Dim("S", min=64, max=1 << 20)
    if rows is None:
        B = torch.export.Dim("B", min=2, max=1024)
        rows_dim = {0: B}
        dynamic = (rows_dim, rows_dim, rows_dim, rows_dim, tuple({0: B, 2: S} for _ in example[4:]))
    else:  # *kv is one (varargs) input
        dynamic = (None, None, None, None, tuple({2: S} for _ in example[4:]))
    with torch.no_grad():
        program = torch.export.export(module, example, dynamic_shapes=dynamic, strict=False)
    options = {"freezing": True, "emulate_precision_casts": invariant}
    if autotune:  # measured per matmul shape: inductor's C++ GEMM template vs oneDNN
        options |= {"max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN"}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path[:-4]}.{os.getpid()}.tmp.pt2"
    with _templates_compiled_once():
        aoti_compile_and_package(program, package_path=tmp, inductor_configs=options)
    os.replace(tmp, path)
    if verbose:
        print(f"engine: the {what}{Tb}-token step compiled in {time.perf_counter() - t0:.0f} s", flush=True)


@contextlib.contextmanager
def _templates_compiled_once():
    """Inductor compiles the C++ GEMM template's jinja sources again for every matmul it renders (~4,000 times a
    step here: a quarter of a package's build time); the same source gives the same template, so while a package
    builds each source is compiled once. Left alone where inductor has no such method."""
    from torch._inductor.codegen.common import KernelTemplate

    original = KernelTemplate.__dict__.get("_template_from_string")
    if not isinstance(original, staticmethod):
        yield
        return
    KernelTemplate._template_from_string = staticmethod(functools.lru_cache(maxsize=None)(original.__func__))
    try:
        yield
    finally:
        KernelTemplate._template_from_string = original


# ------------------------------------------------------------------------------------------- choosing one
def _record_path(model, buckets) -> tuple[str, dict]:
    from ..cache import cache_root
    from ..model.hardware import profile_key

    key = profile_key(model, next(model.parameters()).device) | {
        "buckets": list(buckets),
        "format": PACKAGE_FORMAT,
    }
    return os.path.join(cache_root(), "engine", f"engine-{_digest(key)}.json"), key


def read_record(model, buckets=DEFAULT_BUCKETS) -> dict | None:
    """The saved build-and-measure record of the compiled engine for this model here, or None."""
    import json

    path, key = _record_path(model, buckets)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            rec = json.load(f)
    except (OSError, ValueError):
        return None
    return rec if rec.get("key") == key else None


def _cost(ms: list[float]) -> float:
    """Milliseconds per token the engine can expect: the better of plain steps and full-bucket trees yielding 2."""
    return min(ms[0], ms[-1] / 2)


@torch.no_grad()
def measure_engine(engine, buckets, prefix_len: int = 128, reps: int = 5) -> list[float]:
    """Median milliseconds of one step of each size in ``buckets`` (a chain of that many tokens), after a
    ``prefix_len``-token prompt: interleaved repetitions (a burst of load hits all sizes alike), a warm-up round."""
    import statistics
    import time

    vocab = engine.lm_head.weight.shape[0]
    g = torch.Generator().manual_seed(0)
    dev = next(engine.model.parameters()).device
    prompt = torch.randint(0, vocab, (1, prefix_len), generator=g).to(dev)
    engine.prefill(prompt, prefix_len + max(buckets) + 1)
    runs = [[] for _ in buckets]
    for rep in range(reps + 1):
        for i, T in enumerate(buckets):
            tokens = torch.randint(0, vocab, (T,), generator=g).to(dev)
            offsets = torch.arange(T, device=dev)
            tree_mask = torch.ones(T, T, dtype=torch.bool, device=dev).tril()
            t0 = time.perf_counter()
            _, logits = engine.step(tokens, offsets if T > 1 else None, tree_mask if T > 1 else None)
            logits.argmax(-1).tolist()
            if rep:
                runs[i].append(1000 * (time.perf_counter() - t0))
            engine.rewind(prefix_len)
    return [statistics.median(r) for r in runs]


def build_compiled(model, buckets=DEFAULT_BUCKETS, verbose: bool = True, **options):
    """Build (or load) every bucket's compiled step and time it against the eager engine -> (engine, record).
    ``options``: :class:`CompiledEngine`'s (autotune, backend, folder)."""
    import json
    import time

    t0 = time.perf_counter()
    engine = CompiledEngine(model, buckets, verbose=verbose, **options)
    compiled_ms = measure_engine(engine, buckets)
    build_s = time.perf_counter() - t0
    eager_ms = measure_engine(EagerEngine(model), buckets)
    faster = _cost(compiled_ms) < _cost(eager_ms)
    path, key = _record_path(model, buckets)
    rec = {"key": key, "compiled_ms": compiled_ms, "eager_ms": eager_ms, "faster": faster, "build_s": build_s}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(rec, f)
    os.replace(path + ".tmp", path)
    return engine, rec


def failure_line(e: Exception) -> str:
    """A compiler failure in one line, for the reason an engine fell back to eager: 'Type: first line'."""
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return f"{type(e).__name__}: {first[:200]}"


def _ms(values) -> str:
    return "/".join(f"{v:.1f}" if isinstance(v, float) else str(v) for v in values)


def make_engine(model, name: str = "auto", buckets=DEFAULT_BUCKETS, verbose: bool = True, **options):
    """-> (engine, one-line reason). ``eager``: the eager engine. ``compiled``: build (or load from the disk cache)
    and measure the compiled engine; a failure falls back to eager with the reason. ``auto``: compiled where
    a build here measured it faster, else eager (never compiles by itself: the first build takes minutes)."""
    if name not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {name!r}")
    if name == "eager":
        return EagerEngine(model), "eager (asked)"
    if name == "auto":
        rec = read_record(model, buckets)
        folder = package_folder(model, options.get("autotune", True))
        built = options.get("backend", "aoti") != "aoti" or all(  # named with our kernels where they run
            os.path.exists(step_package(folder, 1, b, kernels.wanted(model))) for b in buckets
        )
        if rec is None or not built:
            return EagerEngine(
                model
            ), "eager: the compiled engine was not built here yet (once: --engine compiled)"
        if not rec["faster"]:
            return EagerEngine(model), (
                f"eager: it measured faster here (steps of {_ms(buckets)} tokens: eager {_ms(rec['eager_ms'])} "
                f"ms, compiled {_ms(rec['compiled_ms'])} ms)"
            )
    try:
        engine, rec = build_compiled(model, buckets, verbose=verbose, **options)
    except Exception as e:  # noqa: BLE001 - any compiler failure means eager, said once
        _restore_attention(model)
        return EagerEngine(model), f"eager: compiling failed ({failure_line(e)})"
    return engine, (
        f"compiled (steps of {_ms(buckets)} tokens: {_ms(rec['compiled_ms'])} ms vs eager "
        f"{_ms(rec['eager_ms'])} ms; ready in {rec['build_s']:.0f} s)"
    )


STEP_ATTENTION = "medusa_grouped"  # the attention the compiled steps are traced with (registered below)


def grouped_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, softcap=None,
                      **kwargs):  # fmt: skip
    """Eager attention with the query heads grouped by their key/value head: query [B, H, T, D], key / value
    [B, kv_heads, S, D], additive mask [B, 1, T, S] -> ([B, T, H, D], None). The same maths as transformers' eager
    attention (scores and softmax in fp32), but each key/value head serves its H / kv_heads queries in one matmul
    of (H / kv_heads) * T rows, with no copy of the cache per query head. The compiler keeps those matmuls as
    library calls; eager attention's one-row matmuls (a plain step) are lowered into a reduction kernel that cost
    ~1.4 ms per layer at 8 rows here (a 36 vs 69 ms step), and a 1-query SDPA call ~10x more than this. Traced
    inside :func:`infer.engine.kernels.attention_op`, a bf16 step calls our attention kernel instead, which reads
    only the slots each query sees."""
    if kwargs.get("s_aux") is not None or kwargs.get("sinks") is not None:
        raise EngineError("attention sinks are not supported by the compiled engine")
    B, H, T, D = query.shape
    scaling = D**-0.5 if scaling is None else scaling
    if attention_mask is not None and kernels.attention_fits(query, key, softcap):  # kernels.attention_op
        return kernels.attention(query, key, value, attention_mask, scaling), None
    kv_heads = key.shape[1]
    groups = H // kv_heads
    q = query.reshape(B, kv_heads, groups * T, D)  # query head h reads key/value head h // groups
    scores = torch.matmul(q, key.transpose(2, 3)).float() * scaling  # [B, kv_heads, groups * T, S]
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if attention_mask is not None:
        S = scores.shape[-1]
        scores = scores.view(B, kv_heads, groups, T, S) + attention_mask[:, :, None, :, :S].float()
        scores = scores.view(B, kv_heads, groups * T, S)
    probs = scores.softmax(-1).to(value.dtype)
    out = torch.matmul(probs, value)  # [B, kv_heads, groups * T, D]
    return out.view(B, H, T, D).transpose(1, 2).contiguous(), None


def _set_step_attention(model) -> None:
    """Trace the steps with :func:`grouped_attention` (transformers' AttentionInterface: the model is unmodified)."""
    from transformers import AttentionInterface

    if STEP_ATTENTION not in AttentionInterface._global_mapping:
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

        AttentionInterface.register(STEP_ATTENTION, grouped_attention)
        # called without a mask (an eager prefill), the model builds eager attention's full 4-D mask for it
        ALL_MASK_ATTENTION_FUNCTIONS.register(STEP_ATTENTION, eager_mask)
    current = getattr(model.config, "_attn_implementation", None)
    if current != STEP_ATTENTION:
        model._medusa_attn = current  # for _restore_attention
        model.set_attn_implementation(STEP_ATTENTION)


def _restore_attention(model) -> None:
    if getattr(model, "_medusa_attn", None) is not None:
        model.set_attn_implementation(model._medusa_attn)
        model._medusa_attn = None
