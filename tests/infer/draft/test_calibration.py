"""Runtime calibration: exact identity, monotone maps, valid trees, calibration.json round trip."""

import json
import math

import pytest
import torch

from infer.draft.calibration import (
    FORMAT,
    LOG_EPS,
    Calibration,
    CalibrationError,
    HeadMap,
    load_calibration,
)
from infer.draft.tree import dynamic_tree

K, V, M = 4, 50, 8


def random_logits(seed=0, k=K, v=V):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(k, v, generator=g) * 3


def mixed() -> Calibration:
    """One head of each kind, including per-rank isotonic maps with a shared fallback."""
    sq = [i / 10 for i in range(11)]
    return Calibration(
        [
            HeadMap(),
            HeadMap("temperature", 1.7),
            HeadMap("isotonic", 1.0, x=sq, y=[v * v for v in sq]),
            HeadMap(
                "isotonic",
                1.3,
                x=[0.0, 0.5, 1.0],
                y=[0.0, 0.2, 0.6],
                ranks=[{"x": [0.0, 1.0], "y": [0.05, 0.9]}, {"x": [0.3], "y": [0.1]}],
            ),
        ],
        rank_accuracy=[[0.5, 0.2], [0.3, 0.1], [0.2, 0.1], [0.1, 0.05]],
        fitted_on={"data": "x.jsonl", "split": "calib"},
    )


def test_identity_topk_is_raw_log_softmax_topk_exactly():
    cal = Calibration.identity(K)
    for seed in range(3):
        logits = random_logits(seed)
        idx, logp = cal.topk(logits, M)
        ref_logp, ref_idx = torch.log_softmax(logits, -1).topk(M)
        assert torch.equal(idx, ref_idx) and torch.equal(logp, ref_logp)
    # fewer heads than calibrated (decode depth), and m larger than the vocabulary
    idx, logp = cal.topk(random_logits(k=2, v=5), 9)
    assert idx.shape == (2, 5)
    with pytest.raises(CalibrationError, match="5 heads"):
        cal.topk(random_logits(k=5), M)


def test_temperature_and_isotonic_values():
    cal = mixed()
    logits = random_logits(1)
    idx, logp = cal.topk(logits, M)
    assert idx.shape == logp.shape == (K, M)
    raw_logp, raw_idx = torch.log_softmax(logits, -1).topk(M)
    assert torch.equal(idx, raw_idx)  # monotone maps keep the ranking
    assert torch.equal(logp[0], raw_logp[0])  # identity head untouched
    ref1 = torch.log_softmax(logits[1] / 1.7, -1).topk(M).values.clamp(min=LOG_EPS)
    torch.testing.assert_close(logp[1], ref1)
    p2 = raw_logp[2].exp()  # head 2: p -> p**2 through 11 knots, linear in between
    knots = [i / 10 for i in range(11)]
    interp = torch.tensor([_lin(float(v), knots, [k * k for k in knots]) for v in p2])
    torch.testing.assert_close(logp[2].exp(), interp.float().clamp(min=1e-6), atol=1e-6, rtol=1e-4)
    # head 3: rank 0 and 1 have their own maps, ranks >= 2 the shared one
    p3 = torch.log_softmax(logits[3] / 1.3, -1).topk(M).values.exp()
    assert math.isclose(float(logp[3, 0].exp()), 0.05 + 0.85 * float(p3[0]), rel_tol=1e-4)
    shared = max(_lin(float(p3[2]), [0, 0.5, 1], [0, 0.2, 0.6]), 1e-6)
    assert math.isclose(float(logp[3, 2].exp()), shared, rel_tol=1e-4)
    assert torch.all(logp >= LOG_EPS) and torch.all(logp[1:] <= 0)
    assert torch.all(logp[:, 1:] <= logp[:, :-1] + 1e-7)  # non-increasing along the ranks


def _lin(p, xs, ys):
    if p <= xs[0]:
        return ys[0]
    for x0, x1, y0, y1 in zip(xs, xs[1:], ys, ys[1:]):
        if p <= x1:
            return y0 + (p - x0) / (x1 - x0) * (y1 - y0)
    return ys[-1]


def test_isotonic_map_is_monotone():
    g = torch.Generator().manual_seed(3)
    x = torch.sort(torch.rand(30, generator=g)).values.tolist()
    y = torch.sort(torch.rand(30, generator=g)).values.tolist()
    cal = Calibration([HeadMap("isotonic", 1.0, x=x, y=y)])
    p = torch.linspace(1e-6, 1, 2001)
    q = cal.map_scaled(p.log()[None, :, None])[0, :, 0].exp()  # [2001] one candidate per row
    assert torch.all(q[1:] >= q[:-1] - 1e-7)
    assert float(q[0]) == pytest.approx(max(y[0], 1e-6), rel=1e-5)
    assert float(q[-1]) == pytest.approx(y[-1], rel=1e-5)


def test_dynamic_tree_on_calibrated_logp_is_valid_and_identity_changes_nothing():
    for seed in range(4):
        logits = random_logits(seed)
        raw = torch.log_softmax(logits, -1).topk(M).values
        _, ident = Calibration.identity(K).topk(logits, M)
        a, b = dynamic_tree(raw, 20), dynamic_tree(ident, 20)
        for name in ("parents", "depth", "rank", "score"):
            assert torch.equal(getattr(a, name), getattr(b, name))
        _, cal = mixed().topk(logits, M)
        tree = dynamic_tree(cal, 20)
        T = tree.size
        assert T == 21
        pos = torch.arange(1, T)
        assert torch.all(tree.parents[1:] < pos)  # parents precede children
        assert torch.all(tree.depth[tree.parents[1:]] == tree.depth[1:] - 1)
        assert torch.all(tree.score[1:] <= tree.score[tree.parents[1:]] + 1e-6)


def test_round_trip(tmp_path):
    cal = mixed()
    path = tmp_path / "calibration.json"
    cal.to_file(str(path))
    raw = json.loads(path.read_text())
    assert raw["format"] == FORMAT and raw["num_heads"] == K and raw["fitted_on"]["split"] == "calib"
    again = load_calibration(str(tmp_path))
    assert again.to_dict() == cal.to_dict()
    assert again.rank_accuracy == cal.rank_accuracy
    logits = random_logits(5)
    for x, y in zip(cal.topk(logits, M), again.topk(logits, M)):
        assert torch.equal(x, y)
    assert load_calibration(str(tmp_path / "missing")) is None


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"format": "other"}, "format"),
        ({"format": FORMAT, "heads": []}, "non-empty"),
        ({"format": FORMAT, "heads": [{"method": "platt"}]}, "method"),
        ({"format": FORMAT, "heads": [{"method": "temperature", "temperature": -1}]}, "positive"),
        ({"format": FORMAT, "heads": [{"method": "isotonic", "x": [0.5, 0.2], "y": [0.1, 0.2]}]}, "monotone"),
        ({"format": FORMAT, "heads": [{"method": "isotonic", "x": [0.1], "y": [0.1, 0.2]}]}, "same length"),
        ({"format": FORMAT, "heads": [{"method": "identity", "bogus": 1}]}, "keys"),
    ],
)
def test_bad_files_fail_clearly(tmp_path, bad, match):
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(CalibrationError, match=match):
        Calibration.from_file(str(path))


def test_check_heads():
    Calibration.identity(3).check_heads(3)
    with pytest.raises(CalibrationError, match="recalibrate"):
        Calibration.identity(3).check_heads(4)
