"""Our bf16 kernels: the linear one does the maths of nn.Linear within bf16 rounding, the attention one the maths
of eager attention while reading only the slots a query sees; a row's output independent of the other rows; the
model's layers restored after a trace; compiled steps that use them agree with eager bf16, and make bf16 greedy
decoding batch invariant (trees equal plain, rows in a batch equal alone)."""

import copy
import os
import zipfile

import pytest
import torch

from infer.engine import kernels
from tests.tiny import tiny_model

needs_bf16 = pytest.mark.skipif(
    not kernels.cpu_has_avx512_bf16(), reason="the kernel needs a CPU with AVX512-BF16"
)


def test_not_wanted_in_fp32():
    model = tiny_model("llama")  # fp32: never wanted
    assert kernels.wanted(model) is None


@needs_bf16
def test_the_kernel_computes_a_linear_layer_and_rows_do_not_interact():
    kernels.load_library()
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


def _attention_case(B, H, KV, T, S, D, seed=0):
    """Random bf16 queries / cache and a step's mask: row b sees its first start[b] slots, then its T tokens
    (from slot start[b]) a chain each -> q, k, v, mask [B, 1, T, S] (finfo.min where hidden)."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, n, m, D, generator=g).to(torch.bfloat16) for n, m in ((H, T), (KV, S), (KV, S)))
    start = torch.randint(1, S - T, (B,), generator=g)
    col = torch.arange(S)[None, None, :]
    rel = col - start[:, None, None]
    visible = (rel < 0) | ((rel >= 0) & (rel <= torch.arange(T)[None, :, None]))  # [B, T, S]
    mask = torch.zeros(B, 1, T, S, dtype=torch.bfloat16)
    return q, k, v, mask.masked_fill(~visible[:, None], torch.finfo(torch.bfloat16).min)


@needs_bf16
@pytest.mark.parametrize("shape", [(8, 9, 3, 1, 256, 64), (2, 4, 2, 5, 96, 128), (3, 2, 2, 3, 40, 256)])
def test_the_attention_kernel_reads_only_what_a_query_sees(shape):
    from infer.engine.single import grouped_attention

    kernels.load_library()
    B, H, KV, T, S, D = shape
    q, k, v, mask = _attention_case(*shape)
    out = kernels.attention(q, k, v, mask, D**-0.5)  # [B, T, H, D]
    exact = grouped_attention(None, q.float(), k.float(), v.float(), mask.float())[0]
    eager = grouped_attention(None, q, k, v, mask)[0]  # the compiled steps' bf16 maths before the kernel
    assert out.shape == eager.shape and out.dtype == torch.bfloat16
    assert (out.float() - exact).abs().max() <= 2 * (eager.float() - exact).abs().max() + 1e-3
    # a row alone, or in a longer cache whose extra slots hold garbage it does not see: the same bits
    assert all(torch.equal(kernels.attention(q[b : b + 1], k[b : b + 1], v[b : b + 1], mask[b : b + 1],
                                             D**-0.5), out[b : b + 1]) for b in range(B))  # fmt: skip
    hidden = torch.full((B, KV, 16, D), float("nan"), dtype=torch.bfloat16)
    wide = [torch.cat([x, hidden], dim=2) for x in (k, v)]
    wide_mask = torch.cat([mask, torch.full((B, 1, T, 16), torch.finfo(torch.bfloat16).min,
                                            dtype=torch.bfloat16)], dim=3)  # fmt: skip
    assert torch.equal(kernels.attention(q, *wide, wide_mask, D**-0.5), out)
    assert torch.equal(kernels.attention(q, k, v, mask.float(), D**-0.5), out)  # an fp32 mask reads the same


@needs_bf16
def test_the_attention_kernel_is_used_only_inside_a_trace_and_refuses_what_it_cannot_compute():
    kernels.load_library()
    q, k, v, mask = _attention_case(1, 2, 2, 1, 32, 64)
    assert not kernels.attention_fits(q, k)  # outside attention_op: the model's maths
    with kernels.attention_op():
        assert kernels.attention_fits(q, k)
        assert not kernels.attention_fits(q, k, softcap=30.0)
        assert not kernels.attention_fits(q.float(), k.float())
    with kernels.attention_op(False):
        assert not kernels.attention_fits(q, k)
    q32, k32, v32, mask32 = _attention_case(1, 2, 2, 1, 32, 32)
    with pytest.raises(RuntimeError, match="head_dim"):
        kernels.attention(q32, k32, v32, mask32, 1.0)
    with pytest.raises(RuntimeError, match="mask"):
        kernels.attention(q, k, v, mask[:, :, :, :8], 1.0)


@pytest.fixture(scope="module")
def bf16_oracle(tmp_path_factory):
    """A tiny bf16 llama with head_dim 64 (the attention kernel's), heads fitted to its fp32 twin's continuations
    (trees get accepted), and its AOTInductor engine with buckets 1 and 8 in a cache of its own."""
    from infer.engine.single import CompiledEngine
    from tests.tiny import fit_oracle_heads, greedy_continuations

    if not kernels.cpu_has_avx512_bf16():
        pytest.skip("the kernels need a CPU with AVX512-BF16")
    mp = pytest.MonkeyPatch()
    mp.setenv("MEDUSA_CACHE", str(tmp_path_factory.mktemp("cache")))
    model32 = tiny_model("llama", hidden_size=256, layers=4)
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(3, 512, (1, n), generator=g) for n in (5, 11, 17)]
    conts = greedy_continuations(model32, prompts, 24)
    heads = fit_oracle_heads(
        model32, [torch.cat([p[0], c]) for p, c in zip(prompts, conts)], num_heads=3, steps=60
    )
    model = copy.deepcopy(model32).to(torch.bfloat16)
    engine = CompiledEngine(model, buckets=(1, 8))  # autotuned, as users' are
    yield model, heads.to(torch.bfloat16), prompts, engine
    mp.undo()


@pytest.mark.slow
def test_a_compiled_step_with_the_kernels_agrees_with_eager_bf16(bf16_oracle):
    """Both steps call both kernels (the library named in their package files); an 8-token chain's logits match
    the eager engine's within bf16 rounding."""
    from infer.engine.single import EagerEngine

    model, _, _, engine = bf16_oracle
    assert kernels.wanted(model) == f"bf16-v{kernels.KERNEL_VERSION}"
    files = sorted(os.listdir(engine.folder))
    assert files == [f"step-1-{engine.kernel}.pt2", f"step-8-{engine.kernel}.pt2"]
    for f in files:  # a package is a zip of the generated sources, the compiled library and the weights
        with zipfile.ZipFile(os.path.join(engine.folder, f)) as z:
            src = "".join(
                z.read(n).decode(errors="ignore") for n in z.namelist() if n.endswith((".cpp", ".json"))
            )
        assert "medusa::attention" in src and "medusa::bf16_linear" in src
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
    # --engine auto finds these packages (named with the kernels) once a build here measured them: it never did
    from infer.engine.single import build_compiled, make_engine

    _, rec = build_compiled(model, (1, 8), verbose=False)  # loads the fixture's packages, times both engines
    auto, reason = make_engine(model, "auto", buckets=(1, 8), verbose=False)
    assert "not built" not in reason and (auto.name == "compiled") == rec["faster"], reason


@pytest.mark.slow
def test_bf16_greedy_trees_equal_plain_and_rows_equal_alone(bf16_oracle):
    """Batch invariance in bf16: greedy dynamic-tree decoding returns plain greedy decoding's tokens exactly (a
    token's logits do not depend on the tree it is verified in), and each row of a batch (prefilled packed with the
    others, verified in steps of several rows) returns what it returns alone."""
    from infer.decode.batch import BatchDecoder
    from infer.decode.single import DecodeConfig, generate
    from infer.engine.batch import CompiledBatchEngine

    model, heads, prompts, engine = bf16_oracle
    # bit for bit: an 8-token chain verified in one step, and the same tokens one plain step at a time; then the
    # same chain as one row of three in the batched engine
    chain = torch.randint(3, 512, (8,), generator=torch.Generator().manual_seed(4))
    engine.prefill(prompts[1], 64)
    in_tree = engine.step(chain, torch.arange(8), torch.ones(8, 8, dtype=torch.bool).tril())[1]
    engine.prefill(prompts[1], 64)
    one_by_one = []
    for t in chain:
        one_by_one.append(engine.step(t[None])[1][0])
        engine.accept(None)
    assert torch.equal(in_tree, torch.stack(one_by_one))
    batched = CompiledBatchEngine(engine, fixed_shapes=())  # dynamic-batch steps of 1 and 8 tokens
    rows = batched.fresh()
    rows.prefill(prompts, [64] * 3)
    rows.join()
    ids = torch.stack([chain.roll(1), chain, chain.roll(2)])
    out = rows.step(
        ids, torch.arange(8).expand(3, 8), torch.ones(8, 8, dtype=torch.bool).tril().expand(3, 8, 8)
    )[1]
    assert torch.equal(out[1], in_tree)
    # and so the decoded tokens
    plain_cfg = DecodeConfig(tree="none", max_new_tokens=24)
    tree_cfg = DecodeConfig(tree="dynamic", node_budget=7, top_m=4, max_new_tokens=24)
    plain = [generate(model, p, None, plain_cfg, eos=set(), engine=engine).tokens for p in prompts]
    accepted = []
    for p, ref in zip(prompts, plain):
        out = generate(model, p, heads, tree_cfg, eos=set(), engine=engine)
        assert out.tokens == ref
        accepted += out.accept_lengths
    assert sum(accepted) / len(accepted) > 1.3  # the trees were accepted, not just verified
    for cfg in (plain_cfg, tree_cfg):
        dec = BatchDecoder(
            model, heads if cfg.tree != "none" else None, cfg, eos=set(), engine=batched.fresh()
        )
        rows = dec.add_many(prompts)
        while dec.active:
            dec.step()
        assert [r.result.tokens for r in rows] == plain
