"""Load chat conversations from ShareGPT or OpenAI-style sources into one normalised schema.

Every record becomes
    {"id": str, "messages": [{"role": "system" | "user" | "assistant", "content": str}, ...]}

Accepted inputs
    - ShareGPT:  {"id": ..., "conversations": [{"from": "human" | "gpt" | ..., "value": str}, ...]}
    - OpenAI:    {"id": ..., "messages": [{"role": "user" | "assistant" | "system", "content": str}, ...]}
  stored as a local .json file (a list of records), a local .jsonl file (one record a line), a local
  dataset folder, or a `datasets` hub id (hub ids need network access, which training boxes may lack).

Bad records raise DataError, whose message names the source, the record index (0-based), the line
number for JSONL and the problem. With skip_bad=True they are skipped instead, counted per problem
kind, logged on the "data" logger and returned in the stats: nothing is dropped silently.
"""

from __future__ import annotations

import json
import logging
import os
import unicodedata
from collections import Counter
from collections.abc import Iterator
from typing import Any

log = logging.getLogger("data")

# Source role name (lower-cased) -> normalised role.
ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "system": "system",
}

# Problem kinds used in DataError.kind and in the skip statistics.
KINDS = (
    "bad_json",
    "bad_type",
    "missing_field",
    "unknown_role",
    "empty_turn",
    "assistant_first",
    "no_assistant",
)


def visible(text: str) -> bool:
    """True when text has a character that is neither whitespace nor an invisible format character (zero-width
    space/joiners, BOM, soft hyphen: Unicode category Cf)."""
    return any(not ch.isspace() and unicodedata.category(ch) != "Cf" for ch in text)


class DataError(ValueError):
    """A record that cannot be used; the message names source, record index, line and problem."""

    def __init__(self, source: str, index: int, problem: str, kind: str, line: int | None = None):
        where = f"record {index}" + (f" (line {line})" if line is not None else "")
        super().__init__(f"{source}: {where}: {problem}")
        self.source, self.index, self.line, self.problem, self.kind = source, index, line, problem, kind


class _Problem(Exception):
    """Internal: raised by normalise_record, turned into a DataError with the location attached."""

    def __init__(self, kind: str, problem: str):
        super().__init__(problem)
        self.kind, self.problem = kind, problem


# ----------------------------------------------------------------------------- raw records


class _BadJSON:
    """Stands in for a JSONL line that did not parse (bad JSON, or bytes that are not UTF-8)."""

    def __init__(self, error: Exception):
        self.error = error


def _is_local_file(source: str) -> bool:
    return os.path.isfile(source) and source.endswith((".json", ".jsonl"))


def iter_records(source: str, split: str = "train") -> Iterator[tuple[int, int | None, Any]]:
    """Yield (record index, line number or None, raw record) from a file, folder or hub id.

    A JSONL line that is not valid JSON yields a _BadJSON marker as its record, so that the
    caller can report or skip it with the right location.
    """
    if _is_local_file(source):
        if source.endswith(".jsonl"):
            yield from _iter_jsonl(source)
        else:
            yield from _iter_json(source)
        return
    if os.path.isfile(source):
        raise ValueError(f"{source}: unsupported file type; expected .json (a list of records) or .jsonl")
    for index, row in enumerate(_load_hf_dataset(source, split)):
        yield index, None, row


def _iter_jsonl(path: str) -> Iterator[tuple[int, int | None, Any]]:
    index = 0
    with open(path, "rb") as f:  # decoded line by line: one bad byte spoils one record, not the file
        for line_no, raw in enumerate(f, start=1):
            if not raw.strip():
                continue  # blank lines are layout, not records
            try:
                record: Any = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as e:
                record = _BadJSON(ValueError(f"not UTF-8 text (byte {e.start} of the line)"))
            except json.JSONDecodeError as e:
                record = _BadJSON(e)
            yield index, line_no, record
            index += 1


def _iter_json(path: str) -> Iterator[tuple[int, int | None, Any]]:
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not UTF-8 text (byte {e.start} of the file)") from None
        except json.JSONDecodeError as e:
            hint = " (is it JSON Lines? then name it .jsonl)" if "Extra data" in str(e) else ""
            raise ValueError(f"{path}: not valid JSON: {e}{hint}") from e
    if not isinstance(data, list):
        raise ValueError(
            f"{path}: expected a JSON list of records at the top level, got {type(data).__name__}"
        )
    for index, record in enumerate(data):
        yield index, None, record


def _load_hf_dataset(source: str, split: str):
    """A local dataset folder (save_to_disk or data files) or a hub id, as a datasets.Dataset."""
    import datasets  # lazy: importing datasets is slow and only needed here

    if os.path.isdir(source) and os.path.exists(os.path.join(source, "state.json")):
        ds = datasets.load_from_disk(source)  # written by Dataset.save_to_disk
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[split]
        return ds
    if not os.path.exists(source) and "/" not in source and "." in os.path.basename(source):
        raise FileNotFoundError(f"{source}: no such file")
    try:
        return datasets.load_dataset(source, split=split)
    except Exception as e:  # offline machines land here for hub ids
        raise ValueError(
            f"{source}: could not load with datasets.load_dataset(split={split!r}): {e}. "
            "Use a local .json/.jsonl file or dataset folder when there is no network access."
        ) from e


# ----------------------------------------------------------------------------- normalisation


def _turn(turn: Any, t: int) -> tuple[str, Any]:
    """(source role, content) of one turn in either schema."""
    if not isinstance(turn, dict):
        raise _Problem("bad_type", f"turn {t} is a {type(turn).__name__}, expected an object")
    if "from" in turn or "value" in turn:
        role_key, content_key = "from", "value"
    else:
        role_key, content_key = "role", "content"
    for key in (role_key, content_key):
        if key not in turn:
            raise _Problem("missing_field", f"turn {t} has no '{key}' field")
    return turn[role_key], turn[content_key]


def normalise_record(record: Any, index: int, default_id: str) -> dict:
    """One raw record -> {"id", "messages"}; raises _Problem(kind, text) when unusable."""
    if isinstance(record, _BadJSON):
        raise _Problem("bad_json", f"invalid JSON: {record.error}")
    if not isinstance(record, dict):
        raise _Problem("bad_type", f"record is a {type(record).__name__}, expected an object")
    if "messages" in record:
        key = "messages"
    elif "conversations" in record:
        key = "conversations"
    else:
        raise _Problem("missing_field", "missing field 'conversations' (ShareGPT) or 'messages' (OpenAI)")
    turns = record[key]
    if not isinstance(turns, list):
        raise _Problem("bad_type", f"'{key}' is a {type(turns).__name__}, expected a list of turns")

    messages = []
    system = record.get("system")  # some ShareGPT exports keep the system prompt at record level
    if isinstance(system, str) and system.strip():
        messages.append({"role": "system", "content": system})
    for t, turn in enumerate(turns):
        source_role, content = _turn(turn, t)
        role = ROLES.get(source_role.lower()) if isinstance(source_role, str) else None
        if role is None:
            known = ", ".join(sorted(ROLES))
            raise _Problem("unknown_role", f"turn {t} has unknown role {source_role!r} (known: {known})")
        if not isinstance(content, str):
            raise _Problem("bad_type", f"turn {t} content is a {type(content).__name__}, expected a string")
        if not visible(content):
            what = "empty" if not content.strip() else "only invisible characters (e.g. zero-width spaces)"
            raise _Problem("empty_turn", f"turn {t} ({source_role}) is {what}")
        if role == "assistant" and not any(m["role"] == "user" for m in messages):
            raise _Problem(
                "assistant_first",
                f"turn {t} ({source_role}) answers before any user turn: a conversation starts with the user "
                "(after an optional system prompt)",
            )
        messages.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in messages):
        raise _Problem("no_assistant", "conversation has no assistant turn")

    rid = record.get("id")
    return {"id": default_id if rid is None else str(rid), "messages": messages}


# ----------------------------------------------------------------------------- public entry point


def load_conversations(source: str, skip_bad: bool = False, split: str = "train") -> tuple[list[dict], dict]:
    """Load and normalise all records of `source`.

    source:   path to .json / .jsonl, a local dataset folder, or a datasets hub id
    skip_bad: skip (and count) bad records instead of raising DataError
    split:    split to read for dataset folders and hub ids; in local files, records carrying a "split" field
              (distilled files tag train/calib/eval) are kept only when it equals `split`
    returns:  (records, stats) with stats = {"source", "total", "loaded", "skipped", "skipped_by_kind"}
    """
    if not isinstance(source, str) or not source:
        raise ValueError(f"source must be a non-empty path or dataset id, got {source!r}")
    source_path = os.path.expanduser(source)
    if not os.path.exists(source_path) and source_path.endswith((".json", ".jsonl")):
        raise FileNotFoundError(f"{source}: no such file")
    stem = os.path.splitext(os.path.basename(source_path.rstrip("/")))[0] or "record"

    records: list[dict] = []
    skipped: Counter[str] = Counter()
    first_error: dict[str, str] = {}
    total = 0
    other_split = 0
    for index, line, raw in iter_records(source_path, split=split):
        if isinstance(raw, dict) and isinstance(raw.get("split"), str) and raw["split"] != split:
            other_split += 1  # another split of the same file: held out on purpose, not a bad record
            continue
        total += 1
        try:
            records.append(normalise_record(raw, index, default_id=f"{stem}-{index}"))
        except _Problem as p:
            err = DataError(source, index, p.problem, p.kind, line)
            if not skip_bad:
                raise err from None
            skipped[p.kind] += 1
            first_error.setdefault(p.kind, str(err))
            log.debug("skipped %s", err)

    stats = {
        "source": source,
        "total": total,
        "loaded": len(records),
        "skipped": sum(skipped.values()),
        "skipped_by_kind": dict(skipped),
        "other_split": other_split,
    }
    if skipped:
        detail = "; ".join(f"{k}={n} (first: {first_error[k]})" for k, n in skipped.items())
        log.warning("%s: skipped %d of %d records: %s", source, stats["skipped"], total, detail)
    log.info("%s: loaded %d conversations", source, len(records))
    if not records:
        raise ValueError(
            f"{source}: no usable conversations ({total} records of split {split!r} read, "
            f"{stats['skipped']} skipped, {other_split} of other splits)"
        )
    return records, stats
