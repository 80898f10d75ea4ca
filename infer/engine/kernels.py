"""Kernels of our own inside the compiled steps, where the compiler's are measured slower (bf16 models on CPUs with
AVX512-BF16; one library, built once).

- ``medusa::bf16_linear`` (``bf16_linear.cpp``): the bf16 linear layers of a step. Inductor's C++ GEMM template
  computes bf16 matmuls with fp32 FMAs (it has a native bf16 micro-kernel only for AMX), which is memory-bound for
  one token row but compute-bound from ~8 rows on: an 8-row step (a batch of 8, or a tree of 8 nodes) cost 2-3x a
  one-row step. This kernel streams each weight once for several rows with ``vdpbf16ps``, so 1 to 8 rows cost
  about the same (measured in the README).
- ``medusa::attention`` (``attention.cpp``): the attention of a step over the preallocated cache. The compiled
  matmuls computed every slot of every row, used or not (~4 ms of a 17 ms step at 8 rows); this one reads the
  slots each query sees and nothing else.

Both compute each output in one fixed order whatever the other rows and tokens of the step are, and every step uses
them (with inductor told to round to bf16 wherever eager would: ``emulate_precision_casts``), so a token's outputs do
not depend on its neighbours in the step: greedy tree decoding equals plain greedy decoding in bf16 bit for bit, and
a request gets the same answer alone or in any batch (batch invariance; tested). The library is built with the C++
compiler the compiled engine already needs (into ``$TORCH_EXTENSIONS_DIR`` or the toolkit's cache) and used by the
AOTInductor packages through the op registry: while a step is exported, every eligible ``nn.Linear`` of the model
calls the linear op on a packed copy of its weight (:func:`packed_linears`; the model is not modified) and the step's
attention calls the attention op (:func:`attention_op`); a package built that way loads the library before it runs.
``MEDUSA_KERNELS=0`` turns them off (inductor's own kernels: a little faster for one row, not batch invariant). The
steps built with them carry the library's name in their package's file name.
"""

from __future__ import annotations

import contextlib
import functools
import os
import types

import torch
from torch import nn

HEAD_DIMS = (64, 128, 256)  # the attention kernel's head sizes
KERNEL_VERSION = 5  # bumped with the sources: part of the library's name, so in the package file names
HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = [os.path.join(HERE, "bf16_linear.cpp"), os.path.join(HERE, "attention.cpp")]


def wanted(model) -> str | None:
    """The kernels every compiled step of ``model`` uses here (f"bf16-v{KERNEL_VERSION}": the library's name), or None:
    bf16 weights on a CPU with AVX512-BF16, linear layers the linear kernel can take, and not turned off by
    ``MEDUSA_KERNELS=0`` (the attention op serves the models whose attention it can compute:
    :func:`attention_fits`)."""
    if os.environ.get("MEDUSA_KERNELS", "1") == "0":
        return None
    p = next(model.parameters())
    if p.device.type != "cpu" or p.dtype != torch.bfloat16 or not cpu_has_avx512_bf16():
        return None
    return f"bf16-v{KERNEL_VERSION}" if eligible_linears(model) else None


def cpu_has_avx512_bf16() -> bool:
    """Whether this CPU runs AVX512-BF16 instructions (torch's own check; False where torch has none)."""
    return bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())


def eligible_linears(model) -> list[nn.Linear]:
    """The model's ``nn.Linear`` layers the kernel takes: bf16 CPU weights, out_features % 32 == 0, in_features
    even (the others keep the compiler's matmul)."""
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.Linear)
        and m.weight.dtype == torch.bfloat16
        and m.weight.device.type == "cpu"
        and m.out_features % 32 == 0
        and m.in_features % 2 == 0
    ]


@functools.cache
def load_library() -> None:
    """Build (the first time, ~9 s here: the sources include ATen's core headers, not torch/extension.h, which
    took 3-4x longer) and load the ops' library into this process; raises RuntimeError with the
    compiler's first line when it cannot be built."""
    from torch.utils.cpp_extension import load

    from ..cache import cache_root

    name = f"medusa_kernels_v{KERNEL_VERSION}"
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.join(cache_root(), "kernels")
    folder = os.path.join(root, f"{name}-torch{torch.__version__.replace('+', '_')}")
    os.makedirs(folder, exist_ok=True)
    # -fopenmp: at::parallel_for is inlined here and splits the work with OpenMP only when the unit has it
    flags = ["-O3", "-fopenmp", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512bf16"]
    try:
        load(name=name, sources=SOURCES, build_directory=folder, extra_cflags=flags, is_python_module=False)
    except Exception as e:  # noqa: BLE001 - any build failure: one line, the caller says what it does instead
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RuntimeError(f"building our kernels failed: {first[:200]}") from e

    @torch.library.register_fake("medusa::bf16_linear")
    def _(x, wp):  # [..., K], [N / 32, K / 2, 32, 2] -> [..., N]
        return x.new_empty((*x.shape[:-1], wp.shape[0] * 32))

    @torch.library.register_fake("medusa::attention")
    def _(q, k, v, mask, scaling):  # [B, H, T, D], [B, KV, S, D] x 2, [B, 1, T, >= S] -> [B, T, H, D]
        return q.new_empty((q.shape[0], q.shape[2], q.shape[1], q.shape[3]))


def bf16_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., K] bf16 @ the packed weight (:func:`pack`) [+ bias] -> [..., N] bf16."""
    y = torch.ops.medusa.bf16_linear(x, packed)
    return y if bias is None else y + bias


def pack(weight: torch.Tensor) -> torch.Tensor:
    """An nn.Linear weight [N, K] bf16 -> the kernel's layout [N / 32, K / 2, 32, 2]."""
    return torch.ops.medusa.bf16_pack(weight.detach())


def _packed_forward(self, x):
    return bf16_linear(x, self._medusa_packed, self.bias)


@contextlib.contextmanager
def packed_linears(model):
    """While a step is traced: each eligible ``nn.Linear`` of ``model`` calls the kernel on a packed copy of its
    weight (a buffer, frozen into the package like the weights); the layers get their own forward back after."""
    load_library()
    layers = eligible_linears(model)
    for layer in layers:
        layer.register_buffer("_medusa_packed", pack(layer.weight), persistent=False)
        layer.forward = types.MethodType(_packed_forward, layer)
    try:
        yield layers
    finally:
        for layer in layers:
            del layer.forward
            del layer._medusa_packed


# ------------------------------------------------------------------------------------------------ attention
_attention_on = [
    False
]  # inside attention_op (a plain global: torch.compile's tracer reads it, not a ContextVar)


@contextlib.contextmanager
def attention_op(on: bool = True):
    """While a step is traced: its attention (:func:`infer.engine.single.grouped_attention`) calls
    ``medusa::attention`` wherever :func:`attention_fits` (``on=False``: a no-op)."""
    if on:
        load_library()
    before, _attention_on[0] = _attention_on[0], on
    try:
        yield
    finally:
        _attention_on[0] = before


def attention_fits(query, key, softcap=None, **kwargs) -> bool:
    """Whether the op computes this attention call: inside :func:`attention_op`, bf16 CPU tensors, head_dim 64, 128
    or 256, no logit soft-capping or attention sinks."""
    return (
        _attention_on[0]
        and query.dtype == key.dtype == torch.bfloat16
        and query.device.type == "cpu"
        and query.shape[-1] in HEAD_DIMS
        and softcap is None
        and kwargs.get("s_aux") is None
        and kwargs.get("sinks") is None
    )


def attention(query, key, value, mask, scaling: float) -> torch.Tensor:
    """query [B, H, T, D], key / value [B, KV, S, D], additive mask [B, 1, T, >= S] -> [B, T, H, D] bf16."""
    return torch.ops.medusa.attention(query, key, value, mask, scaling)
