import json

from infer import bench


def test_bench_runs_all_modes_side_by_side(folders, calibrated_heads, tmp_path, capsys):
    heads = calibrated_heads
    prompts = tmp_path / "p.jsonl"
    cats = ["warm", "sum", "qa"]  # the first prompt warms up
    prompts.write_text(
        "\n".join(json.dumps({"turns": [f"question {i}"], "category": c}) for i, c in enumerate(cats))
    )
    out = tmp_path / "b.jsonl"
    argv = [
        "--model",
        str(folders / "model"),
        "--heads",
        f"med={heads}",
        f"seq={folders / 'seq_heads'}",
        "--prompts",
        str(prompts),
        "--limit",
        "2",
    ]
    argv += [
        "--max-new-tokens",
        "12",
        "--dtype",
        "float32",
        "--out",
        str(out),
        "--plot",
        str(tmp_path / "b.png"),
    ]
    argv += ["--modes", "hf-generate", "hf-prompt-lookup", "plain", "static:4", "dynamic-raw:8", "auto"]
    argv += ["--max-nodes", "8", "--corrupt-profile", "slow-trees"]
    bench.main(argv)
    text = capsys.readouterr().out
    assert "vs HF" in text and "med/static:4" in text and "seq/auto" in text
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 3  # two prompts + the summary
    summary = lines[-1]["modes"]
    tree_modes = {f"{h}/{m}" for h in ("med", "seq") for m in ("dynamic-raw:8", "auto")}
    tree_modes |= {"med/static:4", "seq/static:medusa-default"}  # no calibration beside seq: Medusa's tree
    assert set(summary) == {"hf-generate", "hf-prompt-lookup", "plain"} | tree_modes
    assert all(r["identical"] == "2/2" for r in summary.values())  # greedy: every mode equals plain
    assert summary["hf-generate"]["tokens_per_step"] is None and summary["plain"]["tokens_per_step"] == 1.0
    assert (tmp_path / "b.png").stat().st_size > 1000
    by_cat = lines[-1]["by_category"]  # one table per prompt category, the warm-up's left out
    assert list(by_cat) == ["sum", "qa"] and all(by_cat[c]["plain"]["identical"] == "1/1" for c in by_cat)
    assert "## by category" in text and "qa: plain" in text
