import json

from infer import bench


def test_bench_runs_all_modes_side_by_side(folders, calibrated_heads, tmp_path, capsys):
    heads = calibrated_heads
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps({"turns": [f"question {i}"]}) for i in range(3)) + "\n")
    out = tmp_path / "b.jsonl"
    argv = [
        "--model",
        str(folders / "model"),
        "--heads",
        str(heads),
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
    argv += ["--modes", "plain", "static:4", "dynamic-raw:8", "dynamic-cal:8", "auto", "--max-nodes", "8"]
    bench.main(argv)
    text = capsys.readouterr().out
    assert "speedup" in text and "static:4" in text
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 3  # two prompts + the summary
    summary = lines[-1]["modes"]
    assert set(summary) == {"plain", "static:4", "dynamic-raw:8", "dynamic-cal:8", "auto"}
    assert all(r["identical"] == "2/2" for r in summary.values())  # greedy: every mode equals plain
    assert (tmp_path / "b.png").stat().st_size > 1000
