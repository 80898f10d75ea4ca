"""Fit per-head calibration maps on data the heads never trained on; write ``calibration.json`` beside the heads.

    python -m train.calibrate HEADS --data data/smollm2/distilled.jsonl --split calib [--model BASE] [--top-m 10]
        [--max-examples N] [--out HEADS/calibration.json] [--plots DIR] [--verify-with-model] [--force]

1. Collect (:func:`collect`): for every assistant position, each head's top-m candidates, their raw logits, whether
   each is the token verification would accept there, and log Z(beta) = logsumexp(beta * z) on a grid of inverse
   temperatures (so that temperatures can be fitted without keeping the full logits). The accepted token for head
   k at position t is, by default, the data token at t+k+2: exact for self-distilled data (the base model's own
   greedy continuation, data/distill.py). ``--verify-with-model`` instead takes the base model's greedy chain from
   every position (K extra batched forwards per conversation): exact for any data, e.g. ShareGPT.
2. Fit (:func:`fit`): per head, candidate maps (identity, temperature, isotonic on the raw or temperature-scaled
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
import datetime
import hashlib
import json
import logging
import math
import os
import sys

import torch

from infer.calibration import EPS, FILE_NAME, Calibration, CalibrationError, HeadMap

log = logging.getLogger("calibrate")

TOP_M = 10  # candidates per head recorded and calibrated
MAX_T = 4.0  # temperatures are fitted within [1 / MAX_T, MAX_T]
GRID = 25  # inverse temperatures at which log Z is recorded (odd: 1 is a grid point)
CHUNK = 128  # positions per head forward (bounds the [K, chunk, V] logits)
FOLDS = 2  # cross-fitting folds (by conversation)
PER_RANK = 3  # ranks r < PER_RANK may get their own isotonic map
MIN_RANK_EVENTS = 200  # a rank gets its own map only with this many events
MAX_BINS = 400  # equal-count bins fed to the pool-adjacent-violators fit
MIN_GAIN = 1e-4  # a more complex map must beat a simpler one by this much held-out log-loss (nats per event)
ECE_BINS = 15  # equal-width bins of the reliability diagram and ECE


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

    from infer.decode import compact_kv, decoder_and_head, forward_hidden, project

    decoder, lm_head = decoder_and_head(model)
    dtype = next(model.parameters()).dtype
    T, dev = ids.numel(), ids.device
    cache = DynamicCache(config=model.config)
    hidden = forward_hidden(decoder, ids[None], cache, torch.arange(T, device=dev)[None])[0]  # [T, H]
    first = project(model, lm_head, hidden).argmax(-1)  # [T]
    chains = []
    for c in positions.to(dev).split(chunk):
        compact_kv(cache, T, torch.zeros(0, dtype=torch.long, device=dev))  # back to the sequence itself
        P = c.numel()
        prefix = torch.arange(T, device=dev)[None] <= c[:, None]  # [P, T]
        chain = [first[c]]
        for j in range(1, depth + 1):
            visible = torch.cat([prefix, torch.eye(P, dtype=torch.bool, device=dev).repeat(1, j)], 1)
            mask = torch.zeros(1, 1, P, T + j * P, dtype=dtype, device=dev)
            mask[0, 0].masked_fill_(~visible, torch.finfo(dtype).min)
            h = forward_hidden(decoder, chain[-1][None], cache, (c + j)[None], mask)[0]  # [P, H]
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
    from infer.decode import decoder_and_head

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
    out = {k: torch.cat(v, 1 if k != "example" else 0) for k, v in parts.items()}
    out |= {"betas": BETAS.clone(), "num_examples": used, "top_m": out["top_logits"].shape[-1]}
    out["targets"] = "base model greedy chain" if verify_with_model else "data tokens"
    return out


# ------------------------------------------------------------------------------------------------- fitting
def _head(col: dict, k: int) -> dict:
    """Head k's rows (valid positions only), in float64."""
    rows = col["valid"][k]
    d = {key: col[key][k, rows].double() for key in ("top_logits", "correct", "lse", "dlse")}
    return d | {"betas": col["betas"].double(), "example": col["example"][rows]}


def _take(d: dict, rows: torch.Tensor) -> dict:
    return {k: (v if k == "betas" else v[rows]) for k, v in d.items()}


def scaled_logp(d: dict, temperature: float) -> torch.Tensor:
    """log softmax(z / T) of the top-m candidates [n, m]; log Z by cubic Hermite interpolation over the grid."""
    betas, beta = d["betas"], 1.0 / temperature
    g = int(torch.searchsorted(betas, torch.tensor([beta], dtype=betas.dtype), right=True)) - 1
    g = min(max(g, 0), betas.numel() - 2)
    h = float(betas[g + 1] - betas[g])
    s = min(max((beta - float(betas[g])) / h, 0.0), 1.0)
    h00, h10, h01, h11 = 2 * s**3 - 3 * s**2 + 1, s**3 - 2 * s**2 + s, -2 * s**3 + 3 * s**2, s**3 - s**2
    lz = (
        h00 * d["lse"][:, g]
        + h10 * h * d["dlse"][:, g]
        + h01 * d["lse"][:, g + 1]
        + h11 * h * d["dlse"][:, g + 1]
    )
    return (beta * d["top_logits"] - lz[:, None]).clamp(max=0.0)


def log_loss(q: torch.Tensor, y: torch.Tensor) -> float:
    q = q.clamp(EPS, 1 - EPS)
    return float(-(y * q.log() + (1 - y) * (1 - q).log()).mean())


def fit_temperature(d: dict) -> float:
    """T minimising the log-loss of the top-m events: a scan of the grid, then golden-section search in log T."""
    loss = lambda u: log_loss(scaled_logp(d, math.exp(u)).exp(), d["correct"])  # noqa: E731
    us = (-d["betas"].log()).flip(0).tolist()  # ascending log T
    vals = [loss(u) for u in us]
    i = min(range(len(us)), key=vals.__getitem__)
    a, b = us[max(i - 1, 0)], us[min(i + 1, len(us) - 1)]
    phi = (math.sqrt(5) - 1) / 2
    c, e = b - phi * (b - a), a + phi * (b - a)
    fc, fe = loss(c), loss(e)
    for _ in range(40):
        if fc < fe:
            b, e, fe = e, c, fc
            c = b - phi * (b - a)
            fc = loss(c)
        else:
            a, c, fc = c, e, fe
            e = a + phi * (b - a)
            fe = loss(e)
    u = (a + b) / 2
    if u <= us[0] + 1e-3 or u >= us[-1] - 1e-3:
        log.warning("fitted temperature %.3g is at the edge of the grid (MAX_T = %g)", math.exp(u), MAX_T)
    return float(f"{math.exp(u):.6g}")


def pav(y: list[float], w: list[float], x: list[float]) -> list[tuple[float, float, float]]:
    """Pool-adjacent-violators: y sorted by x, weights w -> blocks (x mean, y mean, weight), y strictly increasing."""
    blocks: list[list[float]] = []  # [sum w*y, sum w, sum w*x]
    for yi, wi, xi in zip(y, w, x):
        blocks.append([yi * wi, wi, xi * wi])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] >= blocks[-1][0] / blocks[-1][1]:
            top = blocks.pop()
            for j in range(3):
                blocks[-1][j] += top[j]
    return [(sx / sw, sy / sw, sw) for sy, sw, sx in blocks]


def fit_isotonic(p: torch.Tensor, y: torch.Tensor, max_bins: int = MAX_BINS) -> dict:
    """Events (probability p [n], outcome y [n]) -> monotone knots {"x", "y"}: PAV over equal-count bins."""
    order = p.argsort()
    p, y = p[order], y[order]
    parts = torch.arange(p.numel()).tensor_split(min(max_bins, p.numel()))
    w = [float(len(b)) for b in parts]
    xs = [float(p[b].mean()) for b in parts]
    ys = [float(y[b].mean()) for b in parts]
    knots_x, knots_y = [], []
    for bx, by, _ in pav(ys, w, xs):
        bx, by = float(f"{bx:.7g}"), float(f"{min(max(by, EPS), 1 - EPS):.7g}")
        if knots_x and bx <= knots_x[-1]:  # equal x (ties): keep the higher block value
            knots_y[-1] = max(knots_y[-1], by)
            continue
        knots_x.append(min(max(bx, 0.0), 1.0))
        knots_y.append(by)
    return {"x": knots_x, "y": knots_y}


def _candidate_maps(d: dict, per_rank: int, max_bins: int) -> dict[str, HeadMap]:
    """Every candidate map fitted on head data d, simplest first."""
    T = fit_temperature(d)
    maps = {"identity": HeadMap(), "temperature": HeadMap("temperature", T)}
    y = d["correct"]
    for name, temp in (("isotonic", 1.0), ("temperature+isotonic", T)):
        p = scaled_logp(d, temp).exp()
        shared = fit_isotonic(p.reshape(-1), y.reshape(-1), max_bins)
        maps[name] = HeadMap("isotonic", temp, **shared)
        if p.shape[0] >= MIN_RANK_EVENTS and per_rank > 0:
            ranks = [fit_isotonic(p[:, r], y[:, r], max_bins) for r in range(min(per_rank, p.shape[1]))]
            maps[name + " per rank"] = HeadMap("isotonic", temp, ranks=ranks, **shared)
    return maps


def predict(d: dict, hm: HeadMap) -> torch.Tensor:
    """Calibrated probabilities [n, m] of head data d under map hm (the runtime code path)."""
    return Calibration([hm]).map_scaled(scaled_logp(d, hm.temperature)[None])[0].exp().double()


def event_metrics(q: torch.Tensor, y: torch.Tensor, bins: int = ECE_BINS) -> dict:
    """Probabilities q [n, m] of events y [n, m] -> ECE, Brier, log-loss, top-1 prediction, reliability bins."""
    qf, yf = q.reshape(-1).double(), y.reshape(-1).double()
    b = (qf * bins).long().clamp(0, bins - 1)
    count = torch.bincount(b, minlength=bins).double()
    conf = torch.bincount(b, qf, minlength=bins) / count.clamp_min(1)
    acc = torch.bincount(b, yf, minlength=bins) / count.clamp_min(1)
    r5 = lambda t: [round(float(v), 5) for v in t]  # noqa: E731
    return {
        "ece": round(float((count / qf.numel() * (conf - acc).abs()).sum()), 6),
        "brier": round(float(((qf - yf) ** 2).mean()), 6),
        "log_loss": round(log_loss(qf, yf), 6),
        "top1_pred": round(float(q[:, 0].mean()), 5),
        "reliability": {"conf": r5(conf), "acc": r5(acc), "count": [int(c) for c in count]},
    }


def _folds(example: torch.Tensor, folds: int, seed: int) -> torch.Tensor:
    """Fold id per row, by conversation (by row when there are too few conversations)."""
    uniq, inv = example.unique(return_inverse=True)
    if uniq.numel() < folds:
        return torch.arange(example.numel()) % folds
    perm = torch.randperm(uniq.numel(), generator=torch.Generator().manual_seed(seed))
    return (perm.argsort() % folds)[inv]


def fit_head(d: dict, folds: int = FOLDS, per_rank: int = PER_RANK, max_bins: int = MAX_BINS, seed: int = 0):
    """One head: choose the map by cross-fitted held-out log-loss, refit it on all rows. -> HeadMap with metrics."""
    n, m = d["correct"].shape
    y = d["correct"]
    fold = _folds(d["example"], folds, seed)
    held: dict[str, torch.Tensor] = {}
    for f in range(folds):
        train, test = (fold != f).nonzero().squeeze(1), (fold == f).nonzero().squeeze(1)
        if train.numel() == 0 or test.numel() == 0:
            continue
        for name, hm in _candidate_maps(_take(d, train), per_rank, max_bins).items():
            held.setdefault(name, torch.zeros(n, m, dtype=torch.float64))[test] = predict(_take(d, test), hm)
    scores = {name: log_loss(q, y) for name, q in held.items()}
    best = "identity"
    for name, score in scores.items():  # simplest first: a complex map must earn its place
        if score < scores[best] - MIN_GAIN:
            best = name
    final = _candidate_maps(d, per_rank, max_bins)[best]
    raw = predict(d, HeadMap())
    final.metrics = {
        "choice": best,
        "positions": n,
        "held_out_log_loss": {k: round(v, 6) for k, v in scores.items()},
        "top1_acc": round(float(y[:, 0].mean()), 5),
        "top_m_hit": round(float(y.sum(1).clamp(max=1).mean()), 5),
        "before": event_metrics(raw, y),
        "after": event_metrics(held.get(best, raw), y),  # cross-fitted: measured on held-out rows
    }
    return final


def fit(
    collected: dict,
    folds: int = FOLDS,  # cross-fitting folds (by conversation)
    per_rank: int = PER_RANK,  # ranks that may get their own isotonic map
    max_bins: int = MAX_BINS,  # bins for the isotonic fit
    seed: int = 0,  # fold assignment
    fitted_on: dict | None = None,  # provenance stored in calibration.json
) -> Calibration:
    """Collected statistics (see :func:`collect`) -> Calibration, with per-head metrics and ``rank_accuracy``."""
    if folds < 2:
        raise CalibrationError(f"folds must be >= 2 (cross-fitting), got {folds}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small element-wise work: threads only add contention (10-100x on busy CPUs)
    try:
        return _fit(collected, folds, per_rank, max_bins, seed, fitted_on)
    finally:
        torch.set_num_threads(threads)


def _fit(collected, folds, per_rank, max_bins, seed, fitted_on) -> Calibration:
    K, _, m = collected["correct"].shape
    maps, rank_acc = [], []
    for k in range(K):
        d = _head(collected, k)
        if d["correct"].shape[0] < 2 * folds:
            log.warning("head %d: only %d positions; left uncalibrated", k, d["correct"].shape[0])
            maps.append(HeadMap(metrics={"choice": "identity", "positions": d["correct"].shape[0]}))
            rank_acc.append([0.0] * m)
            continue
        maps.append(fit_head(d, folds, per_rank, max_bins, seed))
        rank_acc.append([round(float(v), 5) for v in d["correct"].mean(0)])
    info = {
        "examples": collected["num_examples"],
        "top_m": m,
        "targets": collected.get("targets", "data tokens"),
        "folds": folds,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    return Calibration(maps, rank_accuracy=rank_acc, fitted_on=info | (fitted_on or {}))


# ------------------------------------------------------------------------------------------------- reports
PAIRS = (("top1_pred", 18), ("ece", 15), ("brier", 15), ("log_loss", 17))  # summary columns: metric, width


def summary(cal: Calibration) -> str:
    """A per-head table (before -> after, held-out) and the per-rank accuracy table."""
    rows = [
        f"{'head':>4} {'method':<28} {'T':>6} {'positions':>9} {'top1 acc':>8} {'top1 pred raw->cal':>18} "
        f"{'ECE raw->cal':>15} {'Brier raw->cal':>15} {'log-loss raw->cal':>17}"
    ]
    for k, h in enumerate(cal.heads):
        mt = h.metrics
        if "before" not in mt:
            rows.append(f"{k:>4} {'identity (too few positions)':<28} {'':>6} {mt.get('positions', 0):>9}")
            continue
        b, a = mt["before"], mt["after"]
        rows.append(
            f"{k:>4} {mt['choice']:<28} {h.temperature:>6.3f} {mt['positions']:>9} {mt['top1_acc']:>8.4f} "
            + " ".join(_pair(b, a, key, width) for key, width in PAIRS)
        )
    if cal.rank_accuracy:
        m = len(cal.rank_accuracy[0])
        rows += [
            "",
            "P(rank r candidate is correct):",
            "head " + "".join(f"{'r' + str(r):>7}" for r in range(m)),
        ]
        rows += [f"{k:>4} " + "".join(f"{v:>7.4f}" for v in acc) for k, acc in enumerate(cal.rank_accuracy)]
    return "\n".join(rows)


def _pair(before: dict, after: dict, key: str, width: int) -> str:
    return f"{before[key]:.4f}->{after[key]:.4f}".rjust(width)


def plot_reliability(cal: Calibration, out_dir: str) -> list[str]:
    """One reliability diagram per head (before / after, from the stored bins) -> PNG paths."""
    from matplotlib.figure import Figure  # lazy, and no pyplot: the Agg canvas, no display needed

    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for k, h in enumerate(cal.heads):
        if "before" not in h.metrics:
            continue
        fig = Figure(figsize=(5, 5.6))
        ax, hist = fig.subplots(2, 1, height_ratios=[3, 1], sharex=True)
        ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="perfect")
        for when, color in (("before", "tab:red"), ("after", "tab:blue")):
            mt = h.metrics[when]
            rel = mt["reliability"]
            pts = [(c, a) for c, a, n in zip(rel["conf"], rel["acc"], rel["count"]) if n > 0]
            label = f"{'raw' if when == 'before' else h.metrics['choice']} (ECE {mt['ece']:.3f})"
            ax.plot(*zip(*pts), marker="o", color=color, label=label)
            centers = [(i + 0.5) / len(rel["count"]) for i in range(len(rel["count"]))]
            hist.bar(centers, rel["count"], width=1 / len(rel["count"]), color=color, alpha=0.4)
        ax.set(ylabel="fraction correct", xlim=(0, 1), ylim=(0, 1), title=f"head {k} (predicts t+{k + 2})")
        ax.legend(loc="upper left", fontsize=8)
        hist.set(xlabel="predicted probability", ylabel="events", yscale="log")
        fig.tight_layout()
        path = os.path.join(out_dir, f"reliability_head{k}.png")
        fig.savefig(path, dpi=100)
        paths.append(path)
    return paths


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
    records, splits, seen = [], [], set()
    for index, line, raw in iter_records(path):
        s = raw.get("split", "train") if isinstance(raw, dict) else "train"
        seen.add(s)
        if split is not None and s != split:
            continue
        try:
            records.append(normalise_record(raw, index, default_id=f"{stem}-{index}"))
        except Exception as e:
            if skip_bad:
                continue
            where = f"record {index}" + (f" (line {line})" if line else "")
            raise CalibrationError(f"{path}: {where}: {e} (--skip-bad to skip such records)") from None
        splits.append(s)
    if not records:
        raise CalibrationError(
            f"{path}: no usable conversations with split {split!r} (splits: {sorted(seen)})"
        )
    return records, splits


def training_sources(heads_folder: str) -> list[tuple[str, str | None, str]]:
    """(data path, split or None, where it is named) of the heads' training data, from recipe.yaml / metrics.json."""
    out = []
    recipe = os.path.join(heads_folder, "recipe.yaml")
    if os.path.exists(recipe):
        import yaml

        with open(recipe) as f:
            raw = yaml.safe_load(f) or {}
        data = _section(raw, "data")
        split = data.get("split") or data.get("train_split") or raw.get("train_split")
        for where, value in (
            ("train_data", raw.get("train_data")),
            ("data.train_data", data.get("train_data")),
        ):
            if isinstance(value, str):
                out.append((value, split, f"recipe.yaml {where}"))
        if isinstance(data.get("path"), str):
            out.append((data["path"], split, "recipe.yaml data.path"))
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
    add("--verify-with-model", action="store_true", help="targets: the model's greedy chain, not the data")
    add("--folds", type=int, default=FOLDS, help="cross-fitting folds")
    add("--per-rank", type=int, default=PER_RANK, help="ranks that may get their own isotonic map")
    add("--out", default=None, help="default: HEADS/calibration.json")
    add("--plots", default=None, help="reliability diagrams folder; default: HEADS/calibration_plots")
    add("--no-plots", action="store_true", help="skip the reliability diagrams")
    add("--skip-bad", action="store_true", help="skip malformed records")
    add("--force", action="store_true", help="calibrate even on the heads' own training data")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return _run(args)
    except (CalibrationError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _run(args) -> int:
    from infer.base import load_base_model
    from infer.heads import MedusaHeads, resolve_heads_path

    folder = resolve_heads_path(args.heads)
    if args.out is None and not os.path.isdir(args.heads):
        raise CalibrationError("heads from the Hub: pass --out for calibration.json")
    out = args.out or os.path.join(folder, FILE_NAME)
    records, splits = load_records(args.data, args.split, args.skip_bad)
    check_not_training_data(folder, args.data, splits, args.force)
    recipe = _recipe(folder)
    heads = MedusaHeads.from_pretrained(folder)
    model_name = args.model or _existing(_section(recipe, "model").get("name_or_path"))
    model_name = model_name or heads.config.base_model_name_or_path or None
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = load_base_model(model_name, args.dtype, device=device)
    heads.check_base(model)
    heads.eval()
    data_cfg = _section(recipe, "data")
    col = collect(
        model,
        heads,
        tokenizer,
        records,
        top_m=args.top_m,
        max_examples=args.max_examples or None,
        max_length=args.max_length or data_cfg.get("max_length") or 2048,
        template=args.template or data_cfg.get("template"),
        verify_with_model=args.verify_with_model,
    )
    fitted_on = {
        "data": os.path.abspath(args.data) if os.path.exists(args.data) else args.data,
        "split": args.split,
        "heads": os.path.abspath(folder),
        "model": model_name or "default",
        "positions": [int(v) for v in col["valid"].sum(1)],
        "forced": bool(args.force),
    }
    cal = fit(col, folds=args.folds, per_rank=args.per_rank, fitted_on=fitted_on)
    cal.to_file(out)
    print(summary(cal))
    print(f"\nwrote {out}")
    if not args.no_plots:
        try:
            paths = plot_reliability(cal, args.plots or os.path.join(folder, "calibration_plots"))
            print(f"wrote {len(paths)} reliability diagrams to {os.path.dirname(paths[0]) if paths else '-'}")
        except ImportError:
            log.warning("matplotlib is not installed: no reliability diagrams (pip install matplotlib)")
    return 0


def _recipe(folder: str) -> dict:
    path = os.path.join(folder, "recipe.yaml")
    if not os.path.exists(path):
        return {}
    import yaml

    with open(path) as f:
        raw = yaml.safe_load(f)
    return raw if isinstance(raw, dict) else {}


def _section(d: dict, name: str) -> dict:
    return d[name] if isinstance(d.get(name), dict) else {}


def _existing(path) -> str | None:
    return path if isinstance(path, str) and os.path.isdir(path) else None


if __name__ == "__main__":
    sys.exit(main())
