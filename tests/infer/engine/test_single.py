"""The engine layer: the compiled fixed-shape engine decodes exactly like the eager one (fp32, greedy: the
cornerstone holds), trees are padded to the buckets, the cache grows, and a compiler failure falls back to eager."""

import copy
import functools
import json

import pytest
import torch

from infer.decode.single import DecodeConfig, generate
from infer.engine import single as engine_mod
from infer.engine.single import CompiledEngine, EagerEngine, EngineError, make_engine
from tests.tiny import FAMILIES, oracle_setup, sequential_oracle

NEW = 20


@pytest.fixture(scope="module", params=FAMILIES)
def compiled_oracle(request):
    """A tiny oracle of each family (its own copy: the compiled engine switches the model to eager attention) and
    its compiled engine with buckets 1 and 8 (torch.compile in process: seconds, not minutes; the AOTInductor
    packages are tested below on one family)."""
    family, model, heads, prompts, conts = oracle_setup(request.param, num_prompts=6, new_tokens=NEW, seed=3)
    model = copy.deepcopy(model)
    engine = CompiledEngine(model, buckets=(1, 8), backend="inductor")
    return family, model, heads, prompts, conts, engine


@pytest.mark.parametrize(
    "cfg",
    [
        DecodeConfig(tree="none", max_new_tokens=NEW),
        DecodeConfig(tree="dynamic", node_budget=7, top_m=4, max_new_tokens=NEW),
        DecodeConfig(tree="dynamic", node_budget=3, top_m=2, max_new_tokens=NEW),  # padded 4 -> 8
        DecodeConfig(tree="static", max_new_tokens=NEW, medusa_choices=[[0], [1], [0, 0], [0, 0, 0]]),
    ],
    ids=["plain", "dynamic7", "dynamic3-padded", "static"],
)
def test_compiled_greedy_equals_plain_greedy(compiled_oracle, cfg):
    family, model, heads, prompts, conts, engine = compiled_oracle
    steps = []
    for prompt, ref in zip(prompts, conts):
        out = generate(model, prompt, heads, cfg, eos=set(), engine=engine)
        assert out.tokens == ref.tolist(), f"{family}: the compiled engine diverged from model.generate"
        assert max(out.tree_sizes or [1]) <= 8
        steps.extend(out.accept_lengths)
    if cfg.tree != "none":
        assert sum(steps) / len(steps) > 1.3  # trees were verified and accepted through the compiled steps
    assert sorted(engine.steps) == [1, 8]  # one compiled step per bucket, whatever the tree sizes


def test_compiled_sequential_heads_and_bigger_trees_are_cut(compiled_oracle):
    family, model, _, prompts, conts, engine = compiled_oracle
    _, _, seq_heads, _, _ = sequential_oracle((family, model, None, prompts, conts))
    cfg = DecodeConfig(tree="dynamic", node_budget=64, top_m=4, max_new_tokens=NEW)  # cut to 7 nodes + root
    for prompt, ref in zip(prompts[:3], conts[:3]):
        out = generate(model, prompt, seq_heads, cfg, eos=set(), engine=engine)
        assert out.tokens == ref.tolist()
        assert max(out.tree_sizes) == 8


def test_static_tree_bigger_than_the_largest_bucket_is_refused(compiled_oracle):
    family, model, heads, prompts, _, engine = compiled_oracle
    cfg = DecodeConfig(tree="static", max_new_tokens=4, medusa_choices=[[i] for i in range(8)] + [[0, 0]])
    with pytest.raises(ValueError, match="largest step is 8"):
        generate(model, prompts[0], heads, cfg, eos=set(), engine=engine)


def test_cache_grows_with_the_context(monkeypatch):
    family, model, heads, prompts, conts = oracle_setup("llama", num_prompts=2, new_tokens=NEW, seed=4)
    model = copy.deepcopy(model)
    monkeypatch.setattr(engine_mod, "CAPACITY_STEP", 16)
    engine = CompiledEngine(model, buckets=(1, 4), backend="inductor")
    cfg = DecodeConfig(tree="dynamic", node_budget=3, top_m=2, max_new_tokens=NEW)
    sizes = []
    for prompt, ref in zip(prompts, conts):
        out = generate(model, prompt, heads, cfg, eos=set(), engine=engine)
        assert out.tokens == ref.tolist()
        sizes.append(engine.capacity)
    assert sizes[0] % 16 == 0 and sizes[0] >= prompts[0].shape[1] + NEW
    engine.prefill(prompts[0], 200)
    assert engine.capacity >= 200
    with pytest.raises(EngineError, match="full"):
        engine.length = engine.capacity - 1
        engine.step(torch.tensor([1, 2]), torch.tensor([0, 1]), torch.ones(2, 2, dtype=torch.bool).tril())


def test_sampling_runs_on_the_compiled_engine():
    family, model, heads, prompts, _ = oracle_setup("llama", num_prompts=1, new_tokens=4, seed=5)
    model = copy.deepcopy(model)
    engine = CompiledEngine(model, buckets=(1, 8), backend="inductor")
    cfg = DecodeConfig(
        tree="dynamic", node_budget=7, top_m=4, max_new_tokens=12, acceptance="sample", temperature=1
    )
    a = generate(
        model, prompts[0], heads, cfg, eos=set(), engine=engine, generator=torch.Generator().manual_seed(0)
    )
    b = generate(
        model, prompts[0], heads, cfg, eos=set(), engine=engine, generator=torch.Generator().manual_seed(0)
    )
    assert a.tokens == b.tokens and len(a.tokens) == 12


def test_compile_failure_falls_back_to_eager(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDUSA_CACHE", str(tmp_path))
    family, model, heads, prompts, conts = oracle_setup("llama", num_prompts=1, new_tokens=8, seed=6)
    model = copy.deepcopy(model)
    attn = model.config._attn_implementation

    def broken(*args, **kwargs):
        raise RuntimeError("C++ compiler not found\nmore detail")

    monkeypatch.setattr(engine_mod, "_build_package", broken)
    engine, reason = make_engine(model, "compiled", buckets=(1, 4), verbose=False)
    assert isinstance(engine, EagerEngine)
    assert reason == "eager: compiling failed (RuntimeError: C++ compiler not found)"
    assert model.config._attn_implementation == attn  # the model is left as it was
    out = generate(model, prompts[0], heads, DecodeConfig(max_new_tokens=8), eos=set(), engine=engine)
    assert out.tokens == conts[0].tolist()


@pytest.mark.slow
def test_aoti_packages_decode_losslessly_and_load_from_disk(tmp_path, monkeypatch):
    """The real backend: torch.export + AOTInductor packages (frozen weights), the cache length dynamic; a second
    engine loads the packages instead of compiling."""
    monkeypatch.setenv("MEDUSA_CACHE", str(tmp_path))
    family, model, heads, prompts, conts = oracle_setup("llama", num_prompts=3, new_tokens=NEW, seed=8)
    model = copy.deepcopy(model)
    engine, reason = make_engine(model, "compiled", buckets=(1, 4), verbose=False, autotune=False)
    assert isinstance(engine, CompiledEngine), reason
    packages = sorted(p.name for p in (tmp_path / "engine").glob("*/step-*.pt2"))
    assert packages == ["step-1.pt2", "step-4.pt2"]
    cfg = DecodeConfig(tree="dynamic", node_budget=3, top_m=2, max_new_tokens=NEW)
    for prompt, ref in zip(prompts, conts):
        assert generate(model, prompt, heads, cfg, eos=set(), engine=engine).tokens == ref.tolist()
    monkeypatch.setattr(engine_mod, "_build_package", lambda *a, **k: pytest.fail("rebuilt"))
    again, reason = make_engine(model, "auto", buckets=(1, 4), verbose=False, autotune=False)
    assert isinstance(again, CompiledEngine) == engine_mod.read_record(model, (1, 4))["faster"], reason
    changed = copy.deepcopy(model)  # same config and name, new weights (a new fine-tune in the same folder)
    with torch.no_grad():
        changed.get_output_embeddings().weight.mul_(1.01)
    assert engine_mod.package_folder(changed, False) != engine_mod.package_folder(model, False)
    again = CompiledEngine(model, buckets=(1, 4), autotune=False)  # loads the packages
    long_prompt = torch.cat([prompts[0]] * 40, 1)  # a context past the example's cache length: S is dynamic
    out = generate(model, long_prompt, heads, cfg, eos=set(), engine=again)
    plain = generate(model, long_prompt, None, DecodeConfig(tree="none", max_new_tokens=NEW), eos=set())
    assert out.tokens == plain.tokens and again.capacity > 512


def test_auto_uses_what_was_measured_here(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDUSA_CACHE", str(tmp_path))
    _, model, _, _, _ = oracle_setup("llama", num_prompts=1, new_tokens=2, seed=7)
    model = copy.deepcopy(model)
    engine, reason = make_engine(model, "auto", buckets=(1, 4), verbose=False, backend="inductor")
    assert isinstance(engine, EagerEngine) and "not built here yet" in reason
    engine, reason = make_engine(model, "compiled", buckets=(1, 4), verbose=False, backend="inductor")
    assert isinstance(engine, CompiledEngine) and reason.startswith("compiled (steps of 1/4 tokens")
    rec = engine_mod.read_record(model, (1, 4))
    assert len(rec["compiled_ms"]) == len(rec["eager_ms"]) == 2
    # auto follows the record: make it say eager was faster
    rec["faster"] = False
    path, _ = engine_mod._record_path(model, (1, 4))
    with open(path, "w") as f:
        json.dump(rec, f)
    engine, reason = make_engine(model, "auto", buckets=(1, 4), verbose=False, backend="inductor")
    assert isinstance(engine, EagerEngine) and reason.startswith("eager: it measured faster here")
    with pytest.raises(ValueError, match="engine must be one of"):
        make_engine(model, "fast")


def test_the_step_writes_the_cache_in_place():
    """The step's cache write is an in-place index_put, never a copy of a whole cache layer: a functional
    ``scatter_`` on the cache inputs made the compiler copy every layer's keys and values out and back each step
    (4 x the cache read and written per layer: at 8 rows x 512 slots more bytes than the weights)."""
    from torch._inductor.utils import run_and_get_code

    family, model, heads, prompts, _ = oracle_setup("llama", num_prompts=1, new_tokens=4, seed=7)
    engine = CompiledEngine(copy.deepcopy(model), buckets=(1,), backend="inductor")
    B, S = 2, 1000  # one cache layer: B * kv_heads * S * head_dim elements, a number no other tensor has
    example = engine_mod.step_example(engine, B, 1, S)
    example[0].fill_(5)  # token ids
    engine_mod._set_step_attention(engine.model)
    compiled = torch.compile(engine.module, fullgraph=True, dynamic=False)
    with torch.no_grad():
        (hidden, _), codes = run_and_get_code(compiled, *example)
    layer = B * engine.kv_heads * S * engine.head_dim
    assert codes and f"{layer}L" not in "\n".join(codes)  # no loop over a whole cache layer
    keys = example[4]  # layer 0's keys: row b's new entry written at its slot start[b]
    assert keys[:, :, 7].abs().sum() > 0 and keys[:, :, 8:].abs().sum() == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("family", FAMILIES)
def test_prompts_prefilled_packed_fill_each_row_as_alone(family, dtype):
    """Several prompts run packed in one row (each seeing only itself, at its own positions): each cache row and
    last hidden state equal that prompt's prefill alone (in bf16 bit for bit: a request's prefill does not depend on
    who arrived with it; in fp32 within rounding: MKL's fp32 matmuls sum in an order that depends on the rows), nothing past a row's length is written, and the model's attention is its own
    again after."""
    _, model, _, prompts, _ = oracle_setup(family, num_prompts=3, new_tokens=2, seed=5)
    model = copy.deepcopy(model).to(dtype)
    engine = EagerEngine(model)  # decoder + dtype: what prefill_into needs
    engine.layers, kv_heads, head_dim = engine_mod.cache_shape(model)
    before = model.config._attn_implementation

    def cache(n):
        return [torch.zeros(n, kv_heads, 40, head_dim, dtype=dtype) for _ in range(2 * engine.layers)]

    together = cache(3)
    with torch.no_grad():
        hidden = engine_mod.prefill_into(engine, prompts, together)  # [3, H]
        for i, p in enumerate(prompts):
            alone = cache(1)
            h = engine_mod.prefill_into(engine, [p], alone)
            same = torch.equal if dtype == torch.bfloat16 else functools.partial(torch.allclose, atol=1e-5)
            assert same(hidden[i], h[0]), f"{family}: prompt {i}"
            for a, t in zip(alone, together):
                assert same(t[i], a[0])
                assert t[i, :, p.shape[1] :].abs().sum() == 0
    assert len({p.shape[1] for p in prompts}) > 1 and model.config._attn_implementation == before


def test_package_builds_compile_each_gemm_template_once():
    from torch._inductor.codegen.common import KernelTemplate

    before = KernelTemplate.__dict__["_template_from_string"]
    with engine_mod._templates_compiled_once():
        first = KernelTemplate._template_from_string("{{ a }} + {{ b }}")
        assert KernelTemplate._template_from_string("{{ a }} + {{ b }}") is first
        assert first.render(a=1, b=2) == "1 + 2"
    assert KernelTemplate.__dict__["_template_from_string"] is before  # inductor left as it was
