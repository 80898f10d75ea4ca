"""Kernels of our own inside the compiled steps, where the compiler's are measured slower.

``medusa::bf16_linear`` (``bf16_linear.cpp``): the bf16 linear layers of a step on CPUs with AVX512-BF16. Inductor's
C++ GEMM template computes bf16 matmuls with fp32 FMAs (it has a native bf16 micro-kernel only for AMX), which is
memory-bound for one token row but compute-bound from ~8 rows on: an 8-row step (a batch of 8, or a tree of 8
nodes) cost 2-3x a one-row step. This kernel streams each weight once for several rows with ``vdpbf16ps``, so 1 to 8
rows cost about the same (measured in the README); its sums run in one fixed order whatever the number of rows,
so a row's output does not depend on its neighbours in the step.

The kernel is built once with the C++ compiler the compiled engine already needs (into ``$TORCH_EXTENSIONS_DIR``
or the toolkit's cache) and used by the AOTInductor packages through the op registry: while a step is exported,
every eligible ``nn.Linear`` of the model calls the op on a packed copy of its weight (:func:`packed_linears`; the
model is not modified), and a package built that way loads the library before it runs. ``MEDUSA_KERNELS=0`` turns
it off. The steps that use it carry its name in their package's file name.
"""

from __future__ import annotations

import contextlib
import functools
import os
import types

import torch
from torch import nn

KERNEL_VERSION = 3  # bumped with bf16_linear.cpp: part of the kernel's name, so in the package file names
SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bf16_linear.cpp")


def wanted(model) -> str | None:
    """The kernel a compiled engine of ``model`` uses here (f"bf16_linear-v{KERNEL_VERSION}"), or None: bf16 weights on a CPU
    with AVX512-BF16, linear layers it can take, and not turned off by ``MEDUSA_KERNELS=0``."""
    if os.environ.get("MEDUSA_KERNELS", "1") == "0":
        return None
    p = next(model.parameters())
    if p.device.type != "cpu" or p.dtype != torch.bfloat16 or not cpu_has_avx512_bf16():
        return None
    return f"bf16_linear-v{KERNEL_VERSION}" if eligible_linears(model) else None


# matmul rows (rows x tokens) from which a step uses the kernel: below it the compiler's is as fast or faster
MIN_ROWS = 8


def used(kernel: str | None, rows: int | None, tokens: int) -> bool:
    """Whether the step of ``rows`` (None: any from 2) x ``tokens`` uses ``kernel`` (None: none wanted here): from
    :data:`MIN_ROWS` matmul rows on. For fewer, inductor's GEMV template is as fast or faster (measured here: a
    one-row step 10.9-11.2 ms with it, 11.4-12.1 ms with the kernel; 4 tokens 11.8-11.9 vs 12.8-14.4 ms)."""
    return kernel is not None and (rows or 2) * tokens >= MIN_ROWS


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
def load_bf16_linear() -> None:
    """Build (the first time, ~30 s) and load the op library into this process; raises RuntimeError with the
    compiler's first line when it cannot be built."""
    from torch.utils.cpp_extension import load

    from ..cache import cache_root

    name = f"medusa_bf16_linear_v{KERNEL_VERSION}"
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.join(cache_root(), "kernels")
    folder = os.path.join(root, f"{name}-torch{torch.__version__.replace('+', '_')}")
    os.makedirs(folder, exist_ok=True)
    # -fopenmp: at::parallel_for is inlined here and splits the work with OpenMP only when the unit has it
    flags = ["-O3", "-fopenmp", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512bf16"]
    try:
        load(name=name, sources=[SOURCE], build_directory=folder, extra_cflags=flags, is_python_module=False)
    except Exception as e:  # noqa: BLE001 - any build failure: one line, the caller says what it does instead
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RuntimeError(f"building the bf16 kernel failed: {first[:200]}") from e

    @torch.library.register_fake("medusa::bf16_linear")
    def _(x, wp):  # [..., K], [N / 32, K / 2, 32, 2] -> [..., N]
        return x.new_empty((*x.shape[:-1], wp.shape[0] * 32))


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
    load_bf16_linear()
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
