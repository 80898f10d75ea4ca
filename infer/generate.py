"""Generate with Medusa heads and tree attention: ``python -m infer.generate --help``.

Examples:
    python -m infer.generate --prompt "Explain tree attention." --compare
    python -m infer.generate --model HuggingFaceTB/SmolLM2-135M-Instruct --heads ./outputs/smollm2-135m/final \\
        --tree dynamic --node-budget 32 --top-m 8 --dtype bfloat16 --prompt-file data/mt_bench_questions.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from .cli import fail
from .decode.single import ACCEPTANCE, DRAFTERS, TREES, DecodeConfig, DecodeResult
from .draft.calibration import CalibrationError
from .draft.heads import HeadsError
from .engine.single import ENGINES
from .model.base import DEFAULT_MODEL, BaseModelError
from .pipeline import PipelineError, deterministic_dtype, load_pipeline, read_prompts, result_summary


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m infer.generate",
        description="Decode with Medusa heads and static or dynamic tree attention; greedy output is the base "
        "model's own greedy output, token for token.",
    )
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="base model: Hub id or local folder (default: the embedded SmolLM2-135M-Instruct)",
    )
    p.add_argument("--revision", default=None, help="base model revision")
    p.add_argument(
        "--heads",
        default=None,
        help="heads: local folder or Hub id (default: the shipped heads of the default model)",
    )
    p.add_argument("--heads-revision", default=None, help="heads revision on the Hub")
    p.add_argument(
        "--trust-remote-code", action="store_true", help="allow custom modeling code from the model repo"
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--prompt", default=None, help="one prompt")
    src.add_argument(
        "--prompt-file",
        default=None,
        help="plain text (one prompt a line) or JSONL with 'turns' (MT-Bench) or 'prompt'",
    )
    p.add_argument("--limit", type=int, default=None, help="use only the first N prompts of --prompt-file")
    p.add_argument(
        "--tree",
        choices=TREES,
        default="dynamic",
        help="dynamic (n best paths each step), static (medusa_choices) or none (plain decoding)",
    )
    p.add_argument(
        "--node-budget",
        default="auto",
        help="n: candidate nodes of the dynamic tree, or 'auto': each step the n <= --max-nodes with the best expected tokens/s from a measured (cached) latency profile",
    )
    p.add_argument(
        "--max-nodes",
        type=int,
        default=32,
        help="upper bound of the auto node budget (default 32: on CPUs the best trees have ~8 nodes)",
    )
    p.add_argument("--top-m", type=int, default=8, help="m: candidates taken from each head")
    p.add_argument("--depth", type=int, default=None, help="heads used (tree depth); default all")
    p.add_argument(
        "--medusa-choices",
        default=None,
        help="static tree as JSON list of rank paths, e.g. '[[0],[1],[0,0]]'",
    )
    p.add_argument(
        "--calibration",
        default="auto",
        help="calibration.json for the heads' probabilities: 'auto' (the heads folder's, if any), 'none', or a path",
    )
    p.add_argument(
        "--acceptance",
        choices=ACCEPTANCE,
        default=None,
        help="greedy (lossless), typical (Medusa) or sample (lossless sampling); default greedy, or sample when --temperature > 0",
    )
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (0 = greedy)")
    p.add_argument("--posterior-threshold", type=float, default=0.09, help="typical acceptance epsilon")
    p.add_argument("--posterior-alpha", type=float, default=0.3, help="typical acceptance alpha")
    p.add_argument("--max-new-tokens", type=int, default=256, help="new tokens at most, per turn")
    p.add_argument(
        "--dtype",
        choices=["auto", "float32", "bfloat16", "float16"],
        default="auto",
        help="model and heads dtype; auto: the faster on this machine, measured once and cached (GPUs: bf16)",
    )
    p.add_argument(
        "--deterministic",
        action="store_true",
        help="greedy answers that depend only on the prompt, whatever engine and CPU: decodes in float32 (see README: "
        "what lossless means in each dtype); ~4x slower than bf16 on this CPU. In bf16 the compiled engine with our "
        "kernels (AVX512-BF16 CPUs) is already batch invariant (README)",
    )
    p.add_argument(
        "--remeasure", action="store_true", help="measure the auto budget's verify-latency prior again"
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    p.add_argument(
        "--drafters",
        "--drafter",
        dest="drafter",
        choices=DRAFTERS,
        default="heads,context",
        help="who proposes the tree: the heads, the context (prompt lookup: the continuation of the "
        "current suffix's last occurrence in the prompt and the answer so far, as a chain; no heads needed), or "
        "heads,context (default: one tree over both, ranked by calibrated acceptance probabilities)",
    )
    p.add_argument(
        "--engine",
        choices=ENGINES,
        default="auto",
        help="who runs the model's steps: compiled (preallocated cache, fixed-shape steps compiled ahead of time: "
        "minutes the first time, cached), eager (transformers as is), or auto: compiled where a build here "
        "measured it faster, else eager",
    )
    p.add_argument("--no-chat-template", action="store_true", help="feed the prompt as raw text")
    p.add_argument("--system", default=None, help="system message for the chat template")
    p.add_argument(
        "--compare",
        action="store_true",
        help="also run transformers' generate (greedy), its prompt lookup decoding and our plain decoding on the "
        "same prompt (same dtype): speedups and identity",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed for sampling")
    p.add_argument("--quiet", action="store_true", help="do not stream text, print only the statistics")
    p.add_argument("--json", action="store_true", help="print one JSON line of statistics per prompt")
    return p


class Streamer:
    """Print decoded text as tokens arrive (re-decodes the turn so far; cheap at these lengths)."""

    def __init__(self, tokenizer, enabled: bool):
        self.tokenizer, self.enabled, self.ids, self.printed = tokenizer, enabled, [], 0

    def __call__(self, new: list[int]) -> None:
        if not self.enabled:
            return
        self.ids.extend(new)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if not text.endswith("\ufffd"):  # wait for a whole multi-byte character
            sys.stdout.write(text[self.printed :])
            sys.stdout.flush()
            self.printed = len(text)


def stats_line(tag: str, r: DecodeResult) -> str:
    decode_time = r.time_total - r.time_prefill
    share = lambda t: 100 * t / max(decode_time, 1e-9)  # noqa: E731
    return (
        f"[{tag}] {len(r.tokens)} new tokens, {r.steps} steps, {r.tokens_per_step:.2f} tokens/step, "
        f"{r.tokens_per_second:.1f} tokens/s, tree building {1000 * r.time_tree:.1f} ms ({share(r.time_tree):.1f}%), "
        f"heads {1000 * r.time_heads:.1f} ms ({share(r.time_heads):.1f}%), prefill {1000 * r.time_prefill:.0f} ms"
    )


def decode_config(args, tree: str | None = None) -> DecodeConfig:
    acceptance = args.acceptance or ("sample" if args.temperature > 0 else "greedy")
    try:
        choices = json.loads(args.medusa_choices) if args.medusa_choices else None
    except json.JSONDecodeError as e:
        raise ValueError(
            f"--medusa-choices: not JSON ({e}); expected a list of rank paths, e.g. [[0],[1],[0,0]]"
        ) from None
    if choices is not None and not (
        isinstance(choices, list)
        and all(isinstance(c, list) and c and all(isinstance(r, int) for r in c) for c in choices)
    ):
        raise ValueError(
            "--medusa-choices: expected a JSON list of non-empty lists of ranks, e.g. [[0],[1],[0,0]]"
        )
    auto = str(args.node_budget) == "auto"
    if not auto and not str(args.node_budget).isdigit():
        raise ValueError(f"--node-budget must be a positive integer or 'auto', got {args.node_budget!r}")
    return DecodeConfig(
        tree=tree or args.tree,
        node_budget=args.max_nodes if auto else int(args.node_budget),
        top_m=args.top_m,
        depth=args.depth,
        medusa_choices=choices,
        acceptance=acceptance,
        temperature=args.temperature,
        drafter=args.drafter,
        posterior_threshold=args.posterior_threshold,
        posterior_alpha=args.posterior_alpha,
        max_new_tokens=args.max_new_tokens,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (PipelineError, BaseModelError, HeadsError, CalibrationError, ValueError) as e:
        fail(f"error: {e}")


def run(args) -> int:
    if args.prompt is not None and not args.prompt.strip():
        raise PipelineError("empty prompt")
    cfg = decode_config(args)
    pipe = load_pipeline(
        args.model,
        args.heads,
        dtype=deterministic_dtype(args.dtype, args.deterministic),
        device=args.device,
        revision=args.revision,
        heads_revision=args.heads_revision,
        trust_remote_code=args.trust_remote_code,
        calibration=args.calibration,
        config=cfg,
        auto_budget=str(args.node_budget) == "auto",
        max_nodes=args.max_nodes,
        remeasure=args.remeasure,
        verbose=not args.json,
        engine=args.engine,
    )
    cfg = pipe.config  # with the calibration, latency profile and context statistics the pipeline attached
    model, tokenizer, heads = pipe.model, pipe.tokenizer, pipe.heads
    if args.prompt is not None:
        convs = [[args.prompt]]
    elif args.prompt_file is not None:
        convs = read_prompts(args.prompt_file, args.limit)
    else:
        convs = None  # interactive
    generator = torch.Generator(device=args.device).manual_seed(args.seed)

    mode = "medusa" if heads is not None else ("context" if cfg.context else "plain")

    def run_turn(messages: list[dict], where: dict | None = None) -> str:
        ids = pipe.encode(messages, not args.no_chat_template)
        streamer = Streamer(tokenizer, not (args.quiet or args.json))
        out = pipe.generate(ids, cfg, on_tokens=streamer, generator=generator)
        if streamer.enabled:
            print()
        record = {**(where or {}), "prompt_tokens": ids.shape[1], "engine": pipe.engine.name}
        record |= result_summary(out, mode)
        if args.compare and mode != "plain":
            from .decode.baselines import run_baseline

            torch.manual_seed(args.seed)
            base = pipe.generate(ids, decode_config(args, tree="none"), generator=generator)
            record.update(result_summary(base, "plain"))
            # tokens/s ratio: in bf16 the two outputs may differ in length
            record["speedup"] = out.tokens_per_second / max(base.tokens_per_second, 1e-9)
            record["identical"] = base.tokens == out.tokens
            others = {}
            if cfg.acceptance == "greedy":  # transformers' own greedy decoding, and its prompt lookup
                for name in ("hf-generate", "hf-prompt-lookup"):
                    others[name] = run_baseline(name, model, ids, args.max_new_tokens, pipe.eos)
                    tag = name.replace("-", "_")
                    record[f"{tag}_tokens_per_s"] = round(others[name].tokens_per_second, 2)
                    record[f"speedup_vs_{tag}"] = round(
                        out.tokens_per_second / max(others[name].tokens_per_second, 1e-9), 3
                    )
        if args.json:
            print(json.dumps(record))
        else:
            print(stats_line(cfg.tree if heads is not None else mode, out))
            if "speedup" in record:
                print(stats_line("plain", base))
                same = (
                    "identical"
                    if record["identical"]
                    else "different"
                    + (
                        " (sampling)"
                        if cfg.acceptance != "greedy"
                        else f" ({str(model.dtype).replace('torch.', '')} rounding: the batched tree pass and one-token steps round differently, so "
                        "near-ties can flip; in float32 greedy outputs are identical)"
                    )
                )
                dt = str(model.dtype).replace("torch.", "")
                for name, r in others.items():
                    print(f"[{name}] {len(r.tokens)} new tokens, {r.tokens_per_second:.1f} tokens/s")
                if others:
                    print(
                        f"[compare] speedup {record['speedup_vs_hf_generate']:.2f}x over transformers' generate, "
                        f"{record['speedup']:.2f}x over our plain loop, prompt lookup decoding "
                        f"{others['hf-prompt-lookup'].tokens_per_second / max(others['hf-generate'].tokens_per_second, 1e-9):.2f}x "
                        f"({dt}); outputs {same}"
                    )
                else:
                    print(
                        f"[compare] speedup {record['speedup']:.2f}x over plain decoding ({dt}); outputs {same}"
                    )
        return tokenizer.decode(out.tokens, skip_special_tokens=True)

    base_messages = [{"role": "system", "content": args.system}] if args.system else []
    if convs is None:
        print("Interactive mode: type a prompt, an empty line or Ctrl-D to quit.", file=sys.stderr)
        messages = list(base_messages)
        while True:
            try:
                text = input(">>> ")
            except EOFError:
                break
            if not text.strip():
                break
            messages.append({"role": "user", "content": text})
            messages.append({"role": "assistant", "content": run_turn(messages)})
        return 0
    for index, turns in enumerate(convs):
        messages = list(base_messages)
        for turn_no, turn in enumerate(turns):
            messages.append({"role": "user", "content": turn})
            if not (args.quiet or args.json):
                print(f">>> {turn}")
            where = {"prompt_index": index, "turn": turn_no}
            messages.append({"role": "assistant", "content": run_turn(messages, where)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
