"""Fitting and reporting of head calibration maps (used by ``python -m train.calibrate``).

Input: the statistics :func:`train.calibrate.collect` gathers (per head: top-m raw logits, whether each candidate
is the token verification accepts, log Z on a grid of inverse temperatures). Per head, candidate maps (identity,
temperature, isotonic on the raw or temperature-scaled probability, shared or per rank) are scored by cross-fitted
held-out log-loss over the top-m Bernoulli events; the best is refitted on everything. Reports: ECE, Brier,
log-loss before/after, the per-rank accuracy table, reliability diagrams.
"""

from __future__ import annotations

import datetime
import logging
import math
import os

import torch

from infer.draft.calibration import EPS, Calibration, CalibrationError, HeadMap

log = logging.getLogger("calibrate")

FOLDS = 2  # cross-fitting folds (by conversation)
PER_RANK = 3  # ranks r < PER_RANK may get their own isotonic map
MIN_RANK_EVENTS = 200  # a rank gets its own map only with this many events
MAX_BINS = 400  # equal-count bins fed to the pool-adjacent-violators fit
MIN_GAIN = 1e-4  # a more complex map must beat a simpler one by this much held-out log-loss (nats per event)
ECE_BINS = 15  # equal-width bins of the reliability diagram and ECE


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
        log.warning(
            "fitted temperature %.3g is at the edge of the grid [%.3g, %.3g]",
            math.exp(u),
            *map(math.exp, (us[0], us[-1])),
        )
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
