"""The heads' compiled drafting calls: the same logits as the eager heads where a graph fits, the eager heads where
none does, lossless decoding on top, packages built once and loaded after, and eager heads when compiling fails."""

import copy
from types import SimpleNamespace

import pytest
import torch

from infer.decode.single import DecodeConfig, generate
from infer.engine import compiled_heads as ch
from infer.engine.compiled_heads import HEAD_ROWS, CompiledHeads, compile_heads
from infer.engine.single import CompiledEngine
from tests.tiny import oracle_setup, sequential_oracle

NEW = 16


@pytest.fixture(scope="module")
def oracle():
    family, model, heads, prompts, conts = oracle_setup("llama", num_prompts=3, new_tokens=NEW, seed=11)
    model = copy.deepcopy(model)  # the compiled engine switches it to eager attention
    _, _, seq, _, _ = sequential_oracle((family, model, heads, prompts, conts))
    return model, heads, seq, prompts, conts


def test_compiled_calls_match_the_eager_heads(oracle):
    model, heads, seq, _, _ = oracle
    lm_head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    H = heads.config.hidden_size
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        fast = CompiledHeads(heads, model, backend="inductor")
        assert sorted(fast.steps) == [(None, 1)] and fast.num_heads == heads.num_heads  # delegated
        h = torch.randn(1, H, generator=g)
        torch.testing.assert_close(fast(h, lm_head), heads(h, lm_head))
        fast_seq = CompiledHeads(seq, model, backend="inductor")
        assert sorted(fast_seq.steps) == [(0, 1)] + [(d, HEAD_ROWS) for d in range(1, seq.num_heads)]
        for d, F in [(0, 1), (1, 1), (1, HEAD_ROWS), (2, 3), (1, HEAD_ROWS + 1), (0, 2)]:
            h = torch.randn(F, H, generator=g)
            path_emb = embed(torch.randint(0, 500, (F, d + 1), generator=g))
            want = seq.head_logits(d, h, lm_head, path_emb)
            torch.testing.assert_close(fast_seq.head_logits(d, h, lm_head, path_emb), want)
    calls = []
    fast_seq.steps = {k: (lambda *a, k=k, f=f: calls.append(k) or f(*a)) for k, f in fast_seq.steps.items()}
    with torch.no_grad():
        fast_seq.head_logits(1, torch.randn(3, H), lm_head, embed(torch.zeros(3, 2, dtype=torch.long)))
        fast_seq.head_logits(
            1, torch.randn(HEAD_ROWS + 1, H), lm_head, embed(torch.zeros(5, 2, dtype=torch.long))
        )
    assert calls == [(1, HEAD_ROWS)]  # 3 rows padded to the bucket; more rows than it: the eager heads


@pytest.mark.parametrize("which", ["medusa", "sequential"])
def test_decoding_with_compiled_heads_is_lossless(oracle, which):
    model, heads, seq, prompts, conts = oracle
    heads = heads if which == "medusa" else seq
    engine = CompiledEngine(model, buckets=(1, 4), backend="inductor")
    fast, reason = compile_heads(heads, model, engine, build=True)
    assert isinstance(fast, CompiledHeads) and reason.startswith("heads compiled"), reason
    cfg = DecodeConfig(tree="dynamic", node_budget=3, top_m=2, max_new_tokens=NEW)
    steps = []
    for prompt, ref in zip(prompts, conts):
        out = generate(model, prompt, fast, cfg, eos=set(), engine=engine)
        assert out.tokens == ref.tolist()
        steps.extend(out.accept_lengths)
    assert sum(steps) / len(steps) > 1.3


@pytest.mark.slow
def test_packages_are_built_once_then_loaded(oracle, tmp_path, monkeypatch):
    """AOTInductor packages on disk (Medusa heads: one package; the sequential heads' per-depth calls are the same
    machinery, checked in process above)."""
    monkeypatch.setenv("MEDUSA_CACHE", str(tmp_path))
    model, heads, _, _, _ = oracle
    aoti = SimpleNamespace(name="compiled", backend="aoti")
    same, reason = compile_heads(heads, model, aoti, build=False)  # --engine auto never compiles by itself
    assert same is heads and "not compiled here yet" in reason
    fast, reason = compile_heads(heads, model, aoti, build=True, autotune=False)
    assert isinstance(fast, CompiledHeads), reason
    assert sorted(p.name for p in tmp_path.glob("engine/heads-*/*.pt2")) == ["heads-all-1.pt2"]
    monkeypatch.setattr(ch, "_build", lambda *a, **k: pytest.fail("rebuilt"))
    again, _ = compile_heads(heads, model, aoti, build=False, autotune=False)
    h = torch.randn(1, heads.config.hidden_size)
    with torch.no_grad():
        want = heads(h, model.get_output_embeddings())
        torch.testing.assert_close(again(h, model.get_output_embeddings()), want, atol=1e-4, rtol=1e-4)


def test_a_compiler_failure_keeps_the_eager_heads(oracle, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDUSA_CACHE", str(tmp_path))
    model, heads, _, _, _ = oracle

    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler\ndetail")

    monkeypatch.setattr(ch, "_build", broken)
    same, reason = compile_heads(heads, model, SimpleNamespace(name="compiled", backend="aoti"), build=True)
    assert same is heads and reason == "heads eager: compiling failed (RuntimeError: no C++ compiler)"
    assert compile_heads(heads, model, SimpleNamespace(name="eager"), build=True)[0] is heads
