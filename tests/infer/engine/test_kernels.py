"""Our bf16 linear kernel: the maths of nn.Linear within bf16 rounding, a row's output independent of the other
rows, the model's layers restored after a trace, and a compiled step that uses it agreeing with eager bf16."""

import copy
import os

import pytest
import torch

from infer.engine import kernels
from tests.tiny import tiny_model

needs_bf16 = pytest.mark.skipif(
    not kernels.cpu_has_avx512_bf16(), reason="the kernel needs a CPU with AVX512-BF16"
)


def test_which_steps_use_it():
    assert not kernels.used(None, 8, 1)  # not wanted here
    assert kernels.used("k", 8, 1) and kernels.used("k", 2, 4) and kernels.used("k", None, 4)
    assert not kernels.used("k", 4, 1) and not kernels.used("k", 1, 4) and not kernels.used("k", None, 1)
    model = tiny_model("llama")  # fp32: never wanted
    assert kernels.wanted(model) is None


@needs_bf16
def test_the_kernel_computes_a_linear_layer_and_rows_do_not_interact():
    kernels.load_bf16_linear()
    g = torch.Generator().manual_seed(0)
    layer = torch.nn.Linear(96, 64, bias=True).to(torch.bfloat16)
    x = torch.randn(13, 96, generator=g).to(torch.bfloat16)
    ref = torch.nn.functional.linear(x.float(), layer.weight.float(), layer.bias.float())
    with kernels.packed_linears(torch.nn.Sequential(layer)) as layers:
        assert layers == [layer]
        y = layer(x)
        per_row = [layer(x[i : i + 1]) for i in range(13)]  # the same rows, one at a time
        in_blocks = layer(x.view(1, 13, 96))  # any leading shape
    err = (y.float() - ref).abs().max().item()
    assert (
        err <= 2 * (torch.nn.functional.linear(x, layer.weight, layer.bias).float() - ref).abs().max().item()
    )
    assert all(torch.equal(y[i], r[0]) for i, r in enumerate(per_row))  # batch invariant, bit for bit
    assert torch.equal(in_blocks[0], y)
    assert "forward" not in vars(layer) and not hasattr(layer, "_medusa_packed")  # the layer is its own again
    with pytest.raises(RuntimeError, match="N % 32"):
        kernels.pack(torch.zeros(48, 96, dtype=torch.bfloat16))


@needs_bf16
@pytest.mark.slow
def test_a_compiled_step_with_the_kernel_agrees_with_eager_bf16(tmp_path, monkeypatch):
    """A one-row engine with an 8-token bucket: that step uses the kernel (named in its package file), the
    1-token step does not; an 8-token chain's logits match the eager engine's within bf16 rounding."""
    from infer.engine.single import CompiledEngine, EagerEngine, step_package

    monkeypatch.setenv("MEDUSA_CACHE", str(tmp_path))
    model = copy.deepcopy(tiny_model("llama")).to(torch.bfloat16)
    assert kernels.wanted(model) == f"bf16_linear-v{kernels.KERNEL_VERSION}"
    engine = CompiledEngine(model, buckets=(1, 8), autotune=False)
    files = sorted(os.listdir(engine.folder))
    assert os.path.basename(step_package(engine.folder, 1, 8, engine.kernel)) in files
    assert files == ["step-1.pt2", f"step-8-{engine.kernel}.pt2"]
    prompt = torch.randint(0, 512, (1, 12), generator=torch.Generator().manual_seed(1))
    chain = torch.randint(0, 512, (8,), generator=torch.Generator().manual_seed(2))
    tree = torch.ones(8, 8, dtype=torch.bool).tril()
    out = []
    for e in (engine, EagerEngine(model)):
        e.prefill(prompt, 32)
        out.append(e.step(chain, torch.arange(8), tree)[1].float())
    scale = out[1].abs().max().item()
    assert (out[0] - out[1]).abs().max().item() < 0.05 * scale
    assert (out[0].argmax(-1) == out[1].argmax(-1)).float().mean() >= 0.75
