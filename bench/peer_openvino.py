"""OpenVINO GenAI on the same token ids as our benchmark: run with the peer's own Python (its own venv, never the
project's), driven by ``python -m infer.bench --peer-openvino FOLDER``: it reads one prompt a line on stdin (a JSON
list of token ids) and answers one JSON line each, so the benchmark interleaves it with our modes prompt by prompt.

    echo '[1, 2, 3]' | peers/ov/bin/python bench/peer_openvino.py --model peers/ov-fp16 --max-new-tokens 128 \\
        [--prompt-lookup] [--threads 2]

Install and export (see README, "Peers"):
    python3 -m venv peers/ov && peers/ov/bin/pip install torch==2.13.0 openvino-genai "optimum-intel[openvino]"
    peers/ov/bin/optimum-cli export openvino --model <SmolLM2 folder> --task text-generation-with-past \\
        --weight-format fp16 peers/ov-fp16

Greedy, EOS ignored (``ignore_eos``), exactly ``max_new_tokens`` tokens; prompt lookup: 4 candidate tokens from
3-grams (the settings OpenVINO's own sample uses). Timing: OpenVINO's perf metrics (TTFT, TPOT), so decode tokens/s
excludes the prompt, like ours. A line holding a list of prompts (``infer.bench_batch --peer-openvino``) is one
batch: left-padded, decoded together, stopping at EOS like ours, timed whole (prefill included).
"""

import argparse
import json
import sys
import time


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True, help="an OpenVINO IR folder exported by optimum-cli")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--prompt-lookup", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    import numpy as np
    import openvino as ov
    import openvino_genai as og

    opts = {"INFERENCE_NUM_THREADS": args.threads}
    if args.prompt_lookup:
        opts["prompt_lookup"] = True
    pipe = og.LLMPipeline(args.model, "CPU", **opts)
    cfg = og.GenerationConfig()
    cfg.max_new_tokens, cfg.min_new_tokens = args.max_new_tokens, args.max_new_tokens
    cfg.do_sample, cfg.ignore_eos = False, True
    if args.prompt_lookup:
        cfg.num_assistant_tokens, cfg.max_ngram_size = 4, 3
    print(json.dumps({"openvino_genai": og.__version__, "openvino": ov.__version__}), flush=True)
    batched = og.GenerationConfig()  # a batch stops at EOS, like ours
    batched.max_new_tokens, batched.do_sample = args.max_new_tokens, False
    eos = pipe.get_generation_config().eos_token_id
    for line in sys.stdin:
        ids = json.loads(line)
        if ids and isinstance(ids[0], list):  # a batch (infer.bench_batch): all at once, prefill included
            width = max(len(p) for p in ids)
            arr = np.zeros((len(ids), width), dtype=np.int64)
            mask = np.zeros((len(ids), width), dtype=np.int64)
            for b, p in enumerate(ids):
                arr[b, width - len(p) :], mask[b, width - len(p) :] = p, 1
            t0 = time.perf_counter()
            out = pipe.generate(og.TokenizedInputs(ov.Tensor(arr), ov.Tensor(mask)), batched)
            wall = time.perf_counter() - t0
            tokens = []
            for row in out.tokens:
                row = [int(x) for x in row]
                stop = next((i for i, x in enumerate(row) if x == eos), None)
                tokens.append(row if stop is None else row[: stop + 1])
            print(json.dumps({"tokens": tokens, "time_total": wall}), flush=True)
            continue
        t = ov.Tensor(np.array([ids], dtype=np.int64))
        mask = ov.Tensor(np.ones((1, len(ids)), dtype=np.int64))
        t0 = time.perf_counter()
        out = pipe.generate(og.TokenizedInputs(t, mask), cfg)
        wall = time.perf_counter() - t0
        tokens = [int(x) for x in out.tokens[0]]
        m = out.perf_metrics
        ttft = m.get_ttft().mean / 1000.0
        print(json.dumps({"tokens": tokens, "time_total": wall, "time_prefill": ttft}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
