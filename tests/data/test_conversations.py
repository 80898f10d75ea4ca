"""Loading ShareGPT / OpenAI-style conversations into the normalised schema, and bad-record handling."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from data.conversations import DataError, load_conversations

REPO = Path(__file__).resolve().parents[2]
DUMMY = REPO / "data" / "fastchat_dummy_conversation.json"

SHAREGPT = [
    {
        "id": "a",
        "conversations": [
            {"from": "system", "value": "Be brief."},
            {"from": "human", "value": "Who are you?"},
            {"from": "gpt", "value": "A model."},
            {"from": "user", "value": "And?"},
            {"from": "chatgpt", "value": "That is all."},
        ],
    },
    {"id": 7, "conversations": [{"from": "Human", "value": "Hi"}, {"from": "bard", "value": "Hello!"}]},
]
OPENAI = [
    {
        "id": "a",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Who are you?"},
            {"role": "assistant", "content": "A model."},
            {"role": "user", "content": "And?"},
            {"role": "assistant", "content": "That is all."},
        ],
    },
    {"id": "7", "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]},
]
EXPECTED = [{"id": r["id"], "messages": r["messages"]} for r in OPENAI]

GOOD = {"id": "ok", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hey"}]}
# kind -> (bad record, words its error message must contain)
BAD = {
    "missing_field": ({"id": "x", "turns": []}, "missing field 'conversations'"),
    "missing_value": (
        {"conversations": [{"from": "human"}, {"from": "gpt", "value": "a"}]},
        "no 'value' field",
    ),
    "unknown_role": ({"conversations": [{"from": "robot", "value": "a"}]}, "unknown role 'robot'"),
    "empty_turn": (
        {"conversations": [{"from": "human", "value": "  "}, {"from": "gpt", "value": "a"}]},
        "empty",
    ),
    "zero_width": (
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "\u200b \ufeff"}]},
        "only invisible characters",
    ),
    "assistant_first": (
        {"conversations": [{"from": "gpt", "value": "Hello!"}, {"from": "human", "value": "Hi"}]},
        "turn 0 (gpt) answers before any user turn",
    ),
    "no_assistant": ({"conversations": [{"from": "human", "value": "Hi"}]}, "no assistant turn"),
    "non_string": (
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": 3}]},
        "int",
    ),
    "not_object": (["human", "hi"], "record is a list"),
}
KIND = {
    "zero_width": "empty_turn",
    "missing_value": "missing_field",
    "non_string": "bad_type",
    "not_object": "bad_type",
}


def write_json(path: Path, records) -> str:
    path.write_text(json.dumps(records), encoding="utf-8")
    return str(path)


def write_jsonl(path: Path, lines: list[str]) -> str:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_sharegpt_and_openai_normalise_to_the_same_records(tmp_path):
    share, _ = load_conversations(write_json(tmp_path / "share.json", SHAREGPT))
    lines = [json.dumps(r) for r in OPENAI]
    oai, stats = load_conversations(write_jsonl(tmp_path / "oai.jsonl", lines))
    assert share == oai == EXPECTED
    assert stats == {
        "source": str(tmp_path / "oai.jsonl"),
        "total": 2,
        "loaded": 2,
        "skipped": 0,
        "skipped_by_kind": {},
        "other_split": 0,
    }


def test_split_tags_filter_records(tmp_path):
    lines = [json.dumps({**r, "split": s}) for r, s in zip(OPENAI, ["train", "eval"])]
    path = write_jsonl(tmp_path / "tagged.jsonl", lines)
    train, stats = load_conversations(path)  # split="train" by default
    assert [r["id"] for r in train] == [EXPECTED[0]["id"]] and stats["other_split"] == 1
    held_out, _ = load_conversations(path, split="eval")
    assert [r["id"] for r in held_out] == [EXPECTED[1]["id"]]


def test_default_ids_and_record_level_system(tmp_path):
    rec = {"system": "Sys", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    records, _ = load_conversations(write_json(tmp_path / "chats.json", [rec, rec]))
    assert [r["id"] for r in records] == ["chats-0", "chats-1"]
    assert records[0]["messages"][0] == {"role": "system", "content": "Sys"}


def test_dataset_folder_loads(tmp_path):
    import datasets

    datasets.Dataset.from_list(OPENAI).save_to_disk(str(tmp_path / "saved"))
    records, _ = load_conversations(str(tmp_path / "saved"))
    assert records == EXPECTED


def test_real_fastchat_dummy_file_loads():
    records, stats = load_conversations(str(DUMMY))
    assert stats["loaded"] == stats["total"] == len(records) == 500 and stats["skipped"] == 0
    assert records[0]["id"] == "identity_0"
    for r in records:
        assert [m["role"] for m in r["messages"]][:2] == ["user", "assistant"]
        assert all(isinstance(m["content"], str) and m["content"].strip() for m in r["messages"])


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_record_in_json_names_file_index_and_problem(tmp_path, name):
    bad, words = BAD[name]
    path = write_json(tmp_path / "bad.json", [GOOD, GOOD, bad])
    with pytest.raises(DataError) as e:
        load_conversations(path)
    msg = str(e.value)
    assert path in msg and "record 2" in msg and words in msg, msg
    assert e.value.index == 2 and e.value.kind == KIND.get(name, name)
    assert isinstance(e.value, ValueError)


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_record_in_jsonl_names_line(tmp_path, name):
    bad, words = BAD[name]
    path = write_jsonl(tmp_path / "bad.jsonl", [json.dumps(GOOD), "", json.dumps(bad)])
    with pytest.raises(DataError) as e:
        load_conversations(path)
    msg = str(e.value)
    assert path in msg and "record 1 (line 3)" in msg and words in msg, msg


def test_bad_json_line(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [json.dumps(GOOD), '{"conversations": [', json.dumps(GOOD)])
    with pytest.raises(DataError, match=r"record 1 \(line 2\): invalid JSON") as e:
        load_conversations(path)
    assert e.value.kind == "bad_json" and e.value.line == 2


def test_skip_bad_counts_every_kind_and_logs(tmp_path, caplog):
    lines = [json.dumps(GOOD)] + [json.dumps(BAD[k][0]) for k in sorted(BAD)] + ["not json", json.dumps(GOOD)]
    path = write_jsonl(tmp_path / "mixed.jsonl", lines)
    with caplog.at_level(logging.WARNING, logger="data"):
        records, stats = load_conversations(path, skip_bad=True)
    assert len(records) == 2 and stats["total"] == len(lines) and stats["skipped"] == len(lines) - 2
    assert stats["skipped_by_kind"] == {
        "missing_field": 2,
        "unknown_role": 1,
        "empty_turn": 2,
        "assistant_first": 1,
        "no_assistant": 1,
        "bad_type": 2,
        "bad_json": 1,
    }
    warning = " ".join(r.getMessage() for r in caplog.records if r.name == "data")
    assert "skipped 10 of 12" in warning and "bad_json=1" in warning and "line 11" in warning


def test_source_level_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_conversations(str(tmp_path / "missing.jsonl"))
    with pytest.raises(ValueError, match="expected a JSON list"):
        load_conversations(write_json(tmp_path / "obj.json", {"conversations": []}))
    with pytest.raises(ValueError, match="JSON Lines"):
        load_conversations(write_jsonl(tmp_path / "lines.json", [json.dumps(GOOD), json.dumps(GOOD)]))
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="unsupported file type"):
        load_conversations(str(tmp_path / "x.csv"))
    with pytest.raises(ValueError, match="no usable conversations"):
        load_conversations(write_json(tmp_path / "allbad.json", [BAD["no_assistant"][0]]), skip_bad=True)


def test_non_utf8_record_is_named_and_skippable(tmp_path):
    path = tmp_path / "latin1.jsonl"
    good = json.dumps(GOOD).encode()
    path.write_bytes(good + b"\n" + b'{"conversations": "caf\xe9"}\n' + good + b"\n")
    with pytest.raises(DataError, match=r"record 1 \(line 2\): invalid JSON: not UTF-8 text"):
        load_conversations(str(path))
    records, stats = load_conversations(str(path), skip_bad=True)
    assert len(records) == 2 and stats["skipped"] == 1
    whole = tmp_path / "latin1.json"
    whole.write_bytes(b'[{"conversations": "caf\xe9"}]')
    with pytest.raises(ValueError, match="not UTF-8 text"):
        load_conversations(str(whole))
