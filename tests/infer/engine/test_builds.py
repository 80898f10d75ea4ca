"""Packages built side by side (infer/engine/builds.py): a child process builds what this one would, bit for bit."""

import pytest
import torch

from infer.engine import kernels
from tests.tiny import tiny_model


def test_nothing_is_built_aside_without_a_folder_or_our_kernels(tmp_path, monkeypatch):
    """A model built in code (no folder to load in a child), or one without our kernels (its builds autotune): the
    engine builds one by one, here."""
    from types import SimpleNamespace

    from infer.engine import builds

    started = []
    monkeypatch.setattr(builds.subprocess, "Popen", lambda *a, **k: started.append(a))
    monkeypatch.setattr(builds, "cores", lambda: 4)
    model = tiny_model("llama")
    owner = SimpleNamespace(
        model=model, folder=str(tmp_path), kernel="bf16-v5", autotune=False, verbose=False
    )
    builds.build_in_parallel(owner, [(1, 1), (4, 1)])  # no folder on disk
    model.save_pretrained(tmp_path / "m")
    model.config._name_or_path = str(tmp_path / "m")
    assert builds.model_folder(model) == str(tmp_path / "m")
    owner.kernel = None
    builds.build_in_parallel(owner, [(1, 1), (4, 1)])  # no kernels: its builds would autotune
    assert started == []


@pytest.mark.slow
@pytest.mark.skipif(not kernels.cpu_has_avx512_bf16(), reason="the kernels need a CPU with AVX512-BF16")
def test_a_package_built_in_a_child_process_equals_one_built_here(tmp_path, monkeypatch, capsys):
    """Two packages side by side (one in a child process), then the same two where the child refuses (other weights)
    and this process builds both after it: the steps of both engines agree bit for bit."""
    from transformers import AutoModelForCausalLM

    import infer.engine.single as single
    from infer.engine import builds
    from infer.engine.single import CompiledEngine

    monkeypatch.setenv("MEDUSA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(builds, "cores", lambda: 2)
    tiny_model("llama", hidden_size=256, layers=1).to(torch.bfloat16).save_pretrained(tmp_path / "m")
    model = (
        AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.float32).to(torch.bfloat16).eval()
    )
    side = CompiledEngine(model, buckets=(1, 4), autotune=False, folder=str(tmp_path / "side"), verbose=True)
    out = capsys.readouterr().out
    assert "in 1 more process(es)" in out and "side build failed" not in out
    monkeypatch.setattr(single, "weights_fingerprint", lambda model: "not these weights")
    here = CompiledEngine(model, buckets=(1, 4), autotune=False, folder=str(tmp_path / "here"), verbose=True)
    assert "a side build failed (error: the weights on disk are not the engine's" in capsys.readouterr().out
    prompt = torch.randint(3, 500, (1, 9), generator=torch.Generator().manual_seed(0))
    tokens, offsets = torch.tensor([5, 6, 7]), torch.tensor([0, 1, 1])
    tree = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 0, 1]], dtype=torch.bool)
    outs = []
    for engine in (side, here):
        engine.prefill(prompt, 32)
        outs.append([engine.step(tokens[:1])[1], engine.step(tokens, offsets, tree)[1]])
    assert all(
        torch.equal(a, b) for a, b in zip(*outs)
    )  # both buckets: each built once in a child, once here
