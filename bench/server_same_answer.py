"""A live server's greedy answers, the same request sent one after another (twice), 8 at once, and 8 at once
streaming: how many came back with the same text. Start the server first, e.g.

    python -m infer.serve --engine compiled --port 8011 &
    python bench/server_same_answer.py --base-url http://127.0.0.1:8011/v1

Batch invariant in bf16 where our kernels run the compiled steps (README: batch invariance). Needs the `openai`
client (the dev extra). Not part of the tests (tests/infer/engine/test_kernels.py checks the engine underneath).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os


def main() -> None:
    from openai import OpenAI

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base-url", default="http://127.0.0.1:8011/v1")
    p.add_argument("--num-prompts", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=64)
    args = p.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "data", "mt_bench_questions.jsonl")) as f:
        questions = [json.loads(line)["turns"][0] for line in f][1 : args.num_prompts + 1]
    client = OpenAI(base_url=args.base_url, api_key="none")
    model = client.models.list().data[0].id

    def ask(q: str, stream: bool = False) -> str:
        kw = dict(
            model=model, messages=[{"role": "user", "content": q}], temperature=0, max_tokens=args.max_tokens
        )
        if stream:
            chunks = client.chat.completions.create(**kw, stream=True)
            return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return client.chat.completions.create(**kw).choices[0].message.content

    first = [ask(q) for q in questions]
    again = [ask(q) for q in questions]
    with concurrent.futures.ThreadPoolExecutor(len(questions)) as pool:
        together = list(pool.map(ask, questions))
        streamed = list(pool.map(lambda q: ask(q, True), questions))
    n = len(questions)
    for name, answers in (
        ("sent again", again),
        (f"{n} at once", together),
        (f"{n} at once, streaming", streamed),
    ):
        print(f"{name}: {sum(a == b for a, b in zip(first, answers))}/{n} the same as sent alone")


if __name__ == "__main__":
    main()
