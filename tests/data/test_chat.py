"""Chat templating, assistant-only labels, truncation, packing, collation and build_dataset caching."""

from __future__ import annotations

import copy
import itertools
import json
import logging
from pathlib import Path

import pytest
import torch

import data.chat as chat
from data.chat import (
    IGNORE_INDEX,
    build_dataset,
    collate,
    pack_examples,
    resolve_template,
    tokenize_messages,
)
from tests.tiny import tiny_tokenizer

REPO = Path(__file__).resolve().parents[2]
DUMMY = REPO / "data" / "fastchat_dummy_conversation.json"
VICUNA_SYSTEM = "A chat between a curious user and an artificial intelligence assistant."

MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris is the capital of France."},
    {"role": "user", "content": "And of Italy?"},
    {"role": "assistant", "content": "Rome.\nThe quick brown fox."},
]
ASSISTANT = [m["content"] for m in MESSAGES if m["role"] == "assistant"]
OTHERS = [m["content"] for m in MESSAGES if m["role"] != "assistant"]


def labelled_spans(tok, ex) -> list[str]:
    """Decoded text of each maximal run of labelled tokens."""
    assert len(ex["input_ids"]) == len(ex["labels"])
    runs = []
    for on, group in itertools.groupby(
        zip(ex["input_ids"], ex["labels"]), key=lambda p: p[1] != IGNORE_INDEX
    ):
        pairs = list(group)
        if on:
            assert all(i == lab for i, lab in pairs)  # labels are the token ids themselves
            runs.append(tok.decode([i for i, _ in pairs]))
    return runs


def untemplated_tokenizer(name: str = "tiny"):
    tok = copy.deepcopy(tiny_tokenizer())  # never modify the shared cached tokenizer
    tok.chat_template = None
    tok.name_or_path = name
    return tok


def write_jsonl(path: Path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def test_chatml_labels_are_exactly_assistant_turns_plus_end_of_turn():
    tok = tiny_tokenizer()
    ex = tokenize_messages(tok, MESSAGES)
    assert ex["input_ids"] == tok.apply_chat_template(MESSAGES, tokenize=True, return_dict=False)
    assert labelled_spans(tok, ex) == [a + "<|im_end|>" for a in ASSISTANT]


def test_vicuna_template_labels_and_format():
    tok = tiny_tokenizer()
    ex = tokenize_messages(tok, MESSAGES[1:], template="vicuna_v1.1")
    text = tok.decode(ex["input_ids"])
    assert text.startswith("<|endoftext|>" + VICUNA_SYSTEM)
    assert "questions. USER: What is the capital of France? ASSISTANT: Paris" in text
    assert "<|im_end|>USER: And of Italy? ASSISTANT: Rome." in text  # eos_token plays </s>
    runs = labelled_spans(tok, ex)
    assert [r.strip() for r in runs] == [a + "<|im_end|>" for a in ASSISTANT]
    unlabelled = tok.decode([i for i, lab in zip(ex["input_ids"], ex["labels"]) if lab == IGNORE_INDEX])
    assert VICUNA_SYSTEM in unlabelled and "ASSISTANT:" in unlabelled
    # a leading system message replaces the default system prompt
    ex = tokenize_messages(tok, MESSAGES, template="vicuna_v1.1")
    assert tok.decode(ex["input_ids"]).startswith("<|endoftext|>You are a helpful assistant. USER:")
    assert [r.strip() for r in labelled_spans(tok, ex)] == [a + "<|im_end|>" for a in ASSISTANT]


def test_template_resolution():
    assert resolve_template(untemplated_tokenizer("lmsys/vicuna-7b-v1.5")).startswith("{#- Vicuna v1.1")
    with pytest.raises(ValueError, match="has no chat template"):
        tokenize_messages(untemplated_tokenizer("my-base-model"), MESSAGES)
    with pytest.raises(ValueError, match="unknown chat template 'alpaca'"):
        resolve_template(tiny_tokenizer(), "alpaca")
    with pytest.raises(FileNotFoundError):
        resolve_template(tiny_tokenizer(), "nope/missing.jinja")
    with pytest.raises(ValueError, match="message 1 must be"):
        tokenize_messages(tiny_tokenizer(), [MESSAGES[0], {"role": "bot", "content": "x"}])


@pytest.mark.parametrize(
    "template",
    [
        # not prefix-stable: marks the last message, so prefixes do not match the full render
        "{% for m in messages %}{% if loop.last %}[LAST]{% endif %}<|im_start|>{{ m['role'] }}\n"
        "{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
        # no special end-of-turn token: plain-text separators
        "{% for m in messages %}### {{ m['role'] }}: {{ m['content'] }}\n\n{% endfor %}"
        "{% if add_generation_prompt %}### assistant: {% endif %}",
    ],
)
def test_generic_templates(template):
    tok = tiny_tokenizer()
    # the user turn repeats the assistant's answer, which must not be labelled
    messages = [{"role": "user", "content": "Rome."}, {"role": "assistant", "content": "Rome."}] + MESSAGES[
        1:
    ]
    runs = labelled_spans(tok, tokenize_messages(tok, messages, template=template))
    assert [r.replace("<|im_end|>", "").strip() for r in runs] == ["Rome."] + ASSISTANT
    assert "What is" not in "".join(runs) and "Italy" not in "".join(runs)


def test_slow_tokenizer_path_matches_offsets_path():
    class Slow:  # a tokenizer without offsets: forces the prefix-tokenising fallback
        is_fast = False

        def __init__(self, tok):
            self.tok = tok

        def __getattr__(self, name):
            return getattr(self.tok, name)

    tok = tiny_tokenizer()
    assert tokenize_messages(Slow(tok), MESSAGES) == tokenize_messages(tok, MESSAGES)


def test_truncation():
    tok = tiny_tokenizer()
    full = tokenize_messages(tok, MESSAGES)
    for n in (5, 40, len(full["input_ids"]) + 10):
        ex = tokenize_messages(tok, MESSAGES, max_length=n)
        assert len(ex["input_ids"]) == len(ex["labels"]) == min(n, len(full["input_ids"]))
        assert ex["input_ids"] == full["input_ids"][:n] and ex["labels"] == full["labels"][:n]


def test_a_huge_record_is_tokenised_only_as_far_as_max_length(monkeypatch):
    """A 5 MB turn: only a prefix of the text is tokenised (it took 2.6 GB tokenised whole), same result."""
    tok = tiny_tokenizer()
    words = " ".join(f"{w}{i % 97}" for i, w in zip(range(60_000), itertools.cycle(ASSISTANT[0].split())))
    huge = [{"role": "user", "content": "Say a lot."}, {"role": "assistant", "content": words}]
    full = tokenize_messages(tok, huge)  # the whole text, no max_length
    seen = []
    real = chat._ids_and_labels
    monkeypatch.setattr(
        chat, "_ids_and_labels", lambda t, text, spans: seen.append(len(text)) or real(t, text, spans)
    )
    for n in (3, 100, 2048):
        ex = tokenize_messages(tok, huge, max_length=n)
        assert ex["input_ids"] == full["input_ids"][:n] and ex["labels"] == full["labels"][:n]
    assert max(seen) < len(words) / 5
    huge[1]["content"] = "x" * 5_000_000
    seen.clear()
    assert len(tokenize_messages(tok, huge, max_length=2048)["input_ids"]) == 2048
    assert max(seen) <= 16 * 2048 * 4


def test_pack_examples():
    ids = [[1, 2, 3], [4, 5], [6, 7, 8, 9], [10] * 12]
    labels = [[1, 2, 3], [-100, 5], [6, 7, -100, 9], [10] * 12]
    out = pack_examples(ids, labels, max_length=6)
    assert out["input_ids"] == [[1, 2, 3, 4, 5], [6, 7, 8, 9], [10] * 6]
    assert out["position_ids"] == [[0, 1, 2, 0, 1], [0, 1, 2, 3], list(range(6))]
    assert out["labels"] == [[-100, 2, 3, -100, 5], [-100, 7, -100, 9], [-100] + [10] * 5]


def test_collate():
    batch = [
        {"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "position_ids": [0, 1, 0]},
        {"input_ids": torch.tensor([8]), "labels": [8], "position_ids": [0]},
    ]
    out = collate(batch, pad_token_id=0)
    assert set(out) == {"input_ids", "labels", "attention_mask", "position_ids"}
    assert out["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert out["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert out["position_ids"].tolist() == [[0, 1, 0], [0, 0, 0]]
    assert "position_ids" not in collate([{"input_ids": [1], "labels": [1]}], pad_token_id=0)
    with pytest.raises(ValueError, match="labels has length 1"):
        collate([{"input_ids": [1, 2], "labels": [1]}], pad_token_id=0)


def test_build_dataset_caches_and_reuses(tmp_path, monkeypatch):
    tok = tiny_tokenizer()
    src = write_jsonl(tmp_path / "chats.jsonl", [{"id": str(i), "messages": MESSAGES} for i in range(6)])
    cache = tmp_path / "cache"
    ds = build_dataset(tok, src, max_length=64, cache_dir=str(cache))
    assert ds.column_names == ["input_ids", "labels"] and len(ds) == 6
    assert ds[0] == tokenize_messages(tok, MESSAGES, max_length=64)
    files = sorted(p.name for p in cache.iterdir())
    assert any(f.startswith("tokenized-") for f in files)

    def boom(*args, **kwargs):
        raise AssertionError("tokenised again despite the cache")

    monkeypatch.setattr(chat, "tokenize_messages", boom)
    again = build_dataset(tok, src, max_length=64, cache_dir=str(cache))
    assert again[:] == ds[:]
    with pytest.raises(ValueError, match="could not tokenise"):  # other knobs: a new cache entry
        build_dataset(tok, src, max_length=65, cache_dir=str(cache))


def test_build_dataset_packs(tmp_path):
    tok = tiny_tokenizer()
    src = write_jsonl(tmp_path / "chats.jsonl", [{"messages": MESSAGES[1:3]}, {"messages": MESSAGES}] * 3)
    plain = build_dataset(tok, src, max_length=128)  # 33 + 87 tokens: two conversations per sequence
    packed = build_dataset(tok, src, max_length=128, pack=True, cache_dir=str(tmp_path / "cache"))
    assert packed.column_names == ["input_ids", "labels", "position_ids"]
    assert (len(plain), len(packed)) == (6, 3)
    flat = [t for row in packed["input_ids"] for t in row]
    assert flat == [t for row in plain["input_ids"] for t in row]
    for row in packed:
        assert len(row["input_ids"]) <= 128
        starts = [i for i, p in enumerate(row["position_ids"]) if p == 0]
        assert starts[0] == 0 and all(row["labels"][s] == IGNORE_INDEX for s in starts)
    batch = collate([packed[0], packed[1]], pad_token_id=tok.pad_token_id)
    assert batch["position_ids"].shape == batch["input_ids"].shape


def test_build_dataset_drops_and_logs_truncated_away(tmp_path, caplog):
    tok = tiny_tokenizer()
    long_system = {"role": "system", "content": "The quick brown fox jumps over the lazy dog. " * 20}
    src = write_jsonl(
        tmp_path / "c.jsonl", [{"messages": MESSAGES}, {"messages": [long_system] + MESSAGES[1:]}]
    )
    with caplog.at_level(logging.WARNING, logger="data"):
        ds = build_dataset(tok, src, max_length=64)
    assert len(ds) == 1
    assert "dropped 1 of 2 conversations" in caplog.text


def test_build_dataset_on_real_sample_with_vicuna(tmp_path):
    tok = tiny_tokenizer()
    ds = build_dataset(tok, str(DUMMY), max_length=256, template="vicuna_v1.1", cache_dir=str(tmp_path))
    assert 0 < len(ds) <= 500
    ex = ds[0]  # identity_0: "Who are you?" / "I am Vicuna, ..." / "Have a nice day!" / "You too!"
    runs = [r.strip() for r in labelled_spans(tok, ex)]
    assert (
        runs[0].startswith("I am Vicuna")
        and runs[0].endswith("<|im_end|>")
        and runs[1] == "You too!<|im_end|>"
    )
