"""Calibrated head probabilities for the dynamic tree.

A tree's expected accepted tokens per step is 1 + the sum over its nodes of P(path to the node accepted), and
:func:`infer.draft.tree.dynamic_tree` keeps the paths with the largest product of head probabilities. Raw softmax values
of the heads are over-confident, so each head k gets a monotone map from its candidate's raw probability to the
probability that the candidate is the token verification accepts:

    "identity"     p = softmax(z)_i                        (raw; exactly the uncalibrated path)
    "temperature"  p = softmax(z / T_k)_i                  (one temperature per head)
    "isotonic"     p = f_k,r(softmax(z / T_k)_i)           (piecewise-linear, non-decreasing, knots x/y in [0, 1];
                                                            optional per-rank maps for ranks r < R, else shared)

Isotonic outputs are made non-increasing along the ranks (a running minimum) and, since at most one candidate of a
head is correct, rescaled so that they sum to at most 1. Calibrated log-probabilities are clamped to
[log 1e-6, 0]; identity heads are returned untouched.

On disk: ``calibration.json`` beside the heads (written by ``python -m train.calibrate``)::

    {"format": "medusa-calibration/1",
     "heads": [{"method": "isotonic", "temperature": 1.3, "x": [...], "y": [...],
                "ranks": [{"x": [...], "y": [...]}, ...], "metrics": {...}}, ...],
     "rank_accuracy": [[P(rank r of head k is correct) for r < top_m] for k < K],
     "fitted_on": {"data": ..., "split": ..., "examples": ..., ...}}
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field

import torch

FORMAT = "medusa-calibration/1"
FILE_NAME = "calibration.json"
METHODS = ("identity", "temperature", "isotonic")
EPS = 1e-6  # smallest calibrated probability
LOG_EPS = math.log(EPS)


class CalibrationError(ValueError):
    """A calibration that is malformed or does not fit the heads it is used with."""


@dataclass
class HeadMap:
    """The calibration of one head."""

    method: str = "identity"  # "identity", "temperature" or "isotonic"
    temperature: float = 1.0  # T: logits / T before the softmax ("temperature" and "isotonic")
    x: list[float] | None = None  # isotonic knots: temperature-scaled probability, ascending
    y: list[float] | None = None  # isotonic knots: calibrated probability, non-decreasing
    ranks: list[dict] | None = None  # optional per-rank maps [{"x", "y"}] for ranks r < len(ranks)
    metrics: dict = field(default_factory=dict)  # fit report (log-loss, ECE, ...), informative only

    def __post_init__(self):
        if self.method not in METHODS:
            raise CalibrationError(f"method must be one of {METHODS}, got {self.method!r}")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise CalibrationError(f"temperature must be a positive number, got {self.temperature!r}")
        if self.method == "identity" and self.temperature != 1.0:
            raise CalibrationError("identity calibration has temperature 1")
        if self.method == "isotonic":
            _check_knots(self.x, self.y, "isotonic map")
            for r, knots in enumerate(self.ranks or []):
                _check_knots(knots.get("x"), knots.get("y"), f"rank {r} map")

    def to_dict(self) -> dict:
        d = {"method": self.method, "temperature": self.temperature}
        if self.method == "isotonic":
            d |= {"x": list(self.x), "y": list(self.y)}
            if self.ranks:
                d["ranks"] = [{"x": list(k["x"]), "y": list(k["y"])} for k in self.ranks]
        if self.metrics:
            d["metrics"] = self.metrics
        return d

    @classmethod
    def from_dict(cls, d: dict) -> HeadMap:
        known = {"method", "temperature", "x", "y", "ranks", "metrics"}
        if not isinstance(d, dict) or set(d) - known:
            raise CalibrationError(f"bad head entry: expected keys among {sorted(known)}, got {d!r:.200}")
        return cls(**d)


def _check_knots(x, y, what: str) -> None:
    if not isinstance(x, list | tuple) or not isinstance(y, list | tuple) or len(x) != len(y) or not x:
        raise CalibrationError(f"{what}: x and y must be non-empty lists of the same length")
    if any(not (0.0 <= v <= 1.0) for v in list(x) + list(y)):
        raise CalibrationError(f"{what}: knots must lie in [0, 1]")
    if any(b < a for a, b in zip(x, x[1:])) or any(b < a for a, b in zip(y, y[1:])):
        raise CalibrationError(f"{what}: x must be ascending and y non-decreasing (a monotone map)")


class Calibration:
    """Per-head maps from raw candidate probabilities to acceptance probabilities; see the module docstring."""

    def __init__(self, heads: list[HeadMap], rank_accuracy: list[list[float]] | None = None, fitted_on=None):
        if not heads:
            raise CalibrationError("a calibration needs at least one head")
        self.heads = list(heads)
        self.rank_accuracy = rank_accuracy  # [K][top_m]: P(rank r candidate correct), for static trees
        self.fitted_on = fitted_on or {}  # what the maps were fitted on (data, split, examples, ...)
        self._tables: dict = {}  # device -> tensors, built on first use

    @property
    def num_heads(self) -> int:
        return len(self.heads)

    @property
    def is_identity(self) -> bool:
        return all(h.method == "identity" for h in self.heads)

    @classmethod
    def identity(cls, num_heads: int) -> Calibration:
        return cls([HeadMap() for _ in range(num_heads)])

    def __repr__(self) -> str:
        desc = ", ".join(f"{h.method}(T={h.temperature:.3g})" for h in self.heads)
        return f"Calibration([{desc}])"

    # ------------------------------------------------------------------------------------------- runtime
    def topk(
        self, logits: torch.Tensor, m: int, head: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """logits [K, V] (or [K, ..., V]) -> (top_idx [K, m], calibrated top_logp [K, m]).

        Candidates are ranked by the (temperature-scaled) logits; K may be fewer than the calibrated heads (the
        first K are used). With ``head`` = k, logits [..., V] are head k's alone (a sequential head drafting for
        several frontier nodes) -> [..., m]. With identity maps this is exactly ``log_softmax(logits).topk(m)``.
        """
        if head is not None:
            if not 0 <= head < self.num_heads:
                raise CalibrationError(f"head {head} but the calibration covers {self.num_heads}")
            idx, logp = self._topk(logits[None], m, slice(head, head + 1))
            return idx[0], logp[0]
        K = logits.shape[0]
        if K > self.num_heads:
            raise CalibrationError(f"logits for {K} heads but the calibration covers {self.num_heads}")
        return self._topk(logits, m, slice(0, K))

    def _topk(self, logits: torch.Tensor, m: int, sel: slice) -> tuple[torch.Tensor, torch.Tensor]:
        K = logits.shape[0]
        m = min(m, logits.shape[-1])
        if all(h.method == "identity" for h in self.heads[sel]):
            top_logp, top_idx = torch.log_softmax(logits, -1).topk(m)
            return top_idx, top_logp
        t = self._on(logits.device)
        z = logits.float()
        temps = t["temps"][sel].view(K, *[1] * (z.dim() - 1))
        top_logp, top_idx = torch.log_softmax(z / temps, -1).topk(m)  # [K, ..., m]
        return top_idx, self.map_scaled(top_logp, sel)

    def map_scaled(self, top_logp: torch.Tensor, sel: slice | None = None) -> torch.Tensor:
        """Temperature-scaled top-m log-probs [K, ..., m] (sorted descending) -> calibrated log-probs, same shape.

        Applies the isotonic maps of heads ``sel`` (default: the first K; identity and temperature heads pass
        through) and the clamp.
        """
        K, m = top_logp.shape[0], top_logp.shape[-1]
        sel = slice(0, K) if sel is None else sel
        t = self._on(top_logp.device)
        view = (K, *[1] * (top_logp.dim() - 1))
        out = top_logp
        iso = t["iso"][sel]
        if bool(iso.any()):
            r = torch.arange(m, device=top_logp.device).clamp(max=t["slot_of"].shape[1] - 1)
            slots = t["slot_of"][sel][:, r].view(K, *[1] * (top_logp.dim() - 2), m).expand(top_logp.shape)
            q = _interp(top_logp.exp(), slots, t)  # [K, ..., m]
            q = torch.cummin(q, dim=-1).values  # rank r+1 never above rank r
            q = q / q.sum(-1, keepdim=True).clamp_min(1.0)  # at most one candidate is correct
            out = torch.where(iso.view(view), q.clamp_min(EPS).log().to(top_logp.dtype), top_logp)
        return torch.where(t["calibrated"][sel].view(view), out.clamp(LOG_EPS, 0.0), out)

    def _on(self, device) -> dict:
        """The maps as flat tensors on ``device``: all knots of all slots concatenated, slot s shifted by 2s so
        that one searchsorted finds every query's interval."""
        key = str(device)
        if key in self._tables:
            return self._tables[key]
        xs, ys, start, end, slot_of = [], [], [], [], []
        n_ranks = max([len(h.ranks or []) for h in self.heads if h.method == "isotonic"], default=0)

        def add(x, y) -> int:
            if len(x) == 1:  # a constant map: two equal knots keep the interval logic uniform
                x, y = [x[0], x[0]], [y[0], y[0]]
            start.append(sum(len(a) for a in xs))
            xs.append(list(x))
            ys.append(list(y))
            end.append(start[-1] + len(x))
            return len(xs) - 1

        ident = add([0.0, 1.0], [0.0, 1.0])  # placeholder slot for non-isotonic heads (its output is unused)
        for h in self.heads:
            if h.method != "isotonic":
                slot_of.append([ident] * (n_ranks + 1))
                continue
            shared = add(h.x, h.y)
            own = [add(k["x"], k["y"]) for k in h.ranks or []]
            slot_of.append(own + [shared] * (n_ranks + 1 - len(own)))
        shift = [2.0 * s for s, x in enumerate(xs) for _ in x]
        flat_x = torch.tensor([v for x in xs for v in x], dtype=torch.float64)
        t = {
            "temps": torch.tensor([h.temperature for h in self.heads], dtype=torch.float32),
            "iso": torch.tensor([h.method == "isotonic" for h in self.heads]),
            "calibrated": torch.tensor([h.method != "identity" for h in self.heads]),
            "slot_of": torch.tensor(slot_of, dtype=torch.long),  # [K, R+1]: column R is the shared map
            "kx": flat_x + torch.tensor(shift, dtype=torch.float64),  # shifted knots, ascending overall
            "x": flat_x.float(),
            "y": torch.tensor([v for y in ys for v in y], dtype=torch.float32),
            "start": torch.tensor(start, dtype=torch.long),
            "end": torch.tensor(end, dtype=torch.long),
        }
        t = {k: v.to(device) for k, v in t.items()}
        self._tables[key] = t
        return t

    # ------------------------------------------------------------------------------------------------ files
    def to_dict(self) -> dict:
        d = {"format": FORMAT, "num_heads": self.num_heads, "heads": [h.to_dict() for h in self.heads]}
        if self.rank_accuracy is not None:
            d["rank_accuracy"] = self.rank_accuracy
        d["fitted_on"] = self.fitted_on
        return d

    @classmethod
    def from_dict(cls, d: dict, source: str = "calibration") -> Calibration:
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            got = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise CalibrationError(f"{source}: expected format {FORMAT!r}, got {got!r}")
        heads = d.get("heads")
        if not isinstance(heads, list) or not heads:
            raise CalibrationError(f"{source}: 'heads' must be a non-empty list")
        if d.get("num_heads", len(heads)) != len(heads):
            raise CalibrationError(f"{source}: num_heads {d['num_heads']} but {len(heads)} head entries")
        try:
            maps = [HeadMap.from_dict(h) for h in heads]
        except CalibrationError as e:
            raise CalibrationError(f"{source}: {e}") from None
        return cls(maps, rank_accuracy=d.get("rank_accuracy"), fitted_on=d.get("fitted_on"))

    def to_file(self, path: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        text = json.dumps(self.to_dict(), indent=1)
        text = re.sub(r"\[[-+.,\deE\s]*\]", _one_line, text)  # lists of numbers on one line
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text + "\n")
        os.replace(tmp, path)

    @classmethod
    def from_file(cls, path: str) -> Calibration:
        try:
            with open(path) as f:
                d = json.load(f)
        except json.JSONDecodeError as e:
            raise CalibrationError(f"{path}: not valid JSON: {e}") from None
        return cls.from_dict(d, source=path)

    def check_heads(self, num_heads: int) -> None:
        """Fail clearly when the calibration was fitted for a different number of heads."""
        if num_heads != self.num_heads:
            raise CalibrationError(
                f"calibration covers {self.num_heads} heads but the heads have {num_heads}; recalibrate "
                "with python -m train.calibrate"
            )


def _interp(p: torch.Tensor, slots: torch.Tensor, t: dict) -> torch.Tensor:
    """Piecewise-linear interpolation of p [...] through each element's slot map; flat outside the knots."""
    query = (p.double() + 2.0 * slots).reshape(-1)
    i = torch.searchsorted(t["kx"], query, right=True).view(p.shape)  # first knot right of p
    i = torch.minimum(torch.maximum(i, t["start"][slots] + 1), t["end"][slots] - 1)
    x0, x1, y0, y1 = t["x"][i - 1], t["x"][i], t["y"][i - 1], t["y"][i]
    w = ((p.float() - x0) / (x1 - x0).clamp_min(1e-12)).clamp(0.0, 1.0)
    return y0 + w * (y1 - y0)


def _one_line(match: re.Match) -> str:
    return " ".join(match.group(0).split()).replace("[ ", "[").replace(" ]", "]")


def load_calibration(heads_folder: str) -> Calibration | None:
    """``heads_folder/calibration.json`` as a Calibration, or None when the folder has none."""
    path = os.path.join(heads_folder, FILE_NAME)
    if not os.path.exists(path):
        return None
    return Calibration.from_file(path)
