"""Benchmark: plain vs static-tree vs dynamic-tree decoding, side by side in one run.

    python -m infer.bench                          # embedded SmolLM2 + shipped heads, MT-Bench questions
    python -m infer.bench --limit 10 --dtype float32 bfloat16 --max-new-tokens 128 --out bench.jsonl

For every prompt, every mode runs on the same prompt one after the other (so machine noise hits all modes alike).
Prints one JSON line per prompt and dtype, then a table per dtype: tokens/step, tokens/s, speedup over plain in the
same dtype, tree-building and heads share of decode time, predicted tokens/step, and greedy identity with plain.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from .base import DEFAULT_MODEL, load_base_model
from .decode import DecodeConfig, DecodeResult, generate
from .generate import SHIPPED_HEADS, encode, read_prompts
from .heads import MedusaHeads

DEFAULT_PROMPTS = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "mt_bench_questions.jsonl"
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m infer.bench", description=__doc__.split("\n")[0])
    p.add_argument(
        "--model", default=DEFAULT_MODEL, help="base model (default: embedded SmolLM2-135M-Instruct)"
    )
    p.add_argument("--heads", default=None, help="heads folder or Hub id (default: the shipped heads)")
    p.add_argument(
        "--heads-label", default=None, help="how to describe the heads in the output (e.g. 'quick-fit')"
    )
    p.add_argument(
        "--prompts", default=DEFAULT_PROMPTS, help="prompt file (MT-Bench JSONL by default; first turns)"
    )
    p.add_argument("--limit", type=int, default=20, help="prompts used")
    p.add_argument("--max-new-tokens", type=int, default=128, help="new tokens per prompt")
    p.add_argument(
        "--dtype", nargs="+", default=["bfloat16"], help="dtypes to measure, e.g. float32 bfloat16"
    )
    p.add_argument(
        "--modes", nargs="+", default=["plain", "static", "dynamic"], help="modes, see --help text"
    )
    p.add_argument("--node-budget", type=int, default=32, help="dynamic tree nodes")
    p.add_argument("--top-m", type=int, default=8, help="dynamic tree: candidates per head")
    p.add_argument("--medusa-choices", default=None, help="static tree: JSON file or string of rank paths")
    p.add_argument("--warmup", type=int, default=1, help="prompts run first and not counted")
    p.add_argument("--out", default=None, help="also write the JSON lines to this file")
    return p.parse_args(argv)


def mode_config(mode: str, args) -> DecodeConfig:
    common = dict(max_new_tokens=args.max_new_tokens)
    if mode == "plain":
        return DecodeConfig(tree="none", **common)
    if mode == "static":
        choices = None
        if args.medusa_choices:
            text = (
                open(args.medusa_choices).read()
                if os.path.exists(args.medusa_choices)
                else args.medusa_choices
            )
            choices = [tuple(c) for c in json.loads(text)]
        return DecodeConfig(tree="static", medusa_choices=choices, **common)
    if mode == "dynamic":
        return DecodeConfig(tree="dynamic", node_budget=args.node_budget, top_m=args.top_m, **common)
    raise SystemExit(f"error: unknown mode {mode!r}")


class Totals:
    def __init__(self):
        self.tokens = self.steps = self.identical = self.runs = 0
        self.time = self.tree = self.heads = self.predicted = 0.0
        self.hist: dict[int, int] = {}

    def add(self, r: DecodeResult, same: bool):
        self.runs += 1
        self.tokens += len(r.tokens) - 1  # decode-step tokens (the prefill's token excluded)
        self.steps += r.steps
        self.time += r.time_total - r.time_prefill
        self.tree += r.time_tree
        self.heads += r.time_heads
        self.predicted += sum(r.predicted)
        self.identical += same
        for a in r.accept_lengths:
            self.hist[a] = self.hist.get(a, 0) + 1

    def row(self) -> dict:
        return {
            "tokens_per_step": self.tokens / max(1, self.steps),
            "tokens_per_s": self.tokens / max(1e-9, self.time),
            "tree_share": self.tree / max(1e-9, self.time),
            "heads_share": self.heads / max(1e-9, self.time),
            "predicted_tokens_per_step": self.predicted / self.steps if self.predicted else None,
            "identical": f"{self.identical}/{self.runs}",
            "accept_hist": dict(sorted(self.hist.items())),
        }


def main(argv=None) -> int:
    args = parse_args(argv)
    convs = read_prompts(args.prompts, args.limit + args.warmup)
    heads_path = args.heads or SHIPPED_HEADS.get(args.model)
    if heads_path is None:
        raise SystemExit("error: pass --heads")
    label = args.heads_label or heads_path
    out = open(args.out, "w") if args.out else None
    print(
        f"# bench: model {args.model}, heads {label}, {len(convs) - args.warmup} prompts from {args.prompts}, "
        f"{args.max_new_tokens} new tokens, torch threads {torch.get_num_threads()}",
        flush=True,
    )
    for dtype in args.dtype:
        model, tokenizer = load_base_model(args.model, dtype)
        heads = MedusaHeads.from_pretrained(heads_path)
        heads.check_base(model)
        heads.to(dtype=model.dtype).eval().requires_grad_(False)
        configs = {m: mode_config(m, args) for m in args.modes}
        totals = {m: Totals() for m in args.modes}
        for i, turns in enumerate(convs):
            ids = encode(
                tokenizer, [{"role": "user", "content": turns[0]}], tokenizer.chat_template is not None
            )
            results = {
                m: generate(model, ids, None if m == "plain" else heads, c) for m, c in configs.items()
            }
            if i < args.warmup:
                continue
            ref = results.get("plain")
            line = {"prompt": i - args.warmup, "dtype": dtype}
            for m, r in results.items():
                same = ref is None or r.tokens == ref.tokens
                totals[m].add(r, same)
                line[m] = {
                    "new_tokens": len(r.tokens),
                    "tokens_per_step": round(r.tokens_per_step, 3),
                    "tokens_per_s": round(r.tokens_per_second, 2),
                    "identical": same,
                }
            text = json.dumps(line)
            print(text, flush=True)
            if out:
                out.write(text + "\n")
        rows = {m: t.row() for m, t in totals.items()}
        base = rows.get("plain", {}).get("tokens_per_s")
        print(f"\n## {dtype}: {label}")
        print(
            f"{'mode':<10}{'tok/step':>9}{'pred':>7}{'tok/s':>8}{'speedup':>9}{'tree%':>7}{'heads%':>8}{'identical':>11}"
        )
        for m, r in rows.items():
            pred = f"{r['predicted_tokens_per_step']:.2f}" if r["predicted_tokens_per_step"] else "-"
            speed = f"{r['tokens_per_s'] / base:.2f}x" if base else "-"
            print(
                f"{m:<10}{r['tokens_per_step']:>9.2f}{pred:>7}{r['tokens_per_s']:>8.1f}{speed:>9}"
                f"{100 * r['tree_share']:>6.1f}%{100 * r['heads_share']:>7.1f}%{r['identical']:>11}"
            )
        summary = {"summary": dtype, "heads": label, "modes": rows}
        if out:
            out.write(json.dumps(summary) + "\n")
        print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
