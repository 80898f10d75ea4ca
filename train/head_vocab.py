"""Cheap heads: restrict the heads' candidates to the most frequent tokens of the training data.

    python -m train.head_vocab HEADS --data data/smollm2/distilled.jsonl --split train --size 8192 --out HEADS_8K

The heads' vocabulary projection (K x V x H per step) is the costliest part of drafting on a CPU: on SmolLM2 it
is 4 x 49,152 x 576 multiply-adds per step. With a reduced head vocabulary (FR-Spec, arXiv 2502.14856) the heads
score only the ``size`` most frequent assistant tokens; verification still uses the full lm_head, so greedy output
is unchanged, and only tokens outside the subset can no longer be drafted. Prints the coverage (share of
assistant tokens inside the subset) for several sizes so that the size is picked from numbers.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections import Counter

import torch

from infer.draft.heads import MedusaHeads

SIZES = (2048, 4096, 8192, 16384, 32768)


def token_counts(
    tokenizer, records: list[dict], max_length: int = 2048, template: str | None = None
) -> Counter:
    """Frequencies of the labelled (assistant) tokens of normalised conversation records."""
    from data.chat import tokenize_messages

    counts: Counter = Counter()
    for rec in records:
        ex = tokenize_messages(tokenizer, rec["messages"], max_length=max_length, template=template)
        counts.update(t for t, y in zip(ex["input_ids"], ex["labels"]) if y != -100)
    return counts


def choose_vocab(counts: Counter, size: int, always: set[int] = frozenset()) -> list[int]:
    """The ``size`` most frequent tokens, plus ``always`` (e.g. end-of-turn tokens), sorted by id."""
    if size < 1:
        raise ValueError("size must be >= 1")
    chosen = set(always)
    for tok, _ in counts.most_common():
        if len(chosen) >= size:
            break
        chosen.add(tok)
    return sorted(chosen)


def coverage(counts: Counter, vocab: list[int]) -> float:
    total = sum(counts.values())
    keep = set(vocab)
    return sum(c for t, c in counts.items() if t in keep) / max(1, total)


def load_records(path: str, split: str) -> list[dict]:
    """Conversations of ``path``; records tagged with another split (calib, eval) are left out."""
    from data.conversations import load_conversations

    return load_conversations(path, split=split)[0]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.head_vocab", description=__doc__.split("\n\n")[1])
    p.add_argument("heads", help="heads folder")
    p.add_argument(
        "--data", required=True, help="training conversations (JSON/JSONL), the heads' own training data"
    )
    p.add_argument(
        "--split", default="train", help="records tagged with this split only (untagged records always count)"
    )
    p.add_argument("--size", type=int, default=8192, help="tokens kept in the head vocabulary")
    p.add_argument("--model", default=None, help="tokenizer source (default: the heads' base model)")
    p.add_argument("--out", default=None, help="output heads folder (default: HEADS-v{size})")
    args = p.parse_args(argv)

    from infer.model.base import load_base_model

    out = args.out or f"{args.heads.rstrip('/')}-v{args.size}"
    if os.path.exists(out) and os.path.samefile(out, args.heads):  # before anything is written
        p.error("--out is the input heads folder: write the restricted copy to a new folder")
    heads = MedusaHeads.from_pretrained(args.heads)
    _, tokenizer = load_base_model(args.model or heads.config.base_model_name_or_path or None)
    counts = token_counts(tokenizer, load_records(args.data, args.split))
    always = {tokenizer.eos_token_id} - {None}
    print(f"{sum(counts.values())} assistant tokens, {len(counts)} distinct")
    for size in SIZES:
        print(f"  size {size:>6}: coverage {100 * coverage(counts, choose_vocab(counts, size, always)):.2f}%")
    vocab = choose_vocab(counts, args.size, always)
    heads.config.head_vocab = vocab
    heads.head_vocab = torch.tensor(vocab, dtype=torch.long)
    heads.save_pretrained(out)
    for extra in ("calibration.json", "recipe.yaml", "metrics.json"):
        src = os.path.join(args.heads, extra)
        if (
            os.path.exists(src) and extra != "calibration.json"
        ):  # calibration must be refitted on the new vocab
            shutil.copy(src, os.path.join(out, extra))
    print(f"wrote {out}: head vocabulary {len(vocab)} tokens, coverage {100 * coverage(counts, vocab):.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
