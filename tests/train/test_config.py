"""Recipes: strict parsing, typed key=value overrides, every shipped recipe valid, the CLI's --dry-run."""

from __future__ import annotations

import glob
import os
import subprocess
import sys

import pytest
import yaml

from train.config import Recipe, RecipeError, apply_overrides, leaf_keys, load_recipe

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RECIPES = sorted(glob.glob(os.path.join(ROOT, "recipes", "*.yaml")))


def test_recipes_exist():
    names = {os.path.basename(p) for p in RECIPES}
    assert {"vicuna7b.yaml", "qwen2.5-7b-medusa2.yaml", "smollm2-135m.yaml"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=os.path.basename)
def test_every_recipe_parses_and_opens_with_its_command(path):
    cfg = load_recipe(path)
    with open(path) as f:
        first = f.readline()
    rel = os.path.relpath(path, ROOT)
    assert first.startswith("# ") and "train/medusa.py" in first and rel in first, first
    # the resolved recipe round-trips through YAML unchanged
    assert Recipe.from_dict(yaml.safe_load(cfg.to_yaml(header="x"))) == cfg


def test_shipped_recipe_choices():
    vic = load_recipe(os.path.join(ROOT, "recipes", "vicuna7b.yaml"))
    assert (vic.mode, vic.heads.medusa_num_heads, vic.heads.layout) == ("medusa1", 5, "own_lm_head")
    assert (vic.train.per_device_batch_size, vic.train.gradient_accumulation_steps, vic.train.lr) == (
        8,
        4,
        1e-3,
    )
    assert (
        vic.data.template == "vicuna_v1.1"
        and vic.data.max_length == 2048
        and vic.train.mixed_precision == "bf16"
    )
    qwen = load_recipe(os.path.join(ROOT, "recipes", "qwen2.5-7b-medusa2.yaml"))
    assert qwen.mode == "medusa2" and qwen.medusa2.lora_r == 16 and qwen.medusa2.heads_lr_multiplier == 4.0
    small = load_recipe(os.path.join(ROOT, "recipes", "smollm2-135m.yaml"))
    assert small.train.cache_features and small.train.logits_dtype == "bfloat16"
    assert small.heads.layout == "shared_lm_head" and small.output.output_dir == "outputs/smollm2-135m"


def test_unknown_keys_are_errors():
    with pytest.raises(RecipeError, match="unknown key 'trian'.*did you mean 'train'"):
        Recipe.from_dict({"trian": {}})
    with pytest.raises(RecipeError, match="unknown key 'train.learning_rate'"):
        Recipe.from_dict({"train": {"learning_rate": 1e-3}})
    with pytest.raises(RecipeError, match="unknown override key 'train.lrr'.*did you mean 'train.lr'"):
        apply_overrides({}, ["train.lrr=1"])


@pytest.mark.parametrize(
    "raw, match",
    [
        ({"train": {"max_steps": "ten"}}, "train.max_steps: expected int, got str"),
        ({"train": {"max_steps": 1.5}}, "train.max_steps: expected int, got float"),
        ({"train": {"cache_features": 1}}, "train.cache_features: expected bool, got int"),
        ({"train": {"lr": "fast"}}, "train.lr: expected float"),
        ({"train": {"adam_betas": 0.9}}, "train.adam_betas: expected a list"),
        ({"model": {"name_or_path": 7}}, "model.name_or_path: expected str"),
        ({"medusa2": {"lora_target_modules": ["q_proj", 3]}}, r"lora_target_modules\[1\]: expected str"),
        ({"heads": 4}, "heads: expected a mapping"),
        ({"heads": {"layout": "tied"}}, "heads.layout must be one of"),
        ({"mode": "medusa3"}, "mode must be one of"),
        ({"mode": "medusa2", "train": {"cache_features": True}}, "cache_features needs a frozen base"),
        ({"train": {"max_steps": -5}}, "train.max_steps must be >= 0"),
        ({"train": {"lr": float("inf")}}, "train.lr must be a finite number > 0"),
        ({"train": {"lr": float("nan")}}, "train.lr must be a finite number > 0"),
        ({"train": {"adam_betas": [0.9, 2.0]}}, r"train.adam_betas must be two numbers in \[0, 1\)"),
        ({"heads": {"decay": -3}}, "heads.decay must be a finite number >= 0"),
        ({"heads": {"head_type": "hydra"}}, "heads.head_type must be one of"),
        ({"output": {"export": ["onnx"]}}, "output.export must be one of"),
        ({"output": {"export": ["vllm"]}, "heads": {"head_type": "sequential"}}, "sequential heads read"),
        ({"output": {"export": ["medusa1"]}, "heads": {"medusa_num_layers": 2}}, "export tgi or trtllm"),
    ],
)
def test_wrong_types_and_values_are_errors(raw, match):
    with pytest.raises(RecipeError, match=match):
        Recipe.from_dict(raw)


def test_lenient_numbers():
    cfg = Recipe.from_dict({"train": {"lr": "1e-3", "warmup_ratio": 0, "num_epochs": 3}})
    assert cfg.train.lr == 1e-3 and isinstance(cfg.train.warmup_ratio, float) and cfg.train.num_epochs == 3.0


def test_overrides_are_typed(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("# python train/medusa.py r.yaml\ntrain:\n  lr: 1.0e-3\n")
    cfg = load_recipe(
        str(path),
        [
            "train.lr=3e-4",  # dotted
            "max_steps=12",  # bare, unique across sections
            "cache_features=true",
            "model.name_or_path=1234",  # str fields take the text verbatim
            "model.revision=null",
            "medusa2.lora_target_modules=[q_proj, v_proj]",
            "adam_betas=[0.9, 0.95]",
            "data.eval_data=held/out.json",
        ],
    )
    assert cfg.train.lr == 3e-4 and cfg.train.max_steps == 12 and cfg.train.cache_features is True
    assert cfg.model.name_or_path == "1234" and cfg.model.revision is None
    assert cfg.medusa2.lora_target_modules == ["q_proj", "v_proj"] and cfg.train.adam_betas == [0.9, 0.95]
    assert cfg.data.eval_data == "held/out.json"
    with pytest.raises(RecipeError, match="train.max_steps: expected int"):
        load_recipe(str(path), ["max_steps=many"])
    with pytest.raises(RecipeError, match="key=value"):
        load_recipe(str(path), ["max_steps"])
    with pytest.raises(RecipeError, match="must be one of"):
        load_recipe(str(path), ["heads.layout=weird"])


def test_bare_keys_are_unique():
    leaves = [k.rsplit(".", 1)[-1] for k in leaf_keys()]
    assert len(leaves) == len(set(leaves)), "a bare override name would be ambiguous"


@pytest.mark.slow
@pytest.mark.parametrize("how", ["path", "module"])
def test_cli_dry_run(how):
    cmd = [sys.executable, "train/medusa.py"] if how == "path" else [sys.executable, "-m", "train.medusa"]
    cmd += ["recipes/tiny-test.yaml", "lr=0.5", "train.max_steps=3", "--dry-run"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    resolved = yaml.safe_load(out.stdout)
    assert resolved["train"]["lr"] == 0.5 and resolved["train"]["max_steps"] == 3
    bad = subprocess.run(cmd[:-1] + ["nope=1"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "unknown override key 'nope'" in bad.stderr


def test_missing_data_and_recipe_files_fail_before_any_model_loads(tmp_path, capsys):
    from train.medusa import main

    with pytest.raises(SystemExit):  # a data file that is not there: named, with where to look
        main(["recipes/tiny-test.yaml", "data.path=data/no-such-file.json", "--dry-run"])
    err = capsys.readouterr().err
    assert "data file not found: data.path: data/no-such-file.json" in err and "header" in err
    for path in (str(tmp_path / "nope.yaml"), str(tmp_path)):
        with pytest.raises(SystemExit):
            main([path])
        assert "recipe" in capsys.readouterr().err


def test_a_recipe_that_is_not_yaml_or_not_utf8_is_one_error_line(tmp_path, capsys):
    """The file named, with where the problem is: one ``error:`` line and status 2 (it printed a traceback)."""
    from infer.cli import EXIT_ERROR
    from train.config import read_saved_recipe
    from train.medusa import main

    (tmp_path / "notyaml.yaml").write_text("train: [1, 2\n  lr: {a: b\n")
    (tmp_path / "notutf8.yaml").write_bytes(b"train:\n  lr: \xff\xfe3e-4\n")
    cases = {
        "notyaml.yaml": r"notyaml.yaml: not valid YAML \(line 2, column 5: expected ',' or ']', but got ':' "
        r"\(while parsing a flow sequence that starts at line 1, column 8\)\)",
        "notutf8.yaml": r"notutf8.yaml: not UTF-8 text \(byte 0xff at line 2, column 7\)",
    }
    for name, words in cases.items():
        path = str(tmp_path / name)
        with pytest.raises(RecipeError, match=words):
            load_recipe(path)
        with pytest.raises(RecipeError, match=words):  # a checkpoint's recipe.yaml: the same words
            read_saved_recipe(path)
        with pytest.raises(SystemExit) as e:
            main([path, "--dry-run"])
        err = capsys.readouterr().err
        assert (
            e.value.code == EXIT_ERROR and err.startswith(f"error: {path}: not ") and err.count("\n") == 1
        ), err


def test_dry_run_checks_the_model_and_output_folders(tmp_path, capsys, monkeypatch):
    """--dry-run (and every run) refuses a base model that is neither a folder nor a Hub id it can confirm, an
    output_dir that is a file and a resume path that does not exist, before anything loads."""
    import huggingface_hub.constants  # first, so the offline switch below is undone after the test

    from train.medusa import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no network here: the Hub cannot confirm an uncached id
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read once, at import
    cases = {
        f"model.name_or_path={tmp_path / 'no-model'}": "is not a folder",
        "model.name_or_path=nobody/no-such-model-xyz": "not in the local Hugging Face cache",
        f"output.output_dir={tmp_path / 'a-file'}": "exists and is not a folder",
        f"output.resume={tmp_path / 'checkpoint-9'}": "is not a checkpoint folder",
    }
    (tmp_path / "a-file").write_text("x")
    for override, words in cases.items():
        with pytest.raises(SystemExit):
            main(["recipes/smollm2-135m.yaml", override, "--dry-run"])
        assert words in capsys.readouterr().err, override
    assert main(["recipes/smollm2-135m.yaml", "--dry-run"]) is None  # the embedded default: installed


def test_a_yaml_alias_bomb_fails_fast_with_a_short_message(tmp_path):
    """A few hundred bytes of nested YAML aliases under a known key (9^9 leaves once expanded): the type error must
    not print the expanded value (it ran to 2.7 GB and a MemoryError), in the recipe or a key=value override."""
    levels = ["&a [" + ", ".join(["x"] * 9) + "]"]
    for prev, name in zip("abcdefgh", "bcdefghi"):
        levels.append(f"&{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
    bomb = "[" + ", ".join(levels) + "]"
    assert len(bomb) < 600
    (tmp_path / "lr.yaml").write_text(f"train:\n  lr: {bomb}\n")
    (tmp_path / "betas.yaml").write_text(f"train:\n  adam_betas: {bomb}\n")
    (tmp_path / "section.yaml").write_text(f"train: {bomb}\n")
    for name in ("lr.yaml", "betas.yaml", "section.yaml"):
        with pytest.raises(RecipeError) as e:
            load_recipe(str(tmp_path / name))
        assert len(str(e.value)) < 600, name
    (tmp_path / "ok.yaml").write_text("train:\n  lr: 1.0e-3\n")
    for override in ("train.lr=" + bomb, "adam_betas=" + bomb):
        with pytest.raises(RecipeError) as e:
            load_recipe(str(tmp_path / "ok.yaml"), [override])
        assert len(str(e.value)) < 2 * len(bomb)
