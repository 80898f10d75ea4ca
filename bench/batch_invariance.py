"""The same request, the same answer: greedy decoding of MT-Bench prompts alone (plain, one row) against the same
prompts decoded in batches of 2, 4 and 8 (prefilled together, verified in steps of several rows), with and without
trees (the auto budget), on the pipeline's engine. Prints how many rows returned exactly their solo plain text.

    python bench/batch_invariance.py [--engine compiled] [--max-new-tokens 96] [--num-prompts 8]

Batch invariant in bf16 where our kernels run every compiled step (README: batch invariance); on the eager engine or
with MEDUSA_KERNELS=0 rows may differ. Not part of the tests (the tests check the same on a tiny model).
"""

from __future__ import annotations

import argparse
import os


def main() -> None:
    from infer.bench import read_prompts
    from infer.bench_batch import ours_batched
    from infer.cli import fail
    from infer.draft.budget import BatchLatency
    from infer.pipeline import PipelineError, load_pipeline

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engine", default="compiled", choices=["auto", "compiled", "eager"])
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--num-prompts", type=int, default=8)
    args = p.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        pipe = load_pipeline(dtype="auto", engine=args.engine)
        engine = pipe.batch_engine()
    except PipelineError as e:
        fail(f"error: {e}")
    convs = read_prompts(os.path.join(root, "data", "mt_bench_questions.jsonl"), args.num_prompts + 1)
    prompts = [pipe.encode([{"role": "user", "content": c[0]}]) for c in convs[1:]]
    latency = BatchLatency(pipe.model, pipe.heads, pipe.device, pipe.config.latency, engine=engine)

    def run(group, trees):  # -> each row's tokens, every step's accepted length
        return ours_batched(pipe, group, args.max_new_tokens, trees, latency)

    alone = [run([q], False)[0][0] for q in prompts]
    print(
        f"# {pipe.dtype}, engine {pipe.batch_engine_reason}, {len(prompts)} prompts, {args.max_new_tokens} tokens"
    )
    for trees in (False, True):
        for B in (1, 2, 4, 8):
            if B == 1 and not trees:
                continue  # the reference itself
            out, steps = [], []
            for i in range(0, len(prompts), B):
                tokens, acc = run(prompts[i : i + B], trees)
                out, steps = out + tokens, steps + acc
            same = sum(a == b for a, b in zip(out, alone))
            print(f"{'trees' if trees else 'plain'} B={B}: {same}/{len(prompts)} rows identical to plain alone "
                  f"(tokens/step {sum(steps) / len(steps):.3f})")  # fmt: skip


if __name__ == "__main__":
    main()
