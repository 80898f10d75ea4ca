"""Self-distillation: regenerate every assistant turn with the base model itself, so Medusa heads learn what the
model really says (not what some other model wrote).

    python -m data.distill --input data/smollm2/prompts.jsonl --output data/smollm2/distilled.jsonl

Input: prompt files (JSONL ``{"id", "turns": [str, ...]}``, optionally with "split" and "category"), OpenAI-style
conversations (``{"id", "messages": [{"role", "content"}, ...]}``; the assistant contents are dropped and
regenerated), or any format ``data.conversations.load_conversations`` reads (ShareGPT, ...).
Multi-turn: answer user turn 1, append the model's own answer and user turn 2, answer again, and so on.

Output JSONL, one record per input conversation:
    {"id", "split", "category", "messages": [...], "provenance": {"model", "revision", "template",
     "temperature", "max_new_tokens", "backend", "dtype"}}

Resumable: a record is written with one write + flush once all its turns are done (fsync after every batch); on
start the existing output is read, a trailing half-written line is cut away and finished ids are skipped.

Backends: ``local`` (transformers generate, left-padded batches) and ``openai`` (any OpenAI-compatible server,
e.g. vLLM or TGI, through ``huggingface_hub.InferenceClient``; requests of a batch run concurrently).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import torch

BACKENDS = ("local", "openai")
BATCH_SIZE = 16  # conversations generated together (local) or requests in flight (openai)
MAX_NEW_TOKENS = 256  # cap on each regenerated assistant turn
TEMPERATURE = 0.0  # 0 = greedy decoding
DTYPE = "bfloat16"  # weights dtype of the local backend
WINDOW = 8  # batches per sorting window: prompts are sorted by length inside a window to cut padding
SEED = 0  # sampling seed (only matters when temperature > 0)
ROLES = ("system", "user", "assistant")


class DistillError(ValueError):
    """Bad input, output or settings for a distillation run."""


# ---------------------------------------------------------------- reading inputs


def _normalize(record: dict, index: int) -> dict:
    """-> {"id", "split", "category", "system", "users"}: the user turns to answer, in order."""
    rid = str(record.get("id", record.get("question_id", f"r{index:06d}")))
    system = None
    if "turns" in record:
        turns = record["turns"]
        if (
            not isinstance(turns, list)
            or not turns
            or not all(isinstance(t, str) and t.strip() for t in turns)
        ):
            raise DistillError(
                f"record {rid}: 'turns' must be a non-empty list of strings, got {turns!r:.80}"
            )
        users = list(turns)
    else:
        messages = record["messages"]
        if not isinstance(messages, list):
            raise DistillError(f"record {rid}: 'messages' must be a list, got {messages!r:.80}")
        bad = [
            m for m in messages if not isinstance(m, dict) or m.get("role") not in ROLES or "content" not in m
        ]
        if bad:
            raise DistillError(f"record {rid}: messages need a role in {ROLES} and a content, got {bad[0]!r}")
        if messages and messages[0]["role"] == "system":
            system = messages[0]["content"]
        users = [m["content"] for m in messages if m["role"] == "user"]
    return {
        "id": rid,
        "split": record.get("split", "train"),
        "category": record.get("category"),
        "system": system,
        "users": users,
    }


def _read_json_records(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if not text.strip():
        return []
    if text.lstrip().startswith("["):
        return json.loads(text)
    try:
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError:
        return [json.loads(text)]  # one pretty-printed object


def _read_other(path: str, skip_bad: bool, error: Exception | None) -> list[dict]:
    """Formats of data.conversations (ShareGPT files, dataset folders, hub ids), as OpenAI messages."""
    try:
        from data.conversations import load_conversations
    except ImportError as e:
        detail = f" ({error})" if error else ""
        raise DistillError(f"{path}: records have neither 'turns' nor 'messages'{detail}") from e
    try:
        conversations, _ = load_conversations(path, skip_bad=skip_bad)
    except (ValueError, OSError) as e:  # DataError is a ValueError naming the record and the problem
        raise DistillError(f"cannot read {path}: {e}") from e
    return conversations


def read_records(
    path: str, split: str | None = None, limit: int | None = None, skip_bad: bool = False
) -> list[dict]:
    """Normalized input records (see _normalize), filtered to one split and cut to the first `limit`.

    `skip_bad` skips malformed conversations of formats read by data.conversations instead of failing.
    """
    hub_id = not os.path.exists(path) and path.count("/") == 1 and not path.startswith((".", "~"))
    if not os.path.exists(path) and not hub_id:
        raise DistillError(f"input file not found: {path}")
    raw, error = None, None
    if os.path.isfile(path):
        try:
            raw = _read_json_records(path)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            error = e
    if raw is not None and all(isinstance(r, dict) and ("turns" in r or "messages" in r) for r in raw):
        records = [_normalize(r, i) for i, r in enumerate(raw)]
    else:  # another format (ShareGPT, a dataset folder or hub id): the conversation reader knows them
        records = [_normalize(r, i) for i, r in enumerate(_read_other(path, skip_bad, error))]
    records = [r for r in records if r["users"] and (split is None or r["split"] == split)]
    if limit is not None:
        records = records[:limit]
    if not records:
        where = f" with split {split!r}" if split else ""
        raise DistillError(f"no conversations with a user turn{where} in {path}")
    seen: set[str] = set()
    for r in records:
        if r["id"] in seen:
            raise DistillError(f"duplicate id {r['id']!r} in {path}: ids must be unique to resume safely")
        seen.add(r["id"])
    return records


# ---------------------------------------------------------------- resuming the output


def resume_output(path: str) -> dict[str, dict]:
    """Finished records of an existing output, by id. A trailing partial line (a killed write) is truncated away."""
    if not os.path.exists(path):
        return {}
    with open(path, "rb+") as f:
        data = f.read()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            f.truncate(end)
            print(f"{path}: dropped a half-written last line ({len(data) - end} bytes)", file=sys.stderr)
    done = {}
    for number, line in enumerate(data[:end].splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DistillError(f"{path}:{number} is not valid JSON ({e}); fix or remove that line") from e
        done[record["id"]] = record
    return done


def check_provenance(done: dict[str, dict], provenance: dict, path: str) -> None:
    """Refuse to mix records of different models or settings in one output file.

    Settings missing from the old records (files written before a field existed) are not compared.
    """
    old = next(iter(done.values()), {}).get("provenance") or {}  # one record is enough: all passed this check
    diff = {k: (old[k], v) for k, v in provenance.items() if k in old and old[k] != v}
    if diff:
        raise DistillError(
            f"{path} already holds records made with other settings (old, new): {diff}; "
            "use a new --output file or the same settings"
        )


def template_hash(tokenizer) -> str | None:
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return None
    text = template if isinstance(template, str) else json.dumps(template, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# ---------------------------------------------------------------- backends


class LocalGenerator:
    """Batched transformers generation: chat template with generation prompt, left padding, stop at eos."""

    def __init__(self, model, tokenizer, max_new_tokens: int, temperature: float, seed: int = SEED):
        from transformers import GenerationConfig

        if not getattr(tokenizer, "chat_template", None):
            from data.chat import resolve_template

            try:  # Vicuna tokenizers have none: the shipped vicuna_v1.1 template
                tokenizer.chat_template = resolve_template(tokenizer)
            except ValueError:
                raise DistillError(
                    "the tokenizer has no chat template: cannot build prompts for a chat model"
                ) from None
        self.model, self.tokenizer = model, tokenizer
        self.eos_ids = self._eos_ids()
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]
        # temperature > 0: plain sampling from the whole distribution (no top-k / top-p truncation)
        sampling = dict(temperature=temperature, top_p=1.0, top_k=0) if temperature > 0 else {}
        self.config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=temperature > 0,
            eos_token_id=self.eos_ids,
            pad_token_id=self.pad_id,
            **sampling,
        )
        if temperature > 0:
            torch.manual_seed(seed)

    def _eos_ids(self) -> list[int]:
        from infer.model.backbone import stop_ids

        ids = sorted(stop_ids(self.model, self.tokenizer))
        if not ids:
            raise DistillError(
                "neither the tokenizer nor the model defines an eos token: generation cannot stop"
            )
        return ids

    def encode(self, conversation: list[dict]) -> list[int]:
        text = self.tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    @torch.no_grad()
    def generate(self, prompts: list[list[int]]) -> list[tuple[str, int, bool]]:
        """Token id prompts -> (text, new tokens, hit the cap) each."""
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[self.pad_id] * (width - len(p)) + p for p in prompts])  # (B, T) left padded
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])  # (B, T)
        device = next(self.model.parameters()).device
        out = self.model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=self.config
        )  # (B, T + new)
        results = []
        for row in out[:, width:].tolist():
            stop = next((i for i, t in enumerate(row) if t in self.eos_ids), None)
            tokens = row if stop is None else row[:stop]
            text = self.tokenizer.decode(tokens, skip_special_tokens=True).strip()
            results.append((text, len(tokens), stop is None))
        return results


class OpenAIGenerator:
    """An OpenAI-compatible server (/v1/chat/completions); the requests of one batch run concurrently."""

    def __init__(
        self, base_url: str, model: str, max_new_tokens: int, temperature: float, api_key=None, workers=16
    ):
        from huggingface_hub import InferenceClient

        if not base_url:
            raise DistillError("the openai backend needs --base-url (e.g. http://127.0.0.1:8000/v1)")
        # An explicit key: otherwise huggingface_hub would send the local Hugging Face token to this server.
        key = api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"
        self.client = InferenceClient(base_url=base_url, api_key=key)
        self.model, self.max_new_tokens, self.temperature, self.workers = (
            model,
            max_new_tokens,
            temperature,
            workers,
        )

    def encode(self, conversation: list[dict]) -> list[dict]:
        return conversation

    def _one(self, conversation: list[dict]) -> tuple[str, int, bool]:
        reply = self.client.chat_completion(
            conversation, model=self.model, max_tokens=self.max_new_tokens, temperature=self.temperature
        )
        choice = reply.choices[0]
        tokens = reply.usage.completion_tokens if getattr(reply, "usage", None) else 0
        return (choice.message.content or "").strip(), tokens or 0, choice.finish_reason == "length"

    def generate(self, prompts: list[list[dict]]) -> list[tuple[str, int, bool]]:
        with ThreadPoolExecutor(max_workers=min(self.workers, len(prompts))) as pool:
            return list(pool.map(self._one, prompts))


# ---------------------------------------------------------------- the run


def _conversation(job: dict) -> list[dict]:
    return ([{"role": "system", "content": job["system"]}] if job["system"] else []) + job["messages"]


def _output_record(job: dict, provenance: dict) -> dict:
    return {
        "id": job["id"],
        "split": job["split"],
        "category": job["category"],
        "messages": _conversation(job),
        "provenance": provenance,
    }


def _answer(jobs: list[dict], generator, batch_size: int, stats: dict):
    """Answer every user turn of `jobs`, round by round; yields the jobs that each batch finished."""
    while jobs:  # one round per user turn: every open job answers its next turn
        for job in jobs:
            job["messages"].append({"role": "user", "content": job["users"][len(job["messages"]) // 2]})
            job["prompt"] = generator.encode(_conversation(job))
        jobs.sort(key=lambda j: len(j["prompt"]))  # similar lengths share a batch: less padding
        for b in range(0, len(jobs), batch_size):
            batch = jobs[b : b + batch_size]
            for job, (text, tokens, capped) in zip(batch, generator.generate([j["prompt"] for j in batch])):
                job["messages"].append({"role": "assistant", "content": text})
                stats["generated_tokens"] += tokens
                stats["truncated"] += int(capped)
            yield [j for j in batch if len(j["messages"]) == 2 * len(j["users"])]
        jobs = [j for j in jobs if len(j["messages"]) < 2 * len(j["users"])]


def distill(
    records: list[dict],
    output: str,
    *,
    model=None,
    tokenizer=None,
    model_name: str | None = None,
    revision: str | None = None,
    backend: str = "local",
    base_url: str | None = None,
    api_key: str | None = None,
    batch_size: int = BATCH_SIZE,
    max_new_tokens: int = MAX_NEW_TOKENS,
    temperature: float = TEMPERATURE,
    dtype: str = DTYPE,
    device: str | None = None,
    window: int = WINDOW,
    seed: int = SEED,
    max_records: int | None = None,
    progress: bool = True,
) -> dict:
    """Regenerate the assistant turns of `records` (from read_records) into `output`, resuming where it stopped.

    Local backend: pass `model` and `tokenizer` objects, or leave them None to load `model_name` (None = the
    embedded default). `max_records` stops after writing that many new records (a controlled stop for tests).
    Returns counts: total, already_done, written, generated_tokens, truncated, seconds.
    """
    if backend not in BACKENDS:
        raise DistillError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    if batch_size < 1 or max_new_tokens < 1 or temperature < 0:
        raise DistillError("batch_size and max_new_tokens must be >= 1, temperature >= 0")
    if not records:
        raise DistillError("no input records to distill")
    from infer.model.base import DEFAULT_MODEL, load_base_model

    if backend == "local":
        if model is None or tokenizer is None:
            device = device or ("cuda" if torch.cuda.is_available() else "cpu")
            model, tokenizer = load_base_model(model_name, dtype=dtype, revision=revision, device=device)
            name = model_name or DEFAULT_MODEL
        else:  # objects passed in: name them by their config unless told
            name = model_name or getattr(model.config, "_name_or_path", "") or "in-process"
        generator = LocalGenerator(model, tokenizer, max_new_tokens, temperature, seed)
        template = template_hash(tokenizer)
        weights = str(next(model.parameters()).dtype).removeprefix("torch.")  # greedy outputs depend on it
    else:
        name = model_name or DEFAULT_MODEL
        generator = OpenAIGenerator(base_url, name, max_new_tokens, temperature, api_key, batch_size)
        template = weights = None  # the server applies its own chat template, in its own dtype
    provenance = {
        "model": name,
        "revision": revision,
        "template": template,
        "temperature": temperature,
        "max_new_tokens": max_new_tokens,
        "backend": backend,
        "dtype": weights,
    }

    done = resume_output(output)
    check_provenance(done, provenance, output)
    todo = [r for r in records if r["id"] not in done]
    stats = {"total": len(records), "already_done": len(records) - len(todo), "written": 0}
    stats.update(generated_tokens=0, truncated=0, seconds=0.0)
    if not todo:
        return stats
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    from tqdm.auto import tqdm

    start = time.perf_counter()
    bar = tqdm(total=len(todo), unit="conv", desc="distill", disable=not progress)
    with open(output, "ab") as out:
        for first in range(0, len(todo), batch_size * window):
            if max_records is not None and stats["written"] >= max_records:
                break
            jobs = [dict(r, messages=[]) for r in todo[first : first + batch_size * window]]
            for finished in _answer(jobs, generator, batch_size, stats):
                room = None if max_records is None else max_records - stats["written"]
                for job in finished[:room]:
                    line = json.dumps(_output_record(job, provenance), ensure_ascii=False) + "\n"
                    # one write per record: a kill leaves at most one partial (last) line
                    out.write(line.encode("utf-8"))
                    out.flush()
                    stats["written"] += 1
                    bar.update(1)
                os.fsync(out.fileno())
                bar.set_postfix(tok_s=f"{stats['generated_tokens'] / (time.perf_counter() - start):.0f}")
                if room is not None and stats["written"] >= max_records:
                    break  # a controlled stop: the rest of this window is dropped, as a kill would
    bar.close()
    stats["seconds"] = time.perf_counter() - start
    return stats


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, help="prompts or conversations (JSONL / JSON)")
    parser.add_argument("--output", required=True, help="output JSONL; an existing one is resumed")
    parser.add_argument("--model", default=None, help="model id or folder (default: the embedded SmolLM2)")
    parser.add_argument("--revision", default=None, help="model revision (Hub ids only)")
    parser.add_argument("--backend", default="local", help=f"one of {BACKENDS}")
    parser.add_argument("--base-url", default=None, help="OpenAI-compatible server URL (openai backend)")
    parser.add_argument(
        "--api-key", default=None, help="server key (openai backend; default $OPENAI_API_KEY)"
    )
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="conversations per batch")
    parser.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS, help="cap per assistant turn")
    parser.add_argument("--temperature", type=float, default=TEMPERATURE, help="0 = greedy")
    parser.add_argument("--dtype", default=DTYPE, help="local weights dtype: bfloat16, float16 or float32")
    parser.add_argument(
        "--device", default=None, help="local device (default: cuda when available, else cpu)"
    )
    parser.add_argument("--window", type=int, default=WINDOW, help="batches per length-sorting window")
    parser.add_argument("--seed", type=int, default=SEED, help="sampling seed (temperature > 0)")
    parser.add_argument("--limit", type=int, default=None, help="distill only the first N input records")
    parser.add_argument("--split", default=None, help="only records of this split (train, calib, eval)")
    parser.add_argument(
        "--skip-bad", action="store_true", help="skip malformed conversations instead of failing"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    if args.backend not in BACKENDS:
        parser.error(f"unknown backend {args.backend!r}; choose one of {BACKENDS}")
    try:
        records = read_records(args.input, args.split, args.limit, args.skip_bad)
        stats = distill(
            records,
            args.output,
            model_name=args.model,
            revision=args.revision,
            backend=args.backend,
            base_url=args.base_url,
            api_key=args.api_key,
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            dtype=args.dtype,
            device=args.device,
            window=args.window,
            seed=args.seed,
            progress=not args.no_progress,
        )
    except DistillError as e:
        parser.exit(2, f"error: {e}\n")
    rate = stats["generated_tokens"] / max(stats["seconds"], 1e-9)
    print(f"{args.output}: {json.dumps(stats)} ({rate:.1f} generated tokens/s)")
    return stats


if __name__ == "__main__":
    main()
