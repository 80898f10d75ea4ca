"""The distillation prompt set: size, variety, determinism, the MT-Bench guard, and the committed file."""

from __future__ import annotations

import json
import os
import random

import pytest

from data import prompts
from data.prompts import (
    CATEGORIES,
    OverlapError,
    build_prompts,
    check_no_overlap,
    find_overlaps,
    load_mt_bench,
)

COMMITTED = os.path.join(os.path.dirname(prompts.__file__), "smollm2", "prompts.jsonl")


@pytest.fixture(scope="module")
def records():
    return build_prompts()


def test_size_ids_and_uniqueness(records):
    assert len(records) >= 3000
    assert len({r["id"] for r in records}) == len(records)
    firsts = {" ".join(prompts.words(r["turns"][0])) for r in records}
    assert len(firsts) == len(records), "duplicate first turns"
    assert all(r["id"] == f"p{i:05d}" for i, r in enumerate(records, start=1))
    assert all(t.strip() and len(t) < 600 for r in records for t in r["turns"])


def test_categories_multi_turn_and_splits(records):
    by_category = {c: sum(r["category"] == c for r in records) for c in CATEGORIES}
    assert set(r["category"] for r in records) == set(CATEGORIES)
    assert min(by_category.values()) >= 300
    multi = sum(len(r["turns"]) == 2 for r in records) / len(records)
    assert 0.15 < multi < 0.25
    assert {len(r["turns"]) for r in records} == {1, 2}
    share = {s: sum(r["split"] == s for r in records) / len(records) for s in ("train", "calib", "eval")}
    assert 0.86 < share["train"] < 0.94 and 0.03 < share["calib"] < 0.07 and 0.03 < share["eval"] < 0.07
    assert all(r["split"] == prompts.split_of(r["id"]) for r in records)


def test_build_is_deterministic(records):
    assert build_prompts() == records
    assert build_prompts(seed=1, per_category=50) != build_prompts(seed=2, per_category=50)


def test_no_mt_bench_overlap(records):
    check_no_overlap(records)  # raises when any prompt overlaps
    assert find_overlaps(records, load_mt_bench()) == []


def test_overlap_check_fires_on_injected_questions(records):
    mt = load_mt_bench()
    rng = random.Random(0)
    for turn in rng.sample(mt, 5):
        for text in (turn, f"Hey, quick one. {turn.upper()} Thanks!"):  # exact, and inside a longer prompt
            bad = records[:50] + [{"id": "bad", "turns": ["Hello there.", text]}]
            assert [rid for rid, _ in find_overlaps(bad, mt)] == ["bad"]
            with pytest.raises(OverlapError, match="bad"):
                check_no_overlap(bad)
    eight_words = " ".join(prompts.words(mt[0])[:8])  # a single shared 8-word run is enough
    assert find_overlaps([{"id": "x", "turns": [f"Please {eight_words} now."]}], mt)
    seven_words = " ".join(prompts.words(mt[0])[:7])
    assert not find_overlaps([{"id": "x", "turns": [f"Please {seven_words} now."]}], mt)


def test_build_fails_loudly_when_a_prompt_is_an_evaluation_question(tmp_path, records):
    fake = tmp_path / "mt.jsonl"
    fake.write_text(json.dumps({"question_id": 1, "category": "x", "turns": [records[0]["turns"][0]]}) + "\n")
    with pytest.raises(OverlapError):
        build_prompts(mt_bench_path=str(fake))


def test_committed_file_matches_the_builder(records):
    with open(COMMITTED, encoding="utf-8") as f:
        committed = f.read()
    assert committed == prompts.render(records), (
        "regenerate: python -m data.prompts --out data/smollm2/prompts.jsonl"
    )
    assert len(committed.encode()) < 1_500_000


def test_expand_fills_slots():
    rng = random.Random(0)
    slots = {"x": ["a", "b", "c"]}
    for _ in range(20):
        one, two, again = prompts.expand("{x} {x2} {x}", rng, slots).split()
        assert one != two and one == again
    assert prompts.expand("[hi|hi] {x}", rng, {"x": ["y"]}) == "hi y"
    with pytest.raises(KeyError, match="unknown slot"):
        prompts.expand("{nope}", rng, slots)


def test_cli_writes_the_file(tmp_path):
    out = tmp_path / "p.jsonl"
    prompts.main(["--out", str(out), "--per-category", "20", "--seed", "3"])
    lines = out.read_text().splitlines()
    assert len(lines) == 20 * len(CATEGORIES)
    assert set(json.loads(lines[0])) == {"id", "split", "category", "turns"}
