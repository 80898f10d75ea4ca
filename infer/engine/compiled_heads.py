"""The heads' drafting compiled ahead of time, as the model's step is (:mod:`infer.engine.single`).

Eager, one head call on a CPU is a handful of tiny GEMVs (the path input, the residual blocks) and a projection onto
the head vocabulary, each launched at generic shapes: on the embedded default in bf16 a sequential head costs
0.5-1.0 ms a call and a 3-node tree's drafting ~3.5 ms, a third of the compiled 1-token step, which is what kept
trees from paying on the compiled engine. Exported with ``torch.export`` and compiled by AOTInductor with frozen
weights and autotuned matmuls, the same call costs 0.27-0.42 ms.

:class:`CompiledHeads` wraps loaded heads and is used where they are: it answers ``head_logits`` (sequential heads,
one depth for F frontier rows) and ``__call__`` (Medusa heads, every head on one hidden state) from a compiled graph
when one fits the call's shape — F rows padded to a bucket: depth 0 takes 1 row (one sequence's root), deeper
heads ``HEAD_ROWS`` — and falls back to the eager heads otherwise (a batch's roots, a wider beam).
Everything else (config, ``to_full_vocab``, ``num_heads``) is the wrapped heads'. Drafts may differ from eager ones
in the last bf16 bit; outputs never do (every draft is verified by the model).
"""

from __future__ import annotations

import os

import torch
from torch import nn

# Frontier rows of a compiled sequential head call below the root: the compiled engine's largest tree (4 tokens)
# has at most 3 nodes per depth. Measured here (bf16, one depth-1 call): 1 row 0.20 ms, 2 0.24, 4 0.35, 8 0.93 ms
# (inductor's GEMM template loses its edge at 8 rows; eager: 0.67-1.0 ms at any of them).
HEAD_ROWS = 4


class _HeadStep(nn.Module):
    """One compiled drafting call. Sequential head ``d``: (hidden [F, H], path_emb [F, d+1, H]) -> logits [F, V]
    fp32. Medusa heads (``d`` None): hidden [B, H] -> logits [K, B, V] fp32. ``weight``: the projection (the base
    lm_head restricted to the head vocabulary) for the shared layout, else None (the heads' own)."""

    def __init__(self, heads, weight: torch.Tensor | None, d: int | None):
        super().__init__()
        self.heads, self.d = heads, d
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, hidden, path_emb=None):
        if self.weight is None:  # the heads' own projections
            out = (
                self.heads(hidden)
                if self.d is None
                else self.heads.head_logits(self.d, hidden, None, path_emb)
            )
            return out.float()
        if self.d is None:
            feats = self.heads.features(hidden)  # [K, B, H]
        else:
            feats = self.heads.head_features(self.d, hidden, path_emb)  # [F, H]
        return nn.functional.linear(feats.to(self.weight.dtype), self.weight).float()


def _shapes(heads) -> list[tuple[int | None, int]]:
    """(depth, rows) of every compiled call: Medusa heads one call on one row; sequential heads one per depth."""
    if not heads.sequential:
        return [(None, 1)]
    return [(0, 1)] + [(d, HEAD_ROWS) for d in range(1, heads.num_heads)]


class CompiledHeads:
    """Loaded heads whose drafting calls run compiled where a graph fits (see the module docstring).
    ``backend``: ``aoti`` (packages on disk, built once) or ``inductor`` (torch.compile in process, for tests).
    ``build``: False loads the packages that exist and leaves the other shapes eager (``--engine auto``)."""

    def __init__(self, heads, model, backend: str = "aoti", autotune: bool = True, folder: str | None = None,
                 build: bool = True, verbose: bool = False):  # fmt: skip
        from .single import BACKENDS, EngineError

        if backend not in BACKENDS:
            raise EngineError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.heads = heads
        p = next(model.parameters())
        self.device, self.dtype, self.hidden_size = p.device, p.dtype, heads.config.hidden_size
        weight = None
        if heads.lm_heads is None:  # shared layout: the base projection, sliced to the head vocabulary once
            weight = heads._shared_weight(model.get_output_embeddings()).detach()
        self.folder = folder or heads_folder(model, heads, autotune)
        self.steps: dict[tuple[int | None, int], object] = {}
        for d, rows in _shapes(heads):
            module = _HeadStep(heads, weight, d).eval()
            if backend == "inductor":
                self.steps[d, rows] = torch.compile(module, fullgraph=True, dynamic=False)
                continue
            path = os.path.join(self.folder, f"heads-{'all' if d is None else d}-{rows}.pt2")
            if not os.path.exists(path):
                if not build:
                    continue
                _build(module, self._example(d, rows), path, autotune, verbose)
            from torch._inductor import aoti_load_package

            self.steps[d, rows] = aoti_load_package(path)

    def __getattr__(self, name):  # config, num_heads, sequential, to_full_vocab, ...: the wrapped heads'
        if name == "heads":
            raise AttributeError(name)
        return getattr(self.heads, name)

    @property
    def compiled(self) -> int:
        """How many drafting shapes run compiled."""
        return len(self.steps)

    def _example(self, d: int | None, rows: int):
        h = torch.zeros(rows, self.hidden_size, dtype=self.dtype, device=self.device)
        if d is None:
            return (h,)
        return (h, torch.zeros(rows, d + 1, self.hidden_size, dtype=self.dtype, device=self.device))

    def _run(self, d, hidden, path_emb=None):
        """The compiled call whose rows fit, padded (rows repeat the first) and cut back; None: none fits."""
        F = hidden.shape[0]
        fits = [rows for (dd, rows) in self.steps if dd == d and rows >= F]
        if not fits or hidden.dim() != 2 or hidden.dtype != self.dtype:
            return None
        rows = min(fits)
        args = [hidden] if path_emb is None else [hidden, path_emb.to(self.dtype)]
        if rows > F:
            args = [torch.cat([a, a[:1].expand(rows - F, *a.shape[1:])]) for a in args]
        out = self.steps[d, rows](*args)
        return out[:F] if d is not None else out[:, :F]

    @torch.no_grad()
    def head_logits(self, k: int, hidden, lm_head=None, path_emb=None) -> torch.Tensor:
        """As :meth:`MedusaHeads.head_logits`: hidden [F, H] (+ path_emb [F, k+1, H]) -> logits [F, V_head]."""
        out = self._run(k, hidden, path_emb) if self.heads.sequential else None
        return out if out is not None else self.heads.head_logits(k, hidden, lm_head, path_emb)

    @torch.no_grad()
    def __call__(self, hidden, lm_head=None, path_emb=None) -> torch.Tensor:
        """As :meth:`MedusaHeads.forward`: hidden [B, H] -> logits [K, B, V_head] (Medusa heads)."""
        out = None if self.heads.sequential or path_emb is not None else self._run(None, hidden)
        return out if out is not None else self.heads(hidden, lm_head, path_emb)


def heads_folder(model, heads, autotune: bool) -> str:
    """Where these heads' compiled calls live: keyed by the base model's engine key and both sets of weights."""
    from .single import _digest, package_folder, weights_fingerprint

    base = os.path.basename(package_folder(model, autotune))
    key = {
        "base": base,
        "heads": weights_fingerprint(heads),
        "config": heads.config.to_dict(),
        "rows": HEAD_ROWS,
    }
    return os.path.join(os.path.dirname(package_folder(model, autotune)), f"heads-{_digest(key)}")


def _build(module, example, path: str, autotune: bool, verbose: bool) -> None:
    """torch.export one drafting call (static shapes) and compile it with AOTInductor into ``path``."""
    import time

    from torch._inductor import aoti_compile_and_package

    t0 = time.perf_counter()
    with torch.no_grad():
        program = torch.export.export(module, example, strict=False)
    options = {"freezing": True}
    if autotune:
        options |= {"max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN"}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path[:-4]}.{os.getpid()}.tmp.pt2"
    aoti_compile_and_package(program, package_path=tmp, inductor_configs=options)
    os.replace(tmp, path)
    if verbose:
        print(f"engine: {os.path.basename(path)} compiled in {time.perf_counter() - t0:.0f} s", flush=True)


def compile_heads(heads, model, engine, build: bool, verbose: bool = False, **options):
    """Heads for ``engine``: wrapped in :class:`CompiledHeads` when the engine is compiled (``build``: compile
    the missing calls; False: use the packages that exist), else as they are -> (heads, one-line reason).
    A compiler failure keeps the eager heads and says why."""
    if heads is None or getattr(engine, "name", "eager") != "compiled":
        return heads, "heads eager (eager engine)"
    options.setdefault("backend", getattr(engine, "backend", "aoti"))
    try:
        wrapped = CompiledHeads(heads, model, build=build, verbose=verbose, **options)
    except Exception as e:  # noqa: BLE001 - any compiler failure means eager heads, said once
        from .single import failure_line

        return heads, f"heads eager: compiling failed ({failure_line(e)})"
    if not wrapped.compiled:
        return heads, "heads eager: not compiled here yet (once: --engine compiled)"
    return wrapped, f"heads compiled ({wrapped.compiled} drafting shapes)"
