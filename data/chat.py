"""Normalised conversations -> token ids + assistant-only labels, for training Medusa heads.

    messages --chat template--> text --tokenizer--> input_ids
                                      assistant spans (chars) --offsets--> labels

Labels follow the Hugging Face convention: labels[t] == input_ids[t] where the token is trained on,
IGNORE_INDEX (-100) elsewhere; the trainer does the shifting. Labelled are the assistant content
tokens and the assistant's end-of-turn token (e.g. <|im_end|>, </s>). Not labelled: system and user
turns, template scaffolding and the assistant header (e.g. "<|im_start|>assistant\\n").

Assistant spans are found by rendering prefixes of the conversation: the template applied to
messages[:i] with add_generation_prompt=True ends where assistant turn i starts, the template
applied to messages[:i+1] ends where it stops. This works for any prefix-stable Hugging Face chat
template; templates that rewrite earlier turns fall back to locating the content text verbatim.

Packing (pack=True) concatenates several conversations into one sequence of at most max_length
tokens and returns position_ids that restart at 0 for each conversation. Attention still crosses
conversation boundaries unless the model uses those position_ids to separate them (e.g. flash
attention with packed-sequence support) or the trainer builds a block-diagonal mask from them.
The first label of every packed conversation is IGNORE_INDEX, so no loss target spans two of them
for the base shift; Medusa heads predicting further ahead should mask targets past a boundary.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from data.conversations import load_conversations

log = logging.getLogger("data")

IGNORE_INDEX = -100  # label value skipped by the cross-entropy loss
TEMPLATE_DIR = Path(__file__).parent / "templates"  # shipped chat templates: <name>.jinja
PREFIX_MARGIN = 64  # tokens past max_length a text prefix must yield before its first max_length are trusted
CACHE_VERSION = 1  # bump when tokenisation changes, so that old caches are not reused
ROLES = ("system", "user", "assistant")


# ----------------------------------------------------------------------------- templates


def available_templates() -> list[str]:
    """Names of the chat templates shipped in data/templates."""
    return sorted(p.stem for p in TEMPLATE_DIR.glob("*.jinja"))


@functools.lru_cache(maxsize=16)
def _read_template(path: str) -> str:
    return Path(path).read_text(encoding="utf-8")


def resolve_template(tokenizer, template: str | None = None) -> str:
    """The Jinja chat template text to use.

    template: None (the tokenizer's own; vicuna_v1.1 if it has none and its name contains "vicuna"),
              a shipped name ("vicuna_v1.1"), a path to a .jinja file, or Jinja text itself.
    """
    if template is None:
        own = getattr(tokenizer, "chat_template", None)
        if isinstance(own, dict):  # several named templates: take the default one
            own = own.get("default")
        if own:
            return own
        name = getattr(tokenizer, "name_or_path", "") or ""
        if "vicuna" in name.lower():
            return _read_template(str(TEMPLATE_DIR / "vicuna_v1.1.jinja"))
        raise ValueError(
            f"tokenizer {name!r} has no chat template; pass template= one of {available_templates()}, "
            "a path to a .jinja file, or the Jinja text"
        )
    if not isinstance(template, str):
        raise TypeError(f"template must be a str or None, got {type(template).__name__}")
    if "{{" in template or "{%" in template:
        return template
    if template in available_templates():
        return _read_template(str(TEMPLATE_DIR / f"{template}.jinja"))
    if template.endswith(".jinja"):
        if not os.path.isfile(template):
            raise FileNotFoundError(f"chat template file {template!r} does not exist")
        return _read_template(os.path.abspath(template))
    raise ValueError(
        f"unknown chat template {template!r}; expected one of {available_templates()}, "
        "a path to a .jinja file, or Jinja text"
    )


def render(tokenizer, messages: list[dict], chat_template: str, add_generation_prompt: bool = False) -> str:
    """Apply a chat template to messages and return the text (not tokenised)."""
    return tokenizer.apply_chat_template(
        messages, chat_template=chat_template, add_generation_prompt=add_generation_prompt, tokenize=False
    )


# ----------------------------------------------------------------------------- assistant spans


def _special_strings(tokenizer) -> list[str]:
    """Text of every special token (eos, pad, <|im_end|>, <end_of_turn>, ...)."""
    specials = set(getattr(tokenizer, "all_special_tokens", []) or [])
    for added in getattr(tokenizer, "added_tokens_decoder", {}).values():
        if getattr(added, "special", False):
            specials.add(str(added))
    return [s for s in specials if s]


def _label_stop(text: str, content_stop: int, turn_stop: int, specials: list[str], strict: bool) -> int:
    """Where the labelled part of an assistant turn ends: through its end-of-turn marker.

    The marker is the first special token after the content (e.g. <|im_end|> or </s>). Without one,
    the turn's remaining text (minus trailing whitespace) is labelled, or with strict=True (turn end
    unknown) nothing past the content. strict also requires only whitespace before the marker.
    """
    tail = text[content_stop:turn_stop]
    hits = [(tail.find(s), -len(s), s) for s in specials if s in tail]
    if hits:
        pos, _, s = min(hits)
        if not strict or not tail[:pos].strip():
            return content_stop + pos + len(s)
    return content_stop if strict else content_stop + len(tail.rstrip())


def assistant_spans(tokenizer, messages: list[dict], chat_template: str) -> tuple[str, list[tuple[int, int]]]:
    """Render a conversation and find the characters to label.

    messages: [{"role", "content"}], normalised (see data/conversations.py)
    returns:  (text, [(start, stop) character span of each assistant turn's labelled part])
    """
    text = render(tokenizer, messages, chat_template)
    specials = _special_strings(tokenizer)
    spans: list[tuple[int, int]] = []
    cursor = 0  # end of the last labelled span
    search_from = 0  # also past the other turns' text, so that a user turn is never matched
    for i, message in enumerate(messages):
        content = message["content"].strip() or message["content"]
        if message["role"] != "assistant":
            found = text.find(content, search_from)
            search_from = search_from if found < 0 else found + len(content)
            continue
        head = render(tokenizer, messages[:i], chat_template, add_generation_prompt=True) if i else None
        turn = render(tokenizer, messages[: i + 1], chat_template)
        if head is not None and turn.startswith(head) and text.startswith(turn) and len(head) >= cursor:
            start = text.find(content, len(head), len(turn))
            if start < 0:  # the template rewrote the content: label the whole turn after its header
                span = (len(head), len(head) + len(turn[len(head) :].rstrip()))
            else:
                span = (start, _label_stop(text, start + len(content), len(turn), specials, strict=False))
        else:  # no prefix to render from, or the template is not prefix-stable: find the content text
            start = text.find(content, max(cursor, search_from))
            if start < 0:
                raise ValueError(
                    f"cannot locate assistant turn {i} in the rendered conversation: the chat template "
                    "changes its text and does not render prefixes consistently"
                )
            span = (start, _label_stop(text, start + len(content), len(text), specials, strict=True))
        spans.append(span)
        cursor = search_from = span[1]
    return text, spans


# ----------------------------------------------------------------------------- tokenisation


def _ids_and_labels(tokenizer, text: str, spans: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
    """Tokenise text; label each token that overlaps a span, IGNORE_INDEX the others."""
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
        marked = bytearray(len(text))
        for a, b in spans:
            marked[a:b] = b"\x01" * (b - a)
        cum = list(itertools.accumulate(marked, initial=0))  # cum[c] = labelled chars before c
        labels = [t if cum[e] > cum[s] else IGNORE_INDEX for t, (s, e) in zip(ids, offsets)]
        return ids, labels
    # Slow tokenizers have no offsets: map char positions to tokens by tokenising prefixes.
    ids = tokenizer.encode(text, add_special_tokens=False)
    labels = [IGNORE_INDEX] * len(ids)
    for a, b in spans:
        i0 = len(tokenizer.encode(text[:a], add_special_tokens=False))
        i1 = len(tokenizer.encode(text[:b], add_special_tokens=False))
        labels[i0:i1] = ids[i0:i1]
    return ids, labels


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise ValueError(
            f"messages must be a non-empty list of {{'role', 'content'}} dicts, got {messages!r}"
        )
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ValueError(f"message {i} must be {{'role': one of {ROLES}, 'content': str}}, got {m!r}")


def tokenize_messages(
    tokenizer, messages: list[dict], max_length: int | None = None, template: str | None = None
) -> dict[str, list[int]]:
    """One conversation -> {"input_ids": [T], "labels": [T]}, T <= max_length (truncated on the right).

    template: see resolve_template; None uses the tokenizer's own chat template.
    """
    _check_messages(messages)
    chat_template = resolve_template(tokenizer, template)
    text, spans = assistant_spans(tokenizer, messages, chat_template)
    if max_length is None:
        ids, labels = _ids_and_labels(tokenizer, text, spans)
        return {"input_ids": ids, "labels": labels}
    # Only the first max_length tokens are kept: tokenise growing prefixes of the text until one yields that many
    # (+ a margin, so the cut cannot change them), instead of the whole text (a 5 MB record took 2.6 GB).
    n = max(4096, 16 * max_length)
    while True:
        cut = [(a, min(b, n)) for a, b in spans if a < n]
        ids, labels = _ids_and_labels(tokenizer, text[:n], cut)
        if n >= len(text) or len(ids) >= max_length + PREFIX_MARGIN:
            break
        n *= 4
    return {"input_ids": ids[:max_length], "labels": labels[:max_length]}


def pack_examples(
    input_ids: list[list[int]], labels: list[list[int]], max_length: int
) -> dict[str, list[list[int]]]:
    """Concatenate examples, in order, into sequences of at most max_length tokens.

    input_ids, labels: N examples (each truncated to max_length first)
    returns: {"input_ids", "labels", "position_ids"}: M <= N sequences; position_ids restart at 0
             for each example and the first label of each example is IGNORE_INDEX.
    """
    out: dict[str, list[list[int]]] = {"input_ids": [], "labels": [], "position_ids": []}
    cur: dict[str, list[int]] = {k: [] for k in out}
    for ids, labs in zip(input_ids, labels):
        ids, labs = list(ids[:max_length]), list(labs[:max_length])
        if cur["input_ids"] and len(cur["input_ids"]) + len(ids) > max_length:
            for k in out:
                out[k].append(cur[k])
            cur = {k: [] for k in out}
        if labs:
            labs[0] = IGNORE_INDEX  # never predicted from inside its own example
        cur["input_ids"] += ids
        cur["labels"] += labs
        cur["position_ids"] += range(len(ids))
    if cur["input_ids"]:
        for k in out:
            out[k].append(cur[k])
    return out


# ----------------------------------------------------------------------------- datasets


def _tokenize_batch(batch: dict, tokenizer, chat_template: str, max_length: int, skip_bad: bool, source: str):
    """datasets.map function: rows of {id, messages} -> rows of {input_ids, labels} with >= 1 label."""
    out: dict[str, list] = {"input_ids": [], "labels": []}
    for rid, messages in zip(batch["id"], batch["messages"]):
        try:
            ex = tokenize_messages(tokenizer, messages, max_length=max_length, template=chat_template)
        except Exception as e:
            if not skip_bad:
                raise ValueError(f"{source}: record id {rid!r}: could not tokenise: {e}") from e
            log.warning("%s: record id %r: skipped, could not tokenise: %s", source, rid, e)
            continue
        if any(t != IGNORE_INDEX for t in ex["labels"]):  # else nothing to train on (counted by caller)
            out["input_ids"].append(ex["input_ids"])
            out["labels"].append(ex["labels"])
    return out


def _pack_batch(batch: dict, max_length: int):
    return pack_examples(batch["input_ids"], batch["labels"], max_length)


def _tokenizer_fingerprint(tokenizer) -> str:
    if getattr(tokenizer, "is_fast", False):
        body = tokenizer.backend_tokenizer.to_str()  # vocab, merges, normaliser, added tokens
    else:
        body = json.dumps(sorted(tokenizer.get_vocab().items()))
    specials = [tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token, tokenizer.unk_token]
    return f"{type(tokenizer).__name__}|{specials}|{body}"


def _fingerprint(tokenizer, chat_template: str, records: list[dict], **knobs) -> str:
    """Hash of everything the tokenised dataset depends on: code version, knobs, tokenizer, data."""
    h = hashlib.sha256()
    h.update(
        json.dumps({"version": CACHE_VERSION, "template": chat_template, **knobs}, sort_keys=True).encode()
    )
    h.update(_tokenizer_fingerprint(tokenizer).encode())
    for r in records:
        h.update(json.dumps(r, sort_keys=True, ensure_ascii=False).encode())
    return h.hexdigest()[:20]


def build_dataset(
    tokenizer,
    source: str,
    max_length: int = 2048,  # tokens per example (per packed sequence with pack=True)
    template: str | None = None,  # chat template; None = the tokenizer's own (see resolve_template)
    skip_bad: bool = False,  # skip and count bad records instead of raising
    pack: bool = False,  # concatenate examples into max_length sequences, adds position_ids
    cache_dir: str | None = None,  # where tokenised Arrow files are cached; None = no cache
    num_proc: int = 1,  # worker processes for tokenisation
    split: str = "train",  # split of a dataset folder or hub id
):
    """Load, tokenise (and optionally pack) conversations -> datasets.Dataset.

    columns: input_ids [T], labels [T] (IGNORE_INDEX off assistant turns), position_ids [T] if pack.
    Conversations with no labelled token left (e.g. truncated away) are dropped and logged.
    """
    import datasets  # lazy: slow import

    if not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length must be an int >= 2, got {max_length!r}")
    if num_proc < 1:
        raise ValueError(f"num_proc must be >= 1, got {num_proc}")
    chat_template = resolve_template(tokenizer, template)  # fail before loading anything
    records, _ = load_conversations(source, skip_bad=skip_bad, split=split)
    fp = _fingerprint(tokenizer, chat_template, records, max_length=max_length, skip_bad=skip_bad)
    if cache_dir is not None:
        os.makedirs(cache_dir, exist_ok=True)

    def cache_file(step: str) -> str | None:
        return None if cache_dir is None else os.path.join(cache_dir, f"{step}-{fp}.arrow")

    ds = datasets.Dataset.from_list(records)
    ds = ds.map(
        _tokenize_batch,
        fn_kwargs=dict(
            tokenizer=tokenizer,
            chat_template=chat_template,
            max_length=max_length,
            skip_bad=skip_bad,
            source=source,
        ),
        batched=True,
        remove_columns=ds.column_names,
        num_proc=num_proc if num_proc > 1 else None,
        cache_file_name=cache_file("tokenized"),
        new_fingerprint=f"tokenized-{fp}",  # the fingerprint covers the tokenizer: no need to hash it
        desc="tokenize conversations",
    )
    dropped = len(records) - len(ds)
    if dropped:
        log.warning(
            "%s: dropped %d of %d conversations with no assistant token within max_length=%d%s",
            source,
            dropped,
            len(records),
            max_length,
            " or that failed to tokenise" if skip_bad else "",
        )
    if len(ds) == 0:
        raise ValueError(f"{source}: no conversation has an assistant token within max_length={max_length}")
    if pack:
        ds = ds.map(
            _pack_batch,
            fn_kwargs=dict(max_length=max_length),
            batched=True,
            batch_size=1000,  # packing is greedy within each batch of 1000 examples
            remove_columns=ds.column_names,
            cache_file_name=cache_file("packed"),
            new_fingerprint=f"packed-{fp}",
            desc="pack conversations",
        )
    log.info("%s: %d training sequences (max_length=%d, pack=%s)", source, len(ds), max_length, pack)
    return ds


# ----------------------------------------------------------------------------- batching


def collate(batch: list[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of examples for a DataLoader.

    batch:   B dicts with input_ids, labels (and position_ids) as lists or 1-D tensors
    returns: input_ids [B, T] (pad_token_id), labels [B, T] (IGNORE_INDEX), attention_mask [B, T],
             position_ids [B, T] (0 on padding) if the examples have them; T = longest example.
    """
    if not batch:
        raise ValueError("collate got an empty batch")
    if pad_token_id is None:
        raise ValueError("pad_token_id is None; set tokenizer.pad_token (e.g. to the eos token)")
    lengths = [len(ex["input_ids"]) for ex in batch]
    B, T = len(batch), max(lengths)
    pads = {"input_ids": pad_token_id, "labels": IGNORE_INDEX, "position_ids": 0}
    keys = [k for k in pads if k in batch[0]]
    out = {k: torch.full((B, T), pads[k], dtype=torch.long) for k in keys}
    out["attention_mask"] = torch.zeros(B, T, dtype=torch.long)
    for b, ex in enumerate(batch):
        n = lengths[b]
        for k in keys:
            if len(ex[k]) != n:
                raise ValueError(f"example {b}: {k} has length {len(ex[k])}, input_ids has {n}")
            out[k][b, :n] = torch.as_tensor(ex[k], dtype=torch.long)
        out["attention_mask"][b, :n] = 1
    return out
