import json

import pytest

from infer import generate as cli


def _run(folders, capsys, *extra):
    dtype = [] if "--dtype" in extra else ["--dtype", "float32"]
    cli.main(["--model", str(folders / "model"), "--heads", str(folders / "heads"), *dtype, *extra])
    return capsys.readouterr().out


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    for opt in cli.build_parser()._option_string_actions:
        assert opt in text
    parser = cli.build_parser()
    for action in parser._actions:
        assert action.help, f"option {action.option_strings} has no help text"


@pytest.mark.parametrize("tree", ["dynamic", "static"])
def test_compare_reports_identity_and_speedup(folders, capsys, tree):
    out = _run(
        folders,
        capsys,
        "--prompt",
        "Paris is the capital",
        "--tree",
        tree,
        "--compare",
        "--json",
        "--max-new-tokens",
        "20",
    )
    rec = json.loads(out.strip().splitlines()[-1])
    assert rec["identical"] is True
    assert rec["medusa_new_tokens"] == rec["plain_new_tokens"] > 0
    assert rec["speedup"] > 0 and rec["plain_tokens_per_step"] == 1.0
    # against what users have: transformers' greedy generate and its prompt lookup decoding
    assert rec["speedup_vs_hf_generate"] > 0 and rec["hf_prompt_lookup_tokens_per_s"] > 0


def test_dtype_auto_measures_once_and_says_why(folders, capsys):
    out = _run(folders, capsys, "--prompt", "hi", "--max-new-tokens", "4", "--dtype", "auto", "--quiet")
    assert "dtype auto -> " in out and "ms in bfloat16 vs" in out and "CPU " in out
    out = _run(folders, capsys, "--prompt", "hi", "--max-new-tokens", "4", "--dtype", "auto", "--quiet")
    assert "(cached)" in out and "timing float32 and bfloat16" not in out


def test_streams_text_and_stats(folders, capsys):
    out = _run(folders, capsys, "--prompt", "hello", "--max-new-tokens", "8", "--compare")
    assert ">>> hello" in out and "tokens/step" in out and "[compare] speedup" in out
    assert "over transformers' generate" in out and "[hf-prompt-lookup]" in out


def test_prompt_file_with_turns(folders, capsys, tmp_path):
    f = tmp_path / "q.jsonl"
    f.write_text(json.dumps({"question_id": 1, "turns": ["first question", "a follow-up"]}) + "\n")
    out = _run(folders, capsys, "--prompt-file", str(f), "--json", "--max-new-tokens", "6")
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [(r["prompt_index"], r["turn"]) for r in lines] == [(0, 0), (0, 1)]  # one line per turn


def test_sampling_runs(folders, capsys):
    out = _run(folders, capsys, "--prompt", "hi", "--temperature", "0.8", "--json", "--max-new-tokens", "10")
    assert json.loads(out.strip().splitlines()[-1])["medusa_new_tokens"] > 0


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--prompt", "   "], "empty prompt"),
        (["--prompt", "word " * 200], "exceeds the model's context"),
        (["--prompt", "hi", "--acceptance", "typical"], "temperature"),
        (["--prompt-file", "/nonexistent/prompts.txt"], "not found"),
        (["--prompt", "hi", "--temperature", "-1"], "temperature must be a finite number >= 0"),
        (["--prompt", "hi", "--temperature", "nan"], "temperature must be a finite number >= 0"),
        (["--prompt", "hi", "--depth", "0"], "depth must be >= 1"),
        (["--prompt", "hi", "--tree", "static", "--medusa-choices", "[[0],"], "--medusa-choices: not JSON"),
        (["--prompt", "hi", "--tree", "static", "--medusa-choices", '"x"'], "--medusa-choices: expected"),
    ],
)
def test_clear_errors(folders, capsys, extra, message):
    with pytest.raises(SystemExit, match=message):
        _run(folders, capsys, *extra)


def test_unknown_model_and_mismatched_heads(folders, capsys):
    with pytest.raises(SystemExit, match="not found|could not load"):
        cli.main(["--model", str(folders / "missing_model"), "--prompt", "hi", "--tree", "none"])
    with pytest.raises(SystemExit, match="hidden size"):
        cli.main(["--model", str(folders / "model"), "--heads", str(folders / "bad_heads"), "--prompt", "hi"])
    with pytest.raises(SystemExit, match="heads not found"):
        cli.main(["--model", str(folders / "model"), "--heads", str(folders / "nope"), "--prompt", "hi"])


def test_static_tree_grows_from_calibrated_rank_accuracies(folders, calibrated_heads, capsys):
    heads = calibrated_heads
    argv = ["--model", str(folders / "model"), "--heads", str(heads), "--prompt", "hi", "--tree", "static"]
    cli.main([*argv, "--node-budget", "4", "--compare", "--json", "--max-new-tokens", "10"])
    rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rec["identical"] is True


def test_read_prompts_by_split(tmp_path):
    from infer.pipeline import PipelineError, read_prompts

    f = tmp_path / "p.jsonl"
    recs = [{"split": "train", "turns": ["a"]}, {"split": "eval", "turns": ["b", "c"]}, {"turns": ["d"]}]
    f.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert read_prompts(str(f), split="eval") == [["b", "c"]]
    assert len(read_prompts(str(f))) == 3
    with pytest.raises(PipelineError, match="no prompts .* with split 'calib'"):
        read_prompts(str(f), split="calib")


def test_turns_must_be_a_list(tmp_path):
    from infer.pipeline import PipelineError, read_prompts

    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"turns": "Hello"}) + "\n")
    with pytest.raises(PipelineError, match="expected non-empty 'turns'"):
        read_prompts(str(f))
    f.write_text(json.dumps(["a", "list"]) + "\n")
    with pytest.raises(PipelineError, match=r"p.jsonl:1: expected a JSON object"):
        read_prompts(str(f))
    f.write_bytes(b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(PipelineError, match=r"p.jsonl:2: not UTF-8 text"):
        read_prompts(str(f))


def test_cuda_device_without_cuda_is_one_clear_error(folders, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SystemExit, match="no usable CUDA"):
        _run(folders, capsys, "--prompt", "hi", "--device", "cuda")


def test_context_check_counts_the_tree_only_when_there_is_one(folders, capsys):
    # The tiny model has a context of 160 and "hi" is 14 tokens: 146 new tokens fit with plain decoding ...
    out = _run(folders, capsys, "--prompt", "hi", "--tree", "none", "--max-new-tokens", "146", "--json")
    assert json.loads(out.strip().splitlines()[-1])["plain_new_tokens"] > 0
    # ... and a huge node budget is bounded by the candidate paths that exist (3 heads, top-2: 14 nodes).
    extra = ["--node-budget", "100000", "--top-m", "2", "--max-new-tokens", "120", "--json"]
    out = _run(folders, capsys, "--prompt", "hi", *extra)
    assert json.loads(out.strip().splitlines()[-1])["medusa_new_tokens"] > 0


def test_heads_are_served_with_the_chat_template_they_were_trained_with(folders, tmp_path):
    """The heads' recipe names the training template (vicuna_v1.1 here): the pipeline encodes with it, also for a
    tokenizer that has no template of its own (it refused such prompts, or used the tokenizer's)."""
    import shutil

    import yaml

    from data.chat import resolve_template
    from infer.pipeline import load_pipeline

    heads = tmp_path / "heads"
    shutil.copytree(folders / "heads", heads)
    (heads / "recipe.yaml").write_text(yaml.safe_dump({"data": {"template": "vicuna_v1.1"}}))
    model = tmp_path / "model"
    shutil.copytree(folders / "model", model)
    cfg_file = model / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg.pop("chat_template", None)
    cfg_file.write_text(json.dumps(cfg))
    (model / "chat_template.jinja").unlink(missing_ok=True)
    pipe = load_pipeline(str(model), str(heads), dtype="float32", auto_budget=False, verbose=False)
    assert pipe.tokenizer.chat_template is None
    msgs = [{"role": "user", "content": "Hi"}]
    text = pipe.tokenizer.apply_chat_template(
        msgs,
        chat_template=resolve_template(pipe.tokenizer, "vicuna_v1.1"),
        tokenize=False,
        add_generation_prompt=True,
    )
    assert pipe.encode(msgs)[0].tolist() == pipe.tokenizer(text, add_special_tokens=False).input_ids
    # no template named (or heads without a recipe, e.g. FasterDecoding's): training's fallback, Vicuna's for a
    # tokenizer named vicuna with no template of its own; any other such tokenizer is a clear error
    (heads / "recipe.yaml").write_text(yaml.safe_dump({"data": {}}))
    vicuna = tmp_path / "vicuna-7b-tiny"
    shutil.copytree(model, vicuna)
    pipe = load_pipeline(str(vicuna), str(heads), dtype="float32", auto_budget=False, verbose=False)
    assert pipe.encode(msgs)[0].tolist() == pipe.tokenizer(text, add_special_tokens=False).input_ids
    pipe = load_pipeline(str(model), str(heads), dtype="float32", auto_budget=False, verbose=False)
    with pytest.raises(ValueError, match="no chat template.*--no-chat-template"):
        pipe.encode(msgs)
    (heads / "recipe.yaml").write_text(yaml.safe_dump({"data": {"template": "no_such_template"}}))
    with pytest.raises(ValueError, match="data.template"):
        load_pipeline(str(model), str(heads), dtype="float32", auto_budget=False, verbose=False)


def test_deterministic_decodes_in_float32_and_refuses_another_dtype(folders, capsys, monkeypatch):
    from infer.pipeline import PipelineError, deterministic_dtype

    asked, real = [], cli.load_pipeline
    monkeypatch.setattr(cli, "load_pipeline", lambda *a, **k: asked.append(k["dtype"]) or real(*a, **k))
    _run(folders, capsys, "--prompt", "hi", "--max-new-tokens", "4", "--deterministic", "--dtype", "auto")
    assert asked == ["float32"]
    assert (
        deterministic_dtype("auto", True) == "float32"
        and deterministic_dtype("bfloat16", False) == "bfloat16"
    )
    with pytest.raises(PipelineError, match="cannot take --dtype bfloat16"):
        deterministic_dtype("bfloat16", True)
    with pytest.raises(SystemExit, match="cannot take --dtype float16"):
        cli.main(
            ["--model", str(folders / "model"), "--prompt", "hi", "--deterministic", "--dtype", "float16"]
        )


def test_errors_follow_the_cli_convention(folders, capsys):
    """infer/cli.py: one line 'error: ...' on stderr, exit status 2 (as argparse's usage errors)."""
    with pytest.raises(SystemExit) as e:
        cli.main(["--model", str(folders / "model"), "--heads", str(folders / "heads"), "--prompt", "   "])
    assert e.value.code == 2 and str(e.value) == "empty prompt"
    assert capsys.readouterr().err == "error: empty prompt\n"
