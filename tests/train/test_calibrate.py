"""Fitting calibration maps: known truths recovered, held-out log-loss improved, training data refused, and the
whole pipeline (collect -> fit -> calibration.json + reliability PNGs) on a tiny model."""

import json

import pytest
import torch
import yaml

from infer.draft.calibration import Calibration, CalibrationError, load_calibration
from infer.draft.heads import MedusaConfig, MedusaHeads
from tests.tiny import CORPUS, fit_oracle_heads, greedy_continuations, tiny_model, tiny_tokenizer
from train.calibrate import BETAS, candidate_stats, check_not_training_data, collect, load_records, main
from train.calibration_fit import _head, fit, fit_isotonic, fit_temperature, pav, predict, summary

M = 10


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small tensor work: on a busy 2-core box threads only add contention."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def synthetic(truth: str, K=2, N=3000, V=40, seed=0):
    """Collected statistics with a known truth: 'temperature' (the accepted token is drawn from softmax(z / T_k),
    T = 2.0 and 0.6) or 'square' (P(rank r correct) = p_r ** 2, else no candidate is correct)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(K, N, V, generator=g) * 2.5
    if truth == "temperature":
        probs = torch.softmax(logits / torch.tensor([2.0, 0.6])[:, None, None], -1)
        targets = torch.multinomial(probs.reshape(-1, V), 1, generator=g).reshape(K, N)
    else:
        top, idx = torch.softmax(logits, -1).topk(M)
        cum = (top**2).cumsum(-1)
        r = (torch.rand(K, N, 1, generator=g) > cum).sum(-1)  # the correct rank, M = none of the top-M
        targets = torch.where(r < M, idx.gather(-1, r.clamp(max=M - 1)[..., None])[..., 0], -1)
    col = candidate_stats(logits, targets, M, BETAS)
    valid = torch.ones(K, N, dtype=torch.bool)
    return col | {"betas": BETAS, "valid": valid, "example": torch.arange(N) // 10, "num_examples": N // 10}


def test_temperature_fit_recovers_a_known_temperature():
    col = synthetic("temperature")
    for k, T in enumerate((2.0, 0.6)):
        assert fit_temperature(_head(col, k)) == pytest.approx(T, rel=0.1)
    cal = fit(col)
    for h in cal.heads:
        m = h.metrics
        assert m["after"]["log_loss"] < m["before"]["log_loss"]  # held out (cross-fitted)
        assert m["after"]["ece"] < m["before"]["ece"] / 3
        assert m["after"]["top1_pred"] == pytest.approx(m["top1_acc"], abs=0.02)
    assert cal.heads[0].method in ("temperature", "isotonic")
    assert len(cal.rank_accuracy) == 2 and len(cal.rank_accuracy[0]) == M


def test_isotonic_fit_on_squared_probabilities():
    col = synthetic("square")
    cal = fit(col)
    for k, h in enumerate(cal.heads):
        assert h.method == "isotonic"
        assert h.metrics["after"]["log_loss"] < 0.8 * h.metrics["before"]["log_loss"]
        assert all(b >= a for a, b in zip(h.y, h.y[1:])) and all(b >= a for a, b in zip(h.x, h.x[1:]))
        d = _head(col, k)
        raw = predict(d, Calibration.identity(1).heads[0])
        truth = raw**2
        assert float((predict(d, h) - truth).abs().mean()) < 0.2 * float((raw - truth).abs().mean())
    text = summary(cal)
    assert "ECE" in text and "isotonic" in text and "rank" in text


def test_pool_adjacent_violators():
    blocks = pav([1.0, 3.0, 2.0, 4.0, 0.0], [1.0, 1.0, 1.0, 1.0, 3.0], [0.1, 0.2, 0.3, 0.4, 0.5])
    assert [round(b[1], 6) for b in blocks] == [1.0, 1.5]  # 3,2 pool to 2.5; then 4 and 3 x 0 pool with it
    assert [b[2] for b in blocks] == [1.0, 6.0]
    g = torch.Generator().manual_seed(0)
    p = torch.rand(5000, generator=g, dtype=torch.float64)
    y = (torch.rand(5000, generator=g, dtype=torch.float64) < p**2).double()
    knots = fit_isotonic(p, y, max_bins=100)
    assert all(b > a for a, b in zip(knots["x"], knots["x"][1:]))
    assert all(b > a for a, b in zip(knots["y"], knots["y"][1:]))
    assert len(knots["x"]) <= 100 and abs(knots["y"][-1] - 0.98) < 0.05


# ---------------------------------------------------------------------------------------- training data
def conversations(path, splits):
    with open(path, "w") as f:
        for i, s in enumerate(splits):
            rec = {
                "id": f"c{i}",
                "split": s,
                "messages": [
                    {"role": "user", "content": CORPUS[i % len(CORPUS)]},
                    {
                        "role": "assistant",
                        "content": CORPUS[(i + 3) % len(CORPUS)] + " " + CORPUS[(i + 1) % 7],
                    },
                ],
            }
            f.write(json.dumps(rec) + "\n")


def test_refuses_training_data(tmp_path):
    data = tmp_path / "distilled.jsonl"
    conversations(data, ["train", "train", "calib", "calib", "eval"])
    heads = tmp_path / "heads"
    heads.mkdir()
    (heads / "recipe.yaml").write_text(yaml.safe_dump({"data": {"path": str(data), "eval_data": None}}))
    records, splits = load_records(str(data), "calib")
    assert len(records) == 2 and splits == ["calib", "calib"] and records[0]["messages"][0]["role"] == "user"
    check_not_training_data(str(heads), str(data), splits)  # the calib split: fine
    _, all_splits = load_records(str(data))
    with pytest.raises(CalibrationError, match="2 of 5 records are the heads' training data"):
        check_not_training_data(str(heads), str(data), all_splits)
    check_not_training_data(str(heads), str(data), all_splits, force=True)  # warned, not refused
    # a byte-identical copy is the same data; a split declared in the recipe is the training split
    copy = tmp_path / "copy.jsonl"
    copy.write_bytes(data.read_bytes())
    with pytest.raises(CalibrationError):
        check_not_training_data(str(heads), str(copy), all_splits)
    (heads / "recipe.yaml").write_text(yaml.safe_dump({"data": {"path": str(data), "split": "calib"}}))
    with pytest.raises(CalibrationError, match="split 'calib'"):
        check_not_training_data(str(heads), str(data), splits)
    # metrics.json alone also names the training data; other files pass
    (heads / "recipe.yaml").unlink()
    (heads / "metrics.json").write_text(json.dumps({"train_data": str(data)}))
    with pytest.raises(CalibrationError, match="metrics.json"):
        check_not_training_data(str(heads), str(data), all_splits)
    other = tmp_path / "other.jsonl"
    conversations(other, ["train"])
    check_not_training_data(str(heads), str(other), ["train"])
    with pytest.raises(CalibrationError, match="no usable conversations with split 'dev'"):
        load_records(str(data), "dev")


# ---------------------------------------------------------------------------------------------- tiny model
@pytest.fixture(scope="module")
def distilled():
    """A tiny model, its greedy continuations of 16 prompts as pre-tokenised records (labels on the
    continuation), and oracle heads fitted on the first 8 only."""
    model = tiny_model("llama")
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 512, (1, 6 + i % 5), generator=g) for i in range(16)]
    conts = greedy_continuations(model, prompts, 24)
    seqs = [torch.cat([p[0], c]) for p, c in zip(prompts, conts)]
    heads = fit_oracle_heads(model, seqs[:8], num_heads=3, steps=40)
    records = [
        {"input_ids": s.tolist(), "labels": [-100] * p.shape[1] + c.tolist()}
        for p, c, s in zip(prompts, conts, seqs)
    ]
    return model, heads, records


def test_collect_and_fit_on_self_distilled_data(distilled, tmp_path):
    model, heads, records = distilled
    col = collect(model, heads, None, records[8:], top_m=5)
    # self-distilled data: the data tokens are exactly the base model's greedy chain
    exact = collect(model, heads, None, records[8:], top_m=5, verify_with_model=True)
    assert torch.equal(col["valid"], exact["valid"])
    valid = col["valid"][..., None]  # the chain also runs past the end of the data, where nothing is scored
    assert torch.equal(col["correct"] & valid, exact["correct"] & valid)
    K, N, m = col["correct"].shape
    assert (K, m) == (3, 5) and col["num_examples"] == 8
    assert col["valid"][0].sum() == 8 * 23 and col["valid"][2].sum() == 8 * 21  # t+1 .. t+k+2 generated
    cal = fit(col, fitted_on={"data": "tiny"})
    assert cal.num_heads == 3 and cal.fitted_on["data"] == "tiny" and cal.fitted_on["examples"] == 8
    for h in cal.heads:
        assert {"ece", "brier", "log_loss"} <= set(h.metrics["after"])
    cal.to_file(str(tmp_path / "calibration.json"))
    again = load_calibration(str(tmp_path))
    hidden = model.get_decoder()(input_ids=torch.tensor([records[9]["input_ids"]])).last_hidden_state[0, 10]
    logits = heads(hidden, model.get_output_embeddings()).float()  # [K, V]
    idx, logp = again.topk(logits, 4)
    assert torch.equal(idx, logits.topk(4).indices) and torch.all(logp <= 0)
    # the decoder takes it as is: still lossless greedy decoding, with calibrated tree scores
    from infer.decode.single import DecodeConfig, generate

    ids = torch.tensor([records[9]["input_ids"][:8]])
    cfg = DecodeConfig(tree="dynamic", node_budget=12, top_m=4, max_new_tokens=12, calibration=again)
    out = generate(model, ids, heads, cfg, eos=set())
    plain = generate(model, ids, None, DecodeConfig(tree="none", max_new_tokens=12), eos=set())
    assert out.tokens == plain.tokens and len(out.predicted) == out.steps


@pytest.mark.slow
def test_cli_end_to_end(tmp_path, capsys):
    model_dir, heads_dir, data = tmp_path / "model", tmp_path / "heads", tmp_path / "conv.jsonl"
    model = tiny_model("llama")
    model.save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    cfg = model.config
    heads = MedusaHeads(
        MedusaConfig(hidden_size=cfg.hidden_size, vocab_size=cfg.vocab_size, medusa_num_heads=2)
    )
    heads.save_pretrained(str(heads_dir))
    conversations(data, ["train"] * 3 + ["calib"] * 6)
    (heads_dir / "recipe.yaml").write_text(
        yaml.safe_dump(
            {"model": {"name_or_path": str(model_dir)}, "data": {"path": str(data), "max_length": 96}}
        )
    )
    assert main([str(heads_dir), "--data", str(data)]) == 2  # all splits: includes the training records
    assert "training data" in capsys.readouterr().err
    assert main([str(heads_dir), "--data", str(data), "--split", "calib", "--top-m", "6"]) == 0
    out = capsys.readouterr().out
    assert "ECE raw->cal" in out and "P(rank r candidate is correct)" in out
    cal = json.loads((heads_dir / "calibration.json").read_text())
    assert cal["format"] == "medusa-calibration/1" and len(cal["heads"]) == 2
    assert cal["fitted_on"]["split"] == "calib" and cal["fitted_on"]["examples"] == 6
    assert len(cal["rank_accuracy"][0]) == 6
    pngs = sorted(p.name for p in (heads_dir / "calibration_plots").iterdir())
    assert pngs == ["reliability_head0.png", "reliability_head1.png"]
    assert (heads_dir / "calibration_plots" / pngs[0]).read_bytes()[:4] == b"\x89PNG"
    # --force calibrates on training data, into another file
    alt = tmp_path / "alt.json"
    assert main([str(heads_dir), "--data", str(data), "--force", "--out", str(alt), "--no-plots",
                 "--engine", "eager"]) == 0  # fmt: skip
    assert json.loads(alt.read_text())["fitted_on"]["forced"] is True
    with pytest.raises(SystemExit):
        main([str(heads_dir), "--data", str(data), "--engine", "fast"])


@pytest.mark.parametrize("head_type", ["medusa", "sequential"])
def test_collect_decode_events_on_visited_positions(tmp_path, head_type):
    """--events decode: one event row per tree step the real decoder took, at the root it ran the heads on;
    depth k+1 counts only where depths 1..k were reachable (their true token in the head's top-m)."""
    from infer.decode.single import DecodeConfig, generate
    from train.calibrate import collect_decode, first_prompt

    tok = tiny_tokenizer()
    model = tiny_model("llama")
    data = tmp_path / "conv.jsonl"
    conversations(data, ["calib"] * 6)
    records, _ = load_records(str(data), "calib")
    prompts = [first_prompt(tok, r) for r in records]
    conts = greedy_continuations(model, prompts, 20)
    seqs = [torch.cat([p[0], c]) for p, c in zip(prompts, conts)]
    heads = fit_oracle_heads(model, seqs[:3], num_heads=3, steps=40, head_type=head_type)
    col = collect_decode(model, heads, tok, records, top_m=4, max_new_tokens=20, node_budget=8)
    K, N, m = col["correct"].shape
    assert (K, m) == (3, 4) and col["num_examples"] == 6
    # one row per tree step of the same decode
    cfg = DecodeConfig(tree="dynamic", node_budget=8, top_m=8, max_new_tokens=20, drafter="heads")
    steps = []
    for p, c in zip(prompts, conts):
        out = generate(model, p, heads, cfg, eos=set())
        assert out.tokens == c.tolist()
        steps.append(out.steps)
    assert N == sum(steps)
    v, reach = col["valid"], col["correct"].any(-1)
    for k in range(1, K):  # a depth counts only below a reachable parent
        assert not (v[k] & ~(v[k - 1] & reach[k - 1])).any()
    assert v[0].sum() > 0.8 * N and v[K - 1].sum() < v[0].sum()
    # labels: the first conversation's first step, head 0 = the greedy token after the root
    hidden = model.get_decoder()(input_ids=prompts[0]).last_hidden_state[0, -1]
    path = model.get_input_embeddings()(conts[0][:3])[None] if heads.sequential else None
    logits = heads(hidden[None], None, path)[:, 0]  # [K, V]
    top = logits.topk(4).indices[0]
    assert col["correct"][0, 0].tolist() == (top == conts[0][1]).tolist()
    cal = fit(col, fitted_on={"data": "tiny"})
    assert cal.num_heads == 3
