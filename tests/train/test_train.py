"""The training loop on a tiny random model (tests/tiny.py) saved to a folder: 2-process DeepSpeed ZeRO-2 under
accelerate launch, exact resume, cached features, Medusa-2 with LoRA. Each run takes seconds on a CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch

from train.trainee import shifted_targets

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RECIPE = os.path.join(ROOT, "recipes", "tiny-test.yaml")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A tiny llama + tokenizer folder and 48 conversations of the FastChat sample."""
    from tests.tiny import tiny_model, tiny_tokenizer

    root = tmp_path_factory.mktemp("tiny")
    model_dir = str(root / "model")
    tiny_model("llama", vocab_size=400).save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    with open(os.path.join(ROOT, "data", "fastchat_dummy_conversation.json")) as f:
        records = json.load(f)[:48]
    data = str(root / "data.json")
    with open(data, "w") as f:
        json.dump(records, f)
    return {"model": model_dir, "data": data, "root": root}


def overrides(assets, out, *extra):
    return [
        f"model.name_or_path={assets['model']}",
        f"data.path={assets['data']}",
        f"output_dir={out}",
        *extra,
    ]


def run(assets, out, *extra):
    """main() in this process (one CPU thread: the box is shared), with accelerate's singletons reset."""
    from accelerate.state import AcceleratorState, GradientState

    from train.medusa import main

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return main([RECIPE, *overrides(assets, out, *extra)])
    finally:
        torch.set_num_threads(threads)


def read_log(out):
    with open(os.path.join(out, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def final_state(out, name="final"):
    with open(os.path.join(out, name, "trainer_state.json")) as f:
        return json.load(f)


def weights(out, name="final"):
    from safetensors.torch import load_file

    return load_file(os.path.join(out, name, "model.safetensors"))


def test_shifted_targets_stop_at_packed_boundaries():
    labels = torch.tensor([[10, 11, 12, 13, 20, 21, 22]])
    pos = torch.tensor([[0, 1, 2, 3, 0, 1, 2]])  # two packed conversations
    t = shifted_targets(labels, pos, [1, 2])
    assert t[0, :, 0].tolist() == [11, 12, 13, -100, 21, 22, -100]
    assert t[0, :, 1].tolist() == [12, 13, -100, -100, 22, -100, -100]
    assert shifted_targets(labels, None, [2])[0, :, 0].tolist() == [12, 13, 20, 21, 22, -100, -100]


@pytest.mark.slow
def test_zero2_two_processes(assets):
    """accelerate launch, DeepSpeed ZeRO-2, 2 CPU processes: loss falls, ranks agree, checkpoints are complete."""
    out = str(assets["root"] / "zero2")
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "train/accelerate/zero2.yaml"]
    cmd += ["--num_processes", "2", "train/medusa.py", RECIPE, *overrides(assets, out, "max_steps=8")]
    started = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    wall = time.time() - started
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    losses = [r["loss"] for r in read_log(out) if "loss" in r]
    assert len(losses) == 8 and losses[-1] < 0.8 * losses[0], losses
    state = final_state(out)
    assert state["num_processes"] == 2 and len(set(state["rank_param_sha256"])) == 1, state
    assert sorted(os.listdir(out)) == ["checkpoint-4", "checkpoint-8", "final", "log.jsonl"]
    ckpt = os.path.join(out, "checkpoint-8")
    for name in ("config.json", "model.safetensors", "recipe.yaml", "metrics.json", "trainer_state.json"):
        assert os.path.exists(os.path.join(ckpt, name)), name
    assert os.path.isdir(os.path.join(ckpt, "state", "pytorch_model"))  # DeepSpeed's optimizer shards
    with open(os.path.join(out, "final", "metrics.json")) as f:
        metrics = json.load(f)
    assert len(metrics["heads"]) == 3 and all(0 <= h["top1"] <= h["top5"] <= 1 for h in metrics["heads"])
    assert metrics["train_data"] == assets["data"]
    trained = state["train_time_s"]  # the steps alone (no loading, evaluation or saving), to the millisecond
    assert 0 < trained < wall and abs(metrics["train_time_s"] - trained) <= 0.05, (trained, metrics, wall)

    from infer.draft.heads import MedusaHeads

    heads = MedusaHeads.from_pretrained(os.path.join(out, "final"))
    assert heads.config.medusa_num_heads == 3 and heads.config.layout == "own_lm_head"


def test_resume_gives_the_uninterrupted_weights(assets):
    full, broken = str(assets["root"] / "full"), str(assets["root"] / "broken")
    run(assets, full, "save_every=2", "save_total_limit=2", "eval_every=0")
    assert sorted(n for n in os.listdir(full) if n.startswith("checkpoint")) == [
        "checkpoint-6",
        "checkpoint-8",
    ]
    # "killed" after step 7: the newest complete checkpoint is step 6, steps 7.. are redone
    run(assets, broken, "save_every=3", "stop_after_steps=7", "eval_every=0")
    assert not os.path.exists(os.path.join(broken, "final"))
    assert sorted(n for n in os.listdir(broken) if n.startswith("checkpoint")) == [
        "checkpoint-3",
        "checkpoint-6",
    ]
    with pytest.raises(SystemExit, match=r"different recipe \(train.lr: 0.01 -> 0.02\)"):
        run(assets, broken, "save_every=3", "eval_every=0", "lr=0.02")  # not a resumption of this run
    run(assets, broken, "save_every=3", "eval_every=0")
    a, b = weights(full), weights(broken)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert final_state(full)["rank_param_sha256"] == final_state(broken)["rank_param_sha256"]
    # the resumed run logged steps 7 and 8 again, with the same losses as the uninterrupted run
    full_loss = {r["step"]: r["loss"] for r in read_log(full) if "loss" in r}
    resumed = [r for r in read_log(broken) if "loss" in r]
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6, 7, 7, 8]
    assert all(r["loss"] == full_loss[r["step"]] for r in resumed)


def test_cached_features_match_the_base(assets, monkeypatch):
    import train.features

    plain, cached = str(assets["root"] / "plain"), str(assets["root"] / "cached")
    run(assets, plain, "max_steps=2", "save_every=0", "eval_every=0")
    features = str(assets["root"] / "features")
    bars = []
    real_bar = train.features.tqdm_

    def spy(total, desc, accelerator, **kw):
        bar = real_bar(total, desc, accelerator, **kw)
        bars.append((desc, total, []))
        update = bar.update
        bar.update = lambda n=1: bars[-1][2].append(n) or update(n)
        return bar

    monkeypatch.setattr(train.features, "tqdm_", spy)
    metrics = run(
        assets, cached, "max_steps=2", "save_every=0", "cache_features=true", f"features_dir={features}"
    )
    assert len(os.listdir(features)) == 2  # train and eval caches
    # the caching bar ticks per batch of conversations, not per 256-example shard
    desc, total, ticks = bars[0]
    assert "caching train features" in desc and sum(ticks) == total and len(ticks) > 1
    l0, l1 = read_log(plain), read_log(cached)
    assert [r["loss"] for r in l0 if "loss" in r] == pytest.approx(
        [r["loss"] for r in l1 if "loss" in r], rel=1e-5
    )
    a, b = weights(plain), weights(cached)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert len(metrics["heads"]) == 3
    # the second run finds the cache (same data, model and max_length): no new folder
    run(
        assets,
        str(assets["root"] / "cached2"),
        "max_steps=1",
        "cache_features=true",
        f"features_dir={features}",
    )
    assert len(os.listdir(features)) == 2


def test_medusa2_lora(assets):
    out = str(assets["root"] / "medusa2")
    extra = ["mode=medusa2", "max_steps=3", "heads_warmup_steps=2", "distill_weight=0.5", "save_every=0"]
    metrics = run(assets, out, *extra, "medusa2.lora_target_modules=[q_proj, v_proj]", "lora_r=4")
    adapter = os.path.join(out, "final", "adapter")
    assert os.path.exists(os.path.join(adapter, "adapter_config.json"))
    assert os.path.exists(os.path.join(adapter, "adapter_model.safetensors"))
    with open(os.path.join(adapter, "adapter_config.json")) as f:
        assert sorted(json.load(f)["target_modules"]) == ["q_proj", "v_proj"]
    log = [r for r in read_log(out) if "loss" in r]
    assert [r["coef"] for r in log] == [0.1, 0.2, 0.2] and all(r["loss"] == r["loss"] for r in log)
    assert "lm" in metrics and len(metrics["heads"]) == 3


def test_trainee_scores_a_reduced_head_vocabulary():
    """Head vocabulary [V_head]: CE over its rows only; targets outside it are misses that add no loss."""
    from torch import nn

    from infer.draft.heads import MedusaConfig, MedusaHeads
    from train.trainee import Trainee

    torch.manual_seed(0)
    H, V, vocab = 8, 30, [2, 5, 7, 11, 13]
    heads = MedusaHeads(MedusaConfig(hidden_size=H, vocab_size=V, medusa_num_heads=1, head_vocab=vocab))
    lm_head = nn.Linear(H, V, bias=False)
    model = Trainee(heads, lm_head=lm_head.requires_grad_(False))
    hidden = torch.randn(6, H)
    targets = torch.tensor([[5], [13], [2], [3], [-100], [7]])  # 3 is outside the head vocabulary
    out = model({"hidden": hidden, "targets": targets})
    rows = torch.tensor([0, 1, 2, 5])  # labelled rows whose target the heads can score
    logits = hidden[rows] @ lm_head.weight[vocab].T  # untrained blocks are the identity
    expected = torch.nn.functional.cross_entropy(logits, torch.tensor([1, 4, 0, 2]))
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    loss_sum, top1, top5, count = out["stats"][0].tolist()
    assert count == 5 and top5 == 4  # 5 labelled targets, of which the 4 scorable are all in a top-5 of 5
    assert top1 == (logits.argmax(-1) == torch.tensor([1, 4, 0, 2])).sum().item()


def test_reduced_head_vocabulary_training(assets):
    """heads.head_vocab_size: the vocabulary comes from the training labels, the cached and the uncached paths
    agree, held-out accuracy counts every labelled token (the full-vocabulary run's count), heads load back."""
    from infer.draft.heads import MedusaHeads

    base = ["max_steps=2", "save_every=0", "layout=shared_lm_head"]
    full = run(assets, str(assets["root"] / "v-full"), *base)
    plain, cached = str(assets["root"] / "v-plain"), str(assets["root"] / "v-cached")
    m0 = run(assets, plain, *base, "head_vocab_size=40")
    feats = f"features_dir={assets['root'] / 'v-features'}"
    m1 = run(assets, cached, *base, "head_vocab_size=40", "cache_features=true", feats)
    assert [r["loss"] for r in read_log(plain) if "loss" in r] == pytest.approx(
        [r["loss"] for r in read_log(cached) if "loss" in r], rel=1e-5
    )
    assert [h["tokens"] for h in m0["heads"]] == [h["tokens"] for h in full["heads"]]
    assert [h["top1"] for h in m0["heads"]] == pytest.approx([h["top1"] for h in m1["heads"]], abs=1e-4)
    heads = MedusaHeads.from_pretrained(os.path.join(plain, "final"))
    vocab = heads.config.head_vocab
    assert 40 <= len(vocab) <= 41 and vocab == sorted(set(vocab))
    with pytest.raises(SystemExit, match="use zero2 or ddp"):
        from types import SimpleNamespace

        from train.medusa import head_vocabulary

        zero3 = SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=3)))
        head_vocabulary(zero3, None, None, None, None)


def test_sequential_heads_training(assets):
    """heads.head_type=sequential: the cached and uncached paths agree (the cache holds the path tokens), the
    heads load back as sequential, and each head reads embeddings of its path (teacher forcing)."""
    from infer.draft.heads import MedusaHeads

    base = ["max_steps=3", "save_every=0", "head_type=sequential", "layout=shared_lm_head"]
    plain, cached = str(assets["root"] / "s-plain"), str(assets["root"] / "s-cached")
    m0 = run(assets, plain, *base)
    feats = f"features_dir={assets['root'] / 's-features'}"
    m1 = run(assets, cached, *base, "cache_features=true", feats)
    assert [r["loss"] for r in read_log(plain) if "loss" in r] == pytest.approx(
        [r["loss"] for r in read_log(cached) if "loss" in r], rel=1e-5
    )
    assert [h["top1"] for h in m0["heads"]] == pytest.approx([h["top1"] for h in m1["heads"]], abs=1e-4)
    heads = MedusaHeads.from_pretrained(os.path.join(plain, "final"))
    assert heads.sequential and heads.config.head_type == "sequential"
    w = weights(plain)
    H = heads.config.hidden_size
    for k in range(
        3
    ):  # head k's input layer reads h and k+1 path embeddings, and training moved their weights
        assert w[f"inputs.{k}.linear.weight"].shape == (H, (k + 2) * H)
        assert w[f"inputs.{k}.linear.weight"][:, H:].abs().sum() > 0


def test_a_diverging_run_stops_without_saving(assets):
    out = str(assets["root"] / "diverge")
    with pytest.raises(SystemExit, match="training diverged at step"):
        run(assets, out, "max_steps=6", "lr=1e30", "save_every=0", "eval_every=0")
    assert not os.path.exists(os.path.join(out, "final"))


def test_push_to_hub_at_the_end_of_training(assets, monkeypatch):
    """output.push_to_hub: final/ goes to the (fake, local) Hub in one commit; a failed push names the retry command
    and leaves final/ in place; a malformed repo id is refused before any work."""
    from tests.train.hub_server import FakeHub

    push = ["max_steps=2", "save_every=0", "hub_base_model=HuggingFaceTB/SmolLM2-135M-Instruct"]
    with FakeHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_TOKEN", "hf_TrainPushToken000000000000000000")
        out = str(assets["root"] / "pushed")
        run(assets, out, *push, "push_to_hub=me/tiny-heads")
        files = set(hub.repos["me/tiny-heads"].history()[0].files)
        assert {"config.json", "model.safetensors", "recipe.yaml", "metrics.json", "README.md"} <= files
        hub.fail["commit"] = 500
        failed = str(assets["root"] / "push-failed")
        retry = (
            r"retry: python -m train.push .*final me/other-heads --private --base-model HuggingFaceTB/SmolLM2"
        )
        with pytest.raises(SystemExit, match=retry):  # the retry keeps the visibility and the base model
            run(assets, failed, *push, "push_to_hub=me/other-heads", "hub_private=true")
        assert os.path.exists(os.path.join(failed, "final", "model.safetensors"))
    bad = str(assets["root"] / "bad-repo")
    with pytest.raises(SystemExit):
        run(assets, bad, *push, "push_to_hub=not/a/repo")
    assert not os.path.exists(bad)


def test_an_output_folder_in_use_is_refused(assets):
    out = assets["root"] / "locked"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / ".lock").write_text(str(holder.pid))  # a live training holds the folder
        with pytest.raises(SystemExit, match=f"in use by a running training \\(pid {holder.pid}"):
            run(assets, str(out), "max_steps=1", "save_every=0", "eval_every=0")
        assert not (out / "final").exists()
    finally:
        holder.kill()
        holder.wait()
    run(assets, str(out), "max_steps=1", "save_every=0", "eval_every=0")  # its pid is gone: a stale lock
    assert (out / "final").exists() and not (out / ".lock").exists()


def checkpoints(out):
    return sorted((n for n in os.listdir(out) if n.startswith("checkpoint")), key=lambda n: int(n[11:]))


def test_starting_over_replaces_the_earlier_runs_checkpoints(assets, capsys):
    """output.resume=none in a folder holding an older run: the new run's checkpoints are kept and the old run's
    pruned (not the other way round by step number), and a killed new run resumes from its own checkpoint."""
    out = str(assets["root"] / "start-over")
    run(assets, out, "save_every=2", "eval_every=0")  # the older run: checkpoint-6, checkpoint-8, final
    assert checkpoints(out) == ["checkpoint-6", "checkpoint-8"]
    new = ("save_every=3", "eval_every=0", "lr=0.02")
    run(assets, out, *new, "resume=none", "stop_after_steps=4")  # killed after step 4
    assert checkpoints(out) == ["checkpoint-3"]
    capsys.readouterr()
    run(assets, out, *new)  # resume=auto: its own checkpoint, not a refusal about the older run's recipe
    assert "checkpoint-3 at step 3" in capsys.readouterr().out
    assert checkpoints(out) == ["checkpoint-3", "checkpoint-6"] and final_state(out)["step"] == 8


def test_a_damaged_latest_checkpoint_falls_back_to_the_previous(assets, capsys):
    full, broken = str(assets["root"] / "fb-full"), str(assets["root"] / "fb-broken")
    run(assets, full, "save_every=0", "eval_every=0")
    run(assets, broken, "save_every=3", "stop_after_steps=7", "eval_every=0")
    state = os.path.join(broken, "checkpoint-6", "state")
    victim = max((os.path.join(r, n) for r, _, fs in os.walk(state) for n in fs), key=os.path.getsize)
    with open(victim, "r+b") as f:  # a write cut short: the biggest state file loses its tail
        f.truncate(os.path.getsize(victim) // 2)
    capsys.readouterr()
    run(assets, broken, "save_every=3", "eval_every=0")
    printed = capsys.readouterr().out
    assert "checkpoint-6 is damaged" in printed and "checkpoint-3 at step 3" in printed
    a, b = weights(full), weights(broken)
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same weights as the uninterrupted run


def test_calibration_after_training_is_a_function_call(assets, monkeypatch):
    import train.calibrate

    calls = []
    monkeypatch.setattr(train.calibrate, "calibrate", lambda *a, **kw: calls.append((a, kw)))
    out = str(assets["root"] / "calibrated")
    run(assets, out, "max_steps=1", "save_every=0", "eval_every=0", f"calib_data={assets['data']}")
    (folder, data), kw = calls[0]
    assert folder == os.path.join(out, "final") and data == assets["data"]
    assert kw["split"] == "calib" and kw["model_name"] == assets["model"]


def test_export_at_the_end_of_training(assets):
    """output.export: final/ exported for serving engines; each export loads back with the same head logits."""
    from infer.draft.heads import MedusaHeads

    out = str(assets["root"] / "exported")
    run(
        assets,
        out,
        "max_steps=1",
        "save_every=0",
        "eval_every=0",
        "export=[vllm, tgi]",
        "layout=shared_lm_head",
    )
    from transformers import AutoModelForCausalLM

    final = MedusaHeads.from_pretrained(os.path.join(out, "final"))
    lm_head = AutoModelForCausalLM.from_pretrained(assets["model"]).get_output_embeddings()
    h = torch.randn(3, final.config.hidden_size)
    for fmt in ("vllm", "tgi"):
        back = MedusaHeads.from_pretrained(os.path.join(out, "export", fmt))
        lm = None if back.lm_heads is not None else lm_head
        torch.testing.assert_close(back(h, lm), final(h, lm_head), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the warning is about CPU-only machines")
def test_no_deepspeed_accelerator_warning_on_cpu():
    """Training imports DeepSpeed (through accelerate): on a CPU-only machine it must not warn "Setting accelerator
    to CPU". The setting lives in ``train`` (imported first by train/medusa.py); inference never loads DeepSpeed."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "DS_ACCELERATOR"}
    done = subprocess.run(
        [sys.executable, "-c", "import train, deepspeed"], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    assert "Setting accelerator to CPU" not in done.stdout + done.stderr
    code = "import sys, infer.pipeline, infer.serve, infer.bench; print('deepspeed' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.stdout.strip() == "False", done.stderr  # inference does not load DeepSpeed at all


# ---------------------------------------------------------------------- the distill stage
def test_distill_stage_answers_a_dataset_folder_resumes_and_is_reused(assets, tmp_path, monkeypatch):
    """distill.enabled: the base answers the conversations of a dataset folder (as a Hub dataset id would be read)
    before training; a killed stage resumes where it stopped; a later run reuses the file, loading no model for it;
    other settings are refused."""
    import data.distill
    from infer.cli import CliError

    folder = tmp_path / "sharegpt"
    folder.mkdir()
    with open(assets["data"]) as f:
        records = json.load(f)[:16]
    (folder / "train.json").write_text(json.dumps(records))
    out = str(tmp_path / "out")
    stage = [
        "data.path=" + str(folder),
        "distill.enabled=true",
        "distill.max_new_tokens=6",
        "distill.batch_size=4",
    ]
    real = data.distill.distill
    calls = []

    def killed_after_5(*args, **kwargs):  # the first run dies after 5 answers, as a kill would leave it
        real(*args, **{**kwargs, "max_records": 5})
        raise KeyboardInterrupt

    monkeypatch.setattr(data.distill, "distill", killed_after_5)
    with pytest.raises(KeyboardInterrupt):
        run(assets, out, *stage, "train.max_steps=2")
    monkeypatch.setattr(data.distill, "distill", lambda *a, **k: calls.append(real(*a, **k)) or calls[-1])
    run(assets, out, *stage, "train.max_steps=2")
    assert calls[0]["already_done"] == 5 and calls[0]["written"] == 11  # resumed, not started over
    with open(os.path.join(out, "distilled.jsonl")) as f:
        distilled = [json.loads(line) for line in f]
    assert len(distilled) == 16 and all(r["provenance"]["model"] == assets["model"] for r in distilled)
    originals = [t["value"] for r in records for t in r["conversations"] if t["from"] == "gpt"]
    answers = [m["content"] for r in distilled for m in r["messages"] if m["role"] == "assistant"]
    assert answers and not set(answers) & set(originals)  # the base's own answers, not the dataset's
    assert "distilled from" in json.load(open(os.path.join(out, "final", "metrics.json")))["train_data"]

    def no_model(*args, **kwargs):
        raise AssertionError("a complete distilled file must be reused")

    monkeypatch.setattr(data.distill, "distill", no_model)
    reuse = ["distill.output=" + os.path.join(out, "distilled.jsonl"), "train.max_steps=2"]
    run(assets, str(tmp_path / "again"), *stage, *reuse)
    assert os.path.exists(tmp_path / "again" / "final" / "model.safetensors")
    with pytest.raises(CliError, match="distill: .*distilled with .*delete it"):
        run(assets, str(tmp_path / "third"), *stage, *reuse, "distill.max_new_tokens=7")


# ---------------------------------------------------------------------- a full disk
DISK_FULL = "Error while serializing: I/O error: No space left on device (os error 28)"  # safetensors' words


def fail_safetensors_writes(monkeypatch, under: str):
    """Every safetensors file written below a folder named ``under`` fails as a full disk makes it fail: the
    SafetensorError (neither an OSError nor a RuntimeError) its Rust writer raises on ENOSPC. Returns the paths
    tried."""
    import safetensors.torch
    from safetensors import SafetensorError

    real, tried = safetensors.torch.serialize_file, []

    def serialize_file(tensors, filename, *args, **kwargs):
        tried.append(str(filename))
        if under in os.path.normpath(str(filename)).split(os.sep):
            raise SafetensorError(DISK_FULL)
        return real(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "serialize_file", serialize_file)
    return tried


def test_a_full_disk_is_named_and_the_heads_are_rescued(assets, tmp_path, monkeypatch, capsys):
    """final/ cannot be written (safetensors says "I/O error: No space left on device"): the run says the disk is
    full in one line, leaves no half-written folder, and, with no checkpoint, keeps the trained heads elsewhere."""
    from infer.cli import CliError
    from infer.draft.heads import MedusaHeads

    tried = fail_safetensors_writes(monkeypatch, "final.tmp")
    out = str(tmp_path / "out")
    with pytest.raises(CliError, match=r"could not write .*final: the disk is full \(No space left on device, errno 28\); "
                       "the trained heads were saved to"):  # fmt: skip
        run(assets, out, "output.save_every=1000", "train.max_steps=2")
    err = capsys.readouterr().err
    assert "error: could not write" in err and "Traceback" not in err
    rescued = os.path.join(out, "final-heads-rescued")
    assert os.path.dirname(tried[-1]) == rescued and any("final.tmp" in t for t in tried)
    assert sorted(os.listdir(out)) == ["final-heads-rescued", "log.jsonl"]  # no final.tmp, no final, no .lock
    heads = MedusaHeads.from_pretrained(rescued)
    assert heads.num_heads == 3


def test_a_checkpoint_that_cannot_be_written_keeps_the_earlier_ones_and_rescues_the_heads(
    assets, tmp_path, monkeypatch, capsys
):
    """checkpoint-2's optimizer state cannot be written: the run stops saying so, checkpoint-1 is untouched and
    the heads of step 2 (smaller than the optimizer state) are saved beside it."""
    from safetensors.torch import load_file

    from infer.cli import CliError
    from train.checkpoint import checkpoint_damage

    fail_safetensors_writes(monkeypatch, "checkpoint-2.tmp")
    out = str(tmp_path / "out")
    with pytest.raises(CliError, match=r"could not write .*checkpoint-2: the disk is full .*; the previous "
                       r"checkpoints are untouched; the trained heads were saved to .*checkpoint-2-heads-rescued"):  # fmt: skip
        run(assets, out, "output.save_every=1", "train.max_steps=3", "train.eval_every=0")
    assert "error: could not write" in capsys.readouterr().err
    assert sorted(os.listdir(out)) == ["checkpoint-1", "checkpoint-2-heads-rescued", "log.jsonl"]
    assert checkpoint_damage(os.path.join(out, "checkpoint-1")) is None
    step1 = weights(out, "checkpoint-1")
    step2 = load_file(os.path.join(out, "checkpoint-2-heads-rescued", "model.safetensors"))
    assert step1.keys() == step2.keys() and any(not torch.equal(step1[k], step2[k]) for k in step1)


REAL_WRITE_FAILURE = """
import os, resource, signal, sys, torch
from accelerate import Accelerator
from infer.draft.heads import MedusaConfig, MedusaHeads
from train.checkpoint import CheckpointWriteError, save_checkpoint
from train.config import Recipe

class Trainee(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.heads = MedusaHeads(MedusaConfig(hidden_size=64, vocab_size=512, medusa_num_heads=2, layout="own_lm_head"))
        self.lora = False

acc = Accelerator(cpu=True)
model = Trainee()
optimizer = torch.optim.AdamW(model.parameters())
model, optimizer = acc.prepare(model, optimizer)
model.heads(torch.randn(2, 64)).float().pow(2).mean().backward()
optimizer.step()  # Adam's state: twice the heads' size
cfg = Recipe()
cfg.output.output_dir = sys.argv[1]
heads = sum(p.numel() * 4 for p in model.parameters())
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing us
for name, limit, with_state in (("checkpoint-1", heads * 3 // 2, True), ("final", heads // 2, False)):
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    try:
        save_checkpoint(acc, model, cfg, name, {"run_id": "r"}, {}, with_state)
        print("saved", name)
    except CheckpointWriteError as e:
        print(e)
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
"""


@pytest.mark.slow
def test_real_write_failures_are_named_and_cleaned_up(tmp_path):
    """Real failed writes (a file-size limit: EFBIG, through the same Rust and torch I/O paths as ENOSPC): torch.save
    of the optimizer state fails (the heads alone fit: rescued), then safetensors' write of final/ fails (nothing
    fits: named, and nothing half-written is left, in the output folder or the temp folder)."""
    out, tmp = tmp_path / "out", tmp_path / "tmp"
    out.mkdir(), tmp.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1", TMPDIR=str(tmp), PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-c", REAL_WRITE_FAILURE, str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt, final = proc.stdout.strip().splitlines()[-2:]
    assert f"could not write {out}/checkpoint-1: the disk is full" in ckpt, ckpt  # torch: "unexpected pos"
    assert f"the trained heads were saved to {out}/checkpoint-1-heads-rescued" in ckpt, ckpt
    assert f"could not write {out}/final: the write failed (File too large, errno 27)" in final, final
    assert "the heads could not be saved anywhere" in final, final
    assert sorted(os.listdir(out)) == ["checkpoint-1-heads-rescued"]
    assert not [p.name for p in tmp.iterdir() if p.name.startswith("heads-")]  # the second rescue: removed

    from infer.draft.heads import MedusaHeads

    assert MedusaHeads.from_pretrained(str(out / "checkpoint-1-heads-rescued")).num_heads == 2
