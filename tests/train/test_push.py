"""train.push + train.model_card, driving the real huggingface_hub client against a local fake Hub (hub_server.py).

Nothing is patched in huggingface_hub's code: pushes get ``endpoint=`` the fake server's URL, and the load-back test
points huggingface_hub's endpoint/cache constants (what HF_ENDPOINT / HF_HUB_CACHE set at import) at it.
"""

from __future__ import annotations

import hashlib
import json
import os

import pytest
import torch
from huggingface_hub import ModelCard

from infer.draft.heads import MedusaConfig, MedusaHeads
from tests.train.hub_server import FakeHub
from train.model_card import NOT_MEASURED, build_model_card, parse_front_matter
from train.push import PushError, dry_run, main, push_to_hub

BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"
TOKEN = "hf_TestSecretToken1234567890abcdef"
UPLOADED = {
    "README.md",
    "config.json",
    "model.safetensors",
    "recipe.yaml",
    "calibration.json",
    "metrics.json",
}
METRICS = {"heads": [{"top1": 0.41, "top5": 0.7}, {"top1": 0.23, "top5": 0.52}], "tokens_per_step": 2.1}


RECIPE = (
    "mode: medusa1\ndata:\n  path: sharegpt_clean.json\n  eval_data: mt_bench.jsonl\ntrain:\n  lr: 0.001\n"
)


def make_checkpoint(folder, base=BASE, metrics=True, calibration=True, recipe=RECIPE):
    torch.manual_seed(0)
    heads = MedusaHeads(
        MedusaConfig(hidden_size=16, vocab_size=32, medusa_num_heads=2, base_model_name_or_path=base)
    )
    for p in heads.parameters():  # non-zero weights, so a load-back proves the bytes travelled
        torch.nn.init.normal_(p)
    heads.save_pretrained(str(folder))
    (folder / "recipe.yaml").write_text(recipe)
    if metrics:
        (folder / "metrics.json").write_text(json.dumps({**METRICS, "train_data": "sharegpt_clean.json"}))
    if calibration:
        (folder / "calibration.json").write_text(json.dumps({"temperature": 1.0}))
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"):
        (folder / name).write_bytes(b"training state, never uploaded")
    return heads


def snapshot(folder) -> dict[str, tuple[str, int]]:
    """Every file of a folder -> (sha256, mtime_ns): proves a folder was left untouched."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = (
                    hashlib.sha256(f.read()).hexdigest(),
                    os.stat(path).st_mtime_ns,
                )
    return out


@pytest.fixture
def hub():
    with FakeHub() as server:
        yield server


@pytest.fixture
def ckpt(tmp_path):
    folder = tmp_path / "checkpoint"
    make_checkpoint(folder)
    return folder


# ---------------------------------------------------------------------- dry run + card
def test_dry_run_writes_exactly_the_upload(ckpt, tmp_path, capsys):
    out = tmp_path / "staged"
    before = snapshot(ckpt)
    assert main([str(ckpt), "me/heads", "--dry-run", str(out)]) == 0
    assert set(os.listdir(out)) == UPLOADED  # no optimizer / scheduler / rng / trainer state
    for name in UPLOADED - {"README.md"}:
        assert (out / name).read_bytes() == (ckpt / name).read_bytes()
    printed = capsys.readouterr().out
    assert all(name in printed for name in UPLOADED) and "optimizer" not in printed
    assert snapshot(ckpt) == before


def test_card_metadata_and_measured_numbers(ckpt, tmp_path):
    out = tmp_path / "staged"
    dry_run(str(ckpt), str(out), "me/heads")
    text = (out / "README.md").read_text()
    meta, body = parse_front_matter(text)
    assert meta["base_model"] == BASE
    assert meta["base_model_relation"] == "adapter"
    assert meta["pipeline_tag"] == "text-generation"
    assert {"medusa", "speculative-decoding"} <= set(meta["tags"])
    assert meta["library_name"] and "license" not in meta  # no license known: none claimed
    assert ModelCard(text).data.base_model == BASE  # huggingface_hub parses it the same way
    assert "| 0 | t+2 | 0.410 | 0.700 |" in body and "| 1 | t+3 | 0.230 | 0.520 |" in body
    assert "2.100" in body and "Training data: `sharegpt_clean.json`" in body
    assert "Training mode: `medusa1`" in body and "measured on: `mt_bench.jsonl`" in body
    assert f"python -m infer.generate --model {BASE} --heads me/heads" in body
    assert 'MedusaHeads.from_pretrained("me/heads")' in body


def test_card_without_metrics_invents_nothing(tmp_path):
    folder = tmp_path / "ck"
    make_checkpoint(folder, metrics=False, recipe="output:\n  license: apache-2.0\ntrain:\n  lr: 0.001\n")
    dry_run(str(folder), str(tmp_path / "out"), "me/heads")
    meta, body = parse_front_matter((tmp_path / "out" / "README.md").read_text())
    assert meta["license"] == "apache-2.0"
    assert "| Head |" not in body and body.count(NOT_MEASURED) == 2  # accuracy and tokens/step
    assert "metrics.json" not in os.listdir(tmp_path / "out")


def test_card_builder_marks_missing_cells():
    config = {"medusa_num_heads": 2, "medusa_num_layers": 1, "base_model_name_or_path": BASE}
    card = build_model_card(
        config=config, repo_id="me/h", base_model=BASE, metrics={"heads": [{"top1": 0.5}]}
    )
    assert "| 0 | t+2 | 0.500 | not measured |" in card
    assert "Mean tokens per decoding step: not measured." in card
    other = build_model_card(
        config={**config, "base_model_name_or_path": "org/m"}, repo_id="me/h", base_model="org/m"
    )
    assert "GGUF" in card and "GGUF" not in other  # only an embedded base is a quantized file


def test_card_names_the_quantized_weights_of_an_embedded_base():
    from infer.model.base import DEFAULT_MODEL

    config = {"medusa_num_heads": 2, "medusa_num_layers": 1, "base_model_name_or_path": DEFAULT_MODEL}
    card = build_model_card(config=config, repo_id="me/h", base_model=DEFAULT_MODEL, metrics=None)
    assert "Q4_1" in card and "not on the Hub's bf16 weights" in card


def test_dry_run_refuses_bad_targets(ckpt, tmp_path):
    with pytest.raises(PushError, match="outside the checkpoint"):
        dry_run(str(ckpt), str(ckpt / "staged"), "me/heads")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    with pytest.raises(PushError, match="not empty"):
        dry_run(str(ckpt), str(busy), "me/heads")
    with pytest.raises(PushError, match="owner/name"):
        dry_run(str(ckpt), str(tmp_path / "o"), "justaname")


def test_broken_checkpoints_are_refused(ckpt, tmp_path):
    (ckpt / "recipe.yaml").unlink()
    with pytest.raises(PushError, match="recipe.yaml"):
        dry_run(str(ckpt), str(tmp_path / "o1"), "me/heads")
    other = tmp_path / "other"
    make_checkpoint(other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "medusa_num_heads": 3}))
    with pytest.raises(PushError, match="does not match"):
        dry_run(str(other), str(tmp_path / "o2"), "me/heads")


# ---------------------------------------------------------------------- base model must be a Hub id
@pytest.mark.parametrize("base", ["/data/models/llama", "./base", "~/models/base", "local_base"])
def test_local_base_model_path_is_refused(tmp_path, monkeypatch, hub, base):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "local_base").mkdir()  # a relative name that exists on disk is a path too
    folder = tmp_path / "ck"
    make_checkpoint(folder, base=base)
    with pytest.raises(PushError, match="--base-model HUB_ID"):
        push_to_hub(str(folder), "me/heads", token=TOKEN, endpoint=hub.url)
    with pytest.raises(PushError, match="--base-model HUB_ID"):
        dry_run(str(folder), str(tmp_path / "out"), "me/heads")
    assert not (tmp_path / "out").exists() and hub.requests == []  # refused before any write or request


def test_base_model_override_goes_into_the_upload_not_the_checkpoint(tmp_path):
    folder = tmp_path / "ck"
    make_checkpoint(folder, base="/data/models/smollm2")
    before = snapshot(folder)
    dry_run(str(folder), str(tmp_path / "out"), "me/heads", base_model=BASE)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["base_model_name_or_path"] == BASE
    assert parse_front_matter((tmp_path / "out" / "README.md").read_text())[0]["base_model"] == BASE
    assert snapshot(folder) == before
    with pytest.raises(PushError, match="not a local path"):
        dry_run(str(folder), str(tmp_path / "out2"), "me/heads", base_model="./smollm2")


# ---------------------------------------------------------------------- push through the local Hub
def test_push_makes_one_commit_and_loads_back(ckpt, hub, tmp_path, monkeypatch):
    heads = MedusaHeads.from_pretrained(str(ckpt))
    result = push_to_hub(str(ckpt), "me/heads", token=TOKEN, endpoint=hub.url, commit_message="first heads")
    repo = hub.repos["me/heads"]
    history = repo.history()
    assert len(history) == 2 and history[0].summary == "first heads"  # the repo's initial commit + ours
    assert result.commit_oid == history[0].oid
    assert set(history[0].files) == UPLOADED | {".gitattributes"}
    assert [r["kind"] for r in hub.requests].count("commit") == 1
    assert all(r["headers"].get("authorization") == f"Bearer {TOKEN}" for r in hub.requests)

    # Load back by Hub id through the same endpoint (resolve_heads_path -> snapshot_download).
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub_cache"))
    loaded = MedusaHeads.from_pretrained("me/heads")
    assert loaded.config == heads.config
    for (name, a), (_, b) in zip(heads.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


def test_failed_push_leaves_checkpoint_untouched_and_retry_succeeds(ckpt, hub):
    before = snapshot(ckpt)
    hub.fail["commit"] = 500
    with pytest.raises(PushError) as err:
        push_to_hub(str(ckpt), "me/heads", token=TOKEN, endpoint=hub.url)
    message = str(err.value)
    assert "HTTP 500" in message and "run the same push again" in message and TOKEN not in message
    assert snapshot(ckpt) == before
    assert len(hub.repos["me/heads"].history()) == 1  # nothing committed

    del hub.fail["commit"]
    push_to_hub(str(ckpt), "me/heads", token=TOKEN, endpoint=hub.url)
    assert set(hub.repos["me/heads"].history()[0].files) >= UPLOADED
    assert snapshot(ckpt) == before


def test_auth_and_network_errors_are_clear(ckpt, hub):
    hub.fail["create"] = 401
    with pytest.raises(PushError, match="authentication failed") as err:
        push_to_hub(str(ckpt), "me/heads", token=TOKEN, endpoint=hub.url)
    assert TOKEN not in str(err.value)
    with FakeHub() as gone:
        url = gone.url
    with pytest.raises(PushError, match="could not reach the Hub"):
        push_to_hub(str(ckpt), "me/heads", token=TOKEN, endpoint=url)


def test_cli_never_prints_the_token(ckpt, hub, capsys, caplog, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)  # resolved by huggingface_hub itself
    caplog.set_level("DEBUG")
    assert main([str(ckpt), "me/heads", "--endpoint", hub.url, "--private"]) == 0
    assert hub.requests[0]["headers"].get("authorization") == f"Bearer {TOKEN}"
    assert hub.repos["me/heads"].private
    assert main([str(ckpt), "me/heads", "--endpoint", hub.url]) == 0  # same files again: no new commit
    assert "no commit was made" in capsys.readouterr().out and len(hub.repos["me/heads"].history()) == 2
    hub.fail["create"] = 503
    assert main([str(ckpt), "me/heads", "--endpoint", hub.url, "--token", TOKEN + "x"]) == 2
    out = capsys.readouterr()
    assert "HTTP 503" in out.err
    assert TOKEN not in out.out + out.err + caplog.text


def test_branch_push_and_stale_files_removed(ckpt, hub, tmp_path):
    push_to_hub(str(ckpt), "me/heads", token=TOKEN, endpoint=hub.url)
    main_files = set(hub.repos["me/heads"].resolve("main").files)
    push_to_hub(str(ckpt), "me/heads", token=TOKEN, endpoint=hub.url, revision="dev")
    assert set(hub.repos["me/heads"].resolve("main").files) == main_files
    # A new checkpoint without calibration/metrics: the stale ones are deleted in the same commit.
    newer = tmp_path / "newer"
    make_checkpoint(newer, metrics=False, calibration=False)
    push_to_hub(str(newer), "me/heads", token=TOKEN, endpoint=hub.url, revision="dev")
    files = set(hub.repos["me/heads"].resolve("dev").files)
    assert "metrics.json" not in files and "calibration.json" not in files and "model.safetensors" in files
    assert "metrics.json" in hub.repos["me/heads"].resolve("main").files


def test_the_saved_recipe_is_read_back_through_the_schema(tmp_path):
    """recipe.yaml is the training schema's, read back strictly: a key the schema does not have is an error naming
    the file (not a dict searched for look-alike keys), and the card's data/mode/license come from its fields."""
    folder = tmp_path / "ck"
    make_checkpoint(folder, recipe="train_data: other.json\nmode: medusa1\n")
    with pytest.raises(PushError, match=r"recipe.yaml.*train_data"):
        dry_run(str(folder), str(tmp_path / "out"), "me/heads")
    folder = tmp_path / "ck2"
    make_checkpoint(folder, metrics=False, recipe="mode: medusa2\ndata:\n  path: mine.jsonl\n")
    dry_run(str(folder), str(tmp_path / "out2"), "me/heads")
    body = (tmp_path / "out2" / "README.md").read_text()
    assert "Training data: `mine.jsonl`" in body and "Training mode: `medusa2`" in body
