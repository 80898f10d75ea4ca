"""Fit per-head calibration maps on data the heads never trained on; write ``calibration.json`` beside the heads.

    python -m train.calibrate HEADS --data data/smollm2/distilled.jsonl --split calib [--model BASE] [--top-m 10]
        [--max-examples N] [--out HEADS/calibration.json] [--plots DIR] [--verify-with-model] [--force]

1. Collect (:func:`collect`): for every assistant position, each head's top-m candidates, their raw logits, whether
   each is the token verification would accept there, and log Z(beta) = logsumexp(beta * z) on a grid of inverse
   temperatures (so that temperatures can be fitted without keeping the full logits). The accepted token for head
   k at position t is, by default, the data token at t+k+2: exact for self-distilled data (the base model's own
   greedy continuation, data/distill.py). ``--verify-with-model`` instead takes the base model's greedy chain from
   every position (K extra batched forwards per conversation): exact for any data, e.g. ShareGPT.
2. Fit (:func:`train.calibration_fit.fit`): per head, candidate maps (identity, temperature, isotonic on the raw or temperature-scaled
   probability, shared or per rank) are scored by cross-fitted held-out log-loss over the top-m Bernoulli events
   (fit on some conversations, score on the others); the best is refitted on everything.
3. Report: per head ECE (15 bins), Brier score and log-loss before/after (after = cross-fitted, honest), predicted
   vs realised top-1 accuracy, reliability diagrams (PNG), and the per-rank accuracy table ``rank_accuracy``.

Calibrating on the heads' own training data gives over-confident maps; it is refused (``--force`` overrides)
when the heads folder's ``recipe.yaml`` / ``metrics.json`` name the same file and the records are of the training
split (records without a "split" field count as "train").
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import sys

import torch

from infer.draft.calibration import FILE_NAME, CalibrationError
from train.calibration_fit import FOLDS, PER_RANK, fit, plot_reliability, summary
from train.config import RecipeError, read_saved_recipe

log = logging.getLogger("calibrate")

TOP_M = 10  # candidates per head recorded and calibrated
MAX_T = 4.0  # temperatures are fitted within [1 / MAX_T, MAX_T]
GRID = 25  # inverse temperatures at which log Z is recorded (odd: 1 is a grid point)
CHUNK = 128  # positions per head forward (bounds the [K, chunk, V] logits)


def beta_grid(max_t: float = MAX_T, n: int = GRID) -> torch.Tensor:
    """[n] inverse temperatures, log-spaced in [1 / max_t, max_t], with exactly 1 in the middle."""
    betas = torch.exp(torch.linspace(-math.log(max_t), math.log(max_t), n, dtype=torch.float64))
    betas[n // 2] = 1.0
    return betas


BETAS = beta_grid()


# ------------------------------------------------------------------------------------------------ collection
def candidate_stats(logits, targets, top_m: int = TOP_M, betas=BETAS, to_full=None) -> dict:
    """logits [K, N, V], accepted token ids [K, N] -> top_logits, correct [K, N, m]; lse, dlse [K, N, G]."""
    top, idx = logits.topk(min(top_m, logits.shape[-1]), dim=-1)
    ids = to_full(idx) if to_full is not None else idx
    lse, dlse = [], []
    for beta in betas.tolist():
        s = logits * beta
        lz = torch.logsumexp(s, -1)  # log Z(beta)
        lse.append(lz)
        dlse.append((torch.exp(s - lz[..., None]) * logits).sum(-1))  # d log Z / d beta = E_beta[z]
    return {
        "top_logits": top.float().cpu(),
        "correct": (ids == targets[..., None].to(ids.device)).cpu(),
        "lse": torch.stack(lse, -1).float().cpu(),
        "dlse": torch.stack(dlse, -1).float().cpu(),
    }


@torch.no_grad()
def greedy_chain(model, ids: torch.Tensor, positions: torch.Tensor, depth: int, chunk: int = 512):
    """ids [T], positions [P] -> (hidden [T, H], chain [depth + 1, P]): chain[j, p] is the (j+1)-th token of the
    base model's greedy continuation of ids[: positions[p] + 1]. One forward of the sequence, then ``depth`` forwards
    that extend every position's chain at once (a block mask: prefix up to its position + its own chain)."""
    from transformers import DynamicCache

    from infer.model.backbone import additive_mask, decoder_and_head, forward_hidden, project, truncate_cache

    decoder, lm_head = decoder_and_head(model)
    dtype = next(model.parameters()).dtype
    T, dev = ids.numel(), ids.device
    cache = DynamicCache(config=model.config)
    hidden = forward_hidden(decoder, ids[None], cache, torch.arange(T, device=dev)[None])[0]  # [T, H]
    first = project(model, lm_head, hidden).argmax(-1)  # [T]
    chains = []
    for c in positions.to(dev).split(chunk):
        truncate_cache(cache, T)  # back to the sequence itself
        P = c.numel()
        prefix = torch.arange(T, device=dev)[None] <= c[:, None]  # [P, T]
        chain = [first[c]]
        for j in range(1, depth + 1):
            visible = torch.cat([prefix, torch.eye(P, dtype=torch.bool, device=dev).repeat(1, j)], 1)
            h = forward_hidden(decoder, chain[-1][None], cache, (c + j)[None], additive_mask(visible, dtype))[
                0
            ]
            chain.append(project(model, lm_head, h).argmax(-1))
        chains.append(torch.stack(chain))
    return hidden, torch.cat(chains, 1)


@torch.no_grad()
def collect(
    model,
    heads,
    tokenizer,
    records: list[dict],
    top_m: int = TOP_M,
    max_examples: int | None = None,
    max_length: int = 2048,  # tokens per conversation (truncated on the right)
    template: str | None = None,  # chat template; None = the tokenizer's own
    verify_with_model: bool = False,  # accepted tokens from the base model's greedy chain, not the data
    chunk: int = CHUNK,
) -> dict:
    """Conversations ({"messages"} or pre-tokenised {"input_ids", "labels"}) -> per-position candidate statistics.

    Head k is scored at position t when tokens t+1 .. t+k+2 are all assistant tokens (labels != -100): at decode
    time the heads only run inside generated text. Returns top_logits, correct [K, N, m]; lse, dlse [K, N, G];
    betas [G]; valid [K, N] (head k scored at that position); example [N]; and counts.
    """
    from data.chat import IGNORE_INDEX, tokenize_messages
    from infer.model.backbone import decoder_and_head

    K = heads.num_heads
    device = next(model.parameters()).device
    heads.to(device)
    hdtype = next(heads.parameters(), torch.empty(0)).dtype
    decoder, lm_head = decoder_and_head(model)
    parts: dict[str, list] = {k: [] for k in ("top_logits", "correct", "lse", "dlse", "valid", "example")}
    used = 0
    for rec in records[:max_examples] if max_examples else records:
        ex = (
            rec if "input_ids" in rec else tokenize_messages(tokenizer, rec["messages"], max_length, template)
        )
        ids = torch.as_tensor(ex["input_ids"], dtype=torch.long, device=device)
        labels = torch.as_tensor(ex["labels"], dtype=torch.long, device=device)
        T = ids.numel()
        lab = labels != IGNORE_INDEX
        valid = torch.zeros(K, T, dtype=torch.bool, device=device)  # [K, T]
        ok = lab[1:]
        for k in range(min(K, T - 2)):  # heads run only inside generated text: t+1 .. t+k+2 all assistant
            ok = ok[:-1] & lab[k + 2 :]
            valid[k, : T - k - 2] = ok
        pos = valid.any(0).nonzero().squeeze(1)  # [P]
        if pos.numel() == 0:
            continue
        if verify_with_model:
            hidden, chain = greedy_chain(model, ids, pos, K)
            targets = chain[1:]  # [K, P]: head k predicts the (k+2)-th token
        else:
            hidden = decoder(input_ids=ids[None], use_cache=False).last_hidden_state[0]
            shifted = pos[None] + torch.arange(2, K + 2, device=device)[:, None]  # [K, P]
            targets = torch.where(shifted < T, ids[shifted.clamp(max=T - 1)], -1)
        for c in range(0, pos.numel(), chunk):
            p = pos[c : c + chunk]
            logits = heads(hidden[p].to(hdtype), lm_head).float()  # [K, c, V]
            stats = candidate_stats(logits, targets[:, c : c + chunk], top_m, BETAS, heads.to_full_vocab)
            for key, value in stats.items():
                parts[key].append(value)
        parts["valid"].append(valid[:, pos].cpu())
        parts["example"].append(torch.full((pos.numel(),), used, dtype=torch.long))
        used += 1
        if used % 100 == 0:
            log.info("collected %d conversations", used)
    if used == 0:
        raise CalibrationError("no conversation has an assistant token far enough in to score any head")
    return _stack(parts, used, "base model greedy chain" if verify_with_model else "data tokens")


def _stack(parts: dict, used: int, targets: str) -> dict:
    """Per-chunk lists -> the collected statistics (see :func:`collect`)."""
    out = {k: torch.cat(v, 1 if k != "example" else 0) for k, v in parts.items()}
    out |= {"betas": BETAS.clone(), "num_examples": used, "top_m": out["top_logits"].shape[-1]}
    return out | {"targets": targets}


def first_prompt(tokenizer, record: dict, template: str | None = None) -> torch.Tensor | None:
    """A conversation record -> input ids [1, L] of its messages up to the first user turn (generation prompt
    added), or None when it has no user turn."""
    msgs = record.get("messages") or []
    first = next((i for i, m in enumerate(msgs) if m.get("role") == "user"), None)
    if first is None:
        return None
    from data.chat import resolve_template

    text = tokenizer.apply_chat_template(
        msgs[: first + 1],
        tokenize=False,
        add_generation_prompt=True,
        chat_template=resolve_template(tokenizer, template),
    )
    return tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids


@torch.no_grad()
def _engine(model, name: str):
    from infer.engine.single import make_engine

    engine, reason = make_engine(model, name)
    log.info("engine %s -> %s", name, reason)
    return engine


def collect_decode(
    model,
    heads,
    tokenizer,
    records: list[dict],
    top_m: int = TOP_M,
    max_examples: int | None = None,
    max_new_tokens: int = 128,  # tokens decoded per conversation (its first user turn)
    node_budget: int = 16,  # the dynamic tree the decoder runs while collecting (raw head probabilities)
    template: str | None = None,
    engine=None,  # infer.engine.single: who runs the decoder's steps (None: eager)
) -> dict:
    """Events on the positions decoding visits, conditioned on the path: the real decoder (greedy, dynamic tree)
    answers each conversation's first user turn; at every tree step's root it records the heads' input. Then,
    for each such root and depth k+1, head k's top-m candidates (sequential heads: drafted on the true path,
    the tokens greedy decoding went on to emit) and whether each is that true token. An event of depth k+1
    counts only where the true tokens of depths 1..k were each among their head's top-m: the node's parent could
    be in the tree and accepted. Same output as :func:`collect` (one "position" per tree step)."""
    from infer.decode.single import DecodeConfig, generate
    from infer.model.backbone import decoder_and_head, stop_ids

    K = heads.num_heads
    device = next(model.parameters()).device
    heads.to(device=device, dtype=next(model.parameters()).dtype)  # as served: the heads in the model's dtype
    hdtype = next(heads.parameters(), torch.empty(0)).dtype
    _, lm_head = decoder_and_head(model)
    embed = model.get_input_embeddings()
    cfg = DecodeConfig(
        tree="dynamic", node_budget=node_budget, top_m=8, max_new_tokens=max_new_tokens, drafter="heads"
    )
    cfg.keep_hidden = True
    eos = stop_ids(model, tokenizer)
    parts: dict[str, list] = {k: [] for k in ("top_logits", "correct", "lse", "dlse", "valid", "example")}
    used, steps, tokens = 0, 0, 0
    from tqdm.auto import tqdm

    todo = records[:max_examples] if max_examples else records
    for rec in tqdm(todo, desc=f"calibration: decoding {len(todo)} conversations", unit="conv"):
        ids = first_prompt(tokenizer, rec, template)
        if ids is None:
            continue
        out = generate(model, ids.to(device), heads, cfg, eos=eos, engine=engine)
        if not out.roots:
            continue
        toks = torch.tensor(out.tokens, device=device)
        roots = torch.tensor(out.roots, device=device)  # [S]
        S, n = roots.numel(), toks.numel()
        offs = roots[:, None] + torch.arange(K + 1, device=device)  # [S, K+1]: root, depth 1 .. K
        known = offs < n
        path = toks[offs.clamp(max=n - 1)]  # [S, K+1] the greedy path from each root
        hidden = torch.stack(out.hiddens).to(device, hdtype)  # [S, H]
        path_emb = embed(path[:, :K]) if heads.sequential else None  # head k reads the root + k true drafts
        logits = heads(hidden, lm_head, path_emb).float()  # [K, S, V]
        targets = torch.where(known[:, 1:], path[:, 1:], -1).T  # [K, S]
        stats = candidate_stats(logits, targets, top_m, BETAS, heads.to_full_vocab)
        reach = torch.cumprod(
            stats["correct"].any(-1).to(torch.int8), 0
        ).bool()  # [K, S] depths 1..k+1 in top-m
        parent_ok = torch.cat([torch.ones(1, S, dtype=torch.bool), reach[:-1]])
        for key, value in stats.items():
            parts[key].append(value)
        parts["valid"].append(known[:, 1:].T.cpu() & parent_ok)
        parts["example"].append(torch.full((S,), used, dtype=torch.long))
        used, steps, tokens = used + 1, steps + S, tokens + n
    if used == 0:
        raise CalibrationError("no conversation with a user turn to decode")
    return _stack(parts, used, "decode events: greedy path, parent reachable")


# ---------------------------------------------------------------------------------------- data and checks
def load_records(path: str, split: str | None = None, skip_bad: bool = False) -> tuple[list[dict], list[str]]:
    """Conversations of ``path`` (of one split) -> (normalised records, split of each record).

    Local .json/.jsonl files: records filtered by their "split" field (missing = "train"). Dataset folders and hub
    ids: ``split`` names the dataset split.
    """
    from data.conversations import iter_records, load_conversations, normalise_record

    if not (os.path.isfile(path) and path.endswith((".json", ".jsonl"))):
        records, _ = load_conversations(path, skip_bad=skip_bad, split=split or "train")
        return records, [split or "train"] * len(records)
    stem = os.path.splitext(os.path.basename(path))[0]
    records, splits, seen, skipped = [], [], set(), 0
    for index, line, raw in iter_records(path):
        s = raw.get("split", "train") if isinstance(raw, dict) else "train"
        seen.add(s)
        if split is not None and s != split:
            continue
        try:
            records.append(normalise_record(raw, index, default_id=f"{stem}-{index}"))
        except Exception as e:
            if skip_bad:
                skipped += 1
                log.warning("%s: record %d skipped: %s", path, index, e)
                continue
            where = f"record {index}" + (f" (line {line})" if line else "")
            raise CalibrationError(f"{path}: {where}: {e} (--skip-bad to skip such records)") from None
        splits.append(s)
    if skipped:
        log.warning("%s: skipped %d bad record(s) (--skip-bad), kept %d", path, skipped, len(records))
    if not records:
        raise CalibrationError(
            f"{path}: no usable conversations with split {split!r} (splits: {sorted(seen)})"
        )
    return records, splits


def training_sources(heads_folder: str) -> list[tuple[str, str | None, str]]:
    """(data path, split or None, where it is named) of the heads' training data, from recipe.yaml / metrics.json."""
    out = []
    recipe = read_saved_recipe(heads_folder)
    if recipe is not None:
        out.append((recipe.data.path, recipe.data.split, "recipe.yaml data.path"))
    metrics = os.path.join(heads_folder, "metrics.json")
    if os.path.exists(metrics):
        with open(metrics) as f:
            raw = json.load(f)
        if isinstance(raw, dict) and isinstance(raw.get("train_data"), str):
            out.append((raw["train_data"], raw.get("train_split"), "metrics.json train_data"))
    return out


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def same_data(train_path: str, data_path: str, heads_folder: str) -> bool:
    """True when the training data path names the same data (same file, or a copy with the same bytes). A path
    that does not exist here matches by file name: better a refusal that --force lifts than a silent leak."""
    data_path = os.path.expanduser(data_path)
    tried = [os.path.expanduser(train_path), os.path.join(heads_folder, os.path.expanduser(train_path))]
    found = next((p for p in tried if os.path.exists(p)), None)
    if found is None or not os.path.exists(data_path):
        return os.path.basename(train_path.rstrip("/")) == os.path.basename(data_path.rstrip("/"))
    if os.path.samefile(found, data_path):
        return True
    if os.path.isfile(found) and os.path.isfile(data_path):
        return os.path.getsize(found) == os.path.getsize(data_path) and _sha256(found) == _sha256(data_path)
    return False


def check_not_training_data(
    heads_folder: str, data_path: str, splits: list[str], force: bool = False
) -> None:
    """Refuse (CalibrationError) records of ``data_path`` that the heads were trained on; with force, warn."""
    for train_path, train_split, where in training_sources(heads_folder):
        if not same_data(train_path, data_path, heads_folder):
            continue
        train_split = train_split or "train"
        n = sum(s == train_split for s in splits)
        if n == 0:
            continue
        msg = (
            f"{data_path}: {n} of {len(splits)} records are the heads' training data ({where} names "
            f"{train_path!r}, split {train_split!r}); calibrating on them gives over-confident maps. Use the "
            "held-out split (--split calib) or another file, or pass --force to calibrate anyway."
        )
        if not force:
            raise CalibrationError(msg)
        log.warning("--force: %s", msg)


# ---------------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.calibrate", description=__doc__.split("\n\n")[0])
    add = p.add_argument
    add("heads", help="heads folder (or Hub id, then --out is needed)")
    add("--data", required=True, help="conversations: .json/.jsonl, dataset folder or id")
    add("--split", default=None, help="only records of this split (e.g. calib); default: all")
    add("--model", default=None, help="base model; default: the recipe's, else the heads' base model")
    add("--dtype", default="float32", help="base model dtype: float32, bfloat16 or float16")
    add("--device", default=None, help="default: cuda when available, else cpu")
    add("--top-m", type=int, default=TOP_M, help="candidates per head")
    add("--max-examples", type=int, default=0, help="use the first N conversations (0 = all)")
    add("--max-length", type=int, default=None, help="tokens per conversation; default: recipe's, 2048")
    add("--template", default=None, help="chat template; default: the recipe's, else the tokenizer's")
    add(
        "--verify-with-model",
        action="store_true",
        help="--events positions: targets from the model's greedy chain, not the data",
    )
    add(
        "--events",
        choices=("decode", "positions"),
        default="decode",
        help="decode: run the decoder on each conversation's first user turn and fit on the tree steps it visits, "
        "each depth conditioned on its parent being reachable (default); positions: every assistant position, "
        "marginal per head (the older fit)",
    )
    add("--max-new-tokens", type=int, default=128, help="--events decode: tokens decoded per conversation")
    add("--node-budget", type=int, default=16, help="--events decode: nodes of the dynamic tree decoded with")
    add("--engine", choices=("auto", "compiled", "eager"), default="auto",
        help="--events decode: the engine the decoder runs on (infer.generate --engine; compiled trees are cut "
        "to its largest step)")  # fmt: skip
    add("--folds", type=int, default=FOLDS, help="cross-fitting folds")
    add("--per-rank", type=int, default=PER_RANK, help="ranks that may get their own isotonic map")
    add("--out", default=None, help="default: HEADS/calibration.json")
    add("--plots", default=None, help="reliability diagrams folder; default: HEADS/calibration_plots")
    add("--no-plots", action="store_true", help="skip the reliability diagrams")
    add("--skip-bad", action="store_true", help="skip malformed records")
    add("--force", action="store_true", help="calibrate even on the heads' own training data")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    opts = vars(args)
    heads, data = opts.pop("heads"), opts.pop("data")
    opts["max_examples"] = opts["max_examples"] or None
    opts["model_name"] = opts.pop("model")
    opts["plots"] = None if opts.pop("no_plots") else (opts["plots"] or "")
    try:
        calibrate(heads, data, **opts)
    except (CalibrationError, RecipeError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def calibrate(
    heads: str,
    data: str,
    *,
    split: str | None = None,
    model_name: str | None = None,
    dtype: str = "float32",
    device: str | None = None,
    top_m: int = TOP_M,
    max_examples: int | None = None,
    max_length: int | None = None,
    template: str | None = None,
    verify_with_model: bool = False,
    events: str = "decode",
    max_new_tokens: int = 128,
    node_budget: int = 16,
    folds: int = FOLDS,
    per_rank: int = PER_RANK,
    out: str | None = None,
    plots: str | None = "",
    skip_bad: bool = False,
    force: bool = False,
    engine: str = "auto",
):
    """Fit calibration maps for the heads in ``heads`` on the conversations of ``data`` and write them.

    The same as the CLI (see ``--help`` for each option); training calls it at the end of a run. ``plots``: a
    folder for the reliability diagrams, "" = HEADS/calibration_plots, None = none. Defaults the heads' saved
    recipe (read back through the schema) does not fix: the base model, chat template and max length. Raises
    CalibrationError / RecipeError / HeadsError; returns the fitted Calibration.
    """
    from infer.draft.heads import MedusaHeads, resolve_heads_path
    from infer.model.base import load_base_model

    folder = resolve_heads_path(heads)
    if out is None and not os.path.isdir(heads):
        raise CalibrationError("heads from the Hub: pass --out for calibration.json")
    out = out or os.path.join(folder, FILE_NAME)
    records, splits = load_records(data, split, skip_bad)
    check_not_training_data(folder, data, splits, force)
    recipe = read_saved_recipe(folder)
    heads_obj = MedusaHeads.from_pretrained(folder)
    recorded = recipe.model.name_or_path if recipe is not None else None
    model_name = model_name or _existing(recorded) or heads_obj.config.base_model_name_or_path or None
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = load_base_model(model_name, dtype, device=device)
    heads_obj.check_base(model)
    heads_obj.eval()
    template = template or (recipe.data.template if recipe is not None else None)
    if events == "decode":
        col = collect_decode(
            model,
            heads_obj,
            tokenizer,
            records,
            top_m=top_m,
            max_examples=max_examples,
            max_new_tokens=max_new_tokens,
            node_budget=node_budget,
            template=template,
            engine=_engine(model, engine),
        )
    else:
        col = collect(
            model,
            heads_obj,
            tokenizer,
            records,
            top_m=top_m,
            max_examples=max_examples,
            max_length=max_length or (recipe.data.max_length if recipe is not None else 2048),
            template=template,
            verify_with_model=verify_with_model,
        )
    fitted_on = {
        "data": os.path.abspath(data) if os.path.exists(data) else data,
        "split": split,
        "heads": os.path.abspath(folder),
        "model": model_name or "default",
        "positions": [int(v) for v in col["valid"].sum(1)],
        "events": events,
        "forced": bool(force),
    }
    cal = fit(col, folds=folds, per_rank=per_rank, fitted_on=fitted_on)
    cal.to_file(out)
    print(summary(cal))
    print(f"\nwrote {out}")
    if plots is not None:
        try:
            paths = plot_reliability(cal, plots or os.path.join(folder, "calibration_plots"))
            print(f"wrote {len(paths)} reliability diagrams to {os.path.dirname(paths[0]) if paths else '-'}")
        except ImportError:
            log.warning("matplotlib is not installed: no reliability diagrams (pip install matplotlib)")
    return cal


def _existing(path) -> str | None:
    return path if isinstance(path, str) and os.path.isdir(path) else None


if __name__ == "__main__":
    sys.exit(main())
