"""The batched engines: on the compiled one (fixed-shape steps over a preallocated cache, one row per sequence),
every row's greedy output equals its batch-1 output (fp32) on the four tiny architectures; rows join, stop and leave
(moved down the cache), the cache grows, latency is measured without touching the live rows, and a compiler failure
falls back to the eager engine."""

import copy

import pytest
import torch

from infer.decode.batch import BatchDecoder, generate_batch, row_config
from infer.decode.single import DecodeConfig, generate
from infer.engine import batch as batch_engine_mod
from infer.engine import single as engine_mod
from infer.engine.batch import CompiledBatchEngine, EagerBatchEngine, make_batch_engine, measure_batch_engine
from infer.engine.single import CompiledEngine
from tests.tiny import FAMILIES, oracle_setup

NEW = 16
pytestmark = pytest.mark.slow  # compiles engines (in process: ~30 s cold for the module)


@pytest.fixture(scope="module", params=FAMILIES)
def batch_oracle(request):
    """A tiny oracle of each family (its own copy: compiling switches its attention) and a compiled batched engine
    with buckets 1 and 8 (torch.compile in process: seconds; the AOTInductor packages are tested below)."""
    family, model, heads, prompts, conts = oracle_setup(request.param, num_prompts=5, new_tokens=NEW, seed=12)
    model = copy.deepcopy(model)
    engine = CompiledBatchEngine(CompiledEngine(model, buckets=(1, 8), backend="inductor"))
    return family, model, heads, prompts, conts, engine


@pytest.fixture(scope="module")
def llama_oracle():
    """Also a fixed-shape tree step (2 rows x 2 tokens), which a 2-row batch with 2-node trees runs."""
    family, model, heads, prompts, conts = oracle_setup("llama", num_prompts=5, new_tokens=NEW, seed=12)
    model = copy.deepcopy(model)
    single = CompiledEngine(model, buckets=(1, 8), backend="inductor")
    engine = CompiledBatchEngine(single, fixed_shapes=((2, 1), (4, 1), (2, 2)))
    return family, model, heads, prompts, conts, engine


@pytest.mark.parametrize(
    "cfg",
    [
        DecodeConfig(tree="none", max_new_tokens=NEW),
        DecodeConfig(tree="dynamic", node_budget=7, top_m=4, max_new_tokens=NEW),
        DecodeConfig(tree="static", max_new_tokens=NEW, medusa_choices=[[0], [1], [0, 0], [0, 0, 0]]),
    ],
    ids=["plain", "dynamic7", "static"],
)
def test_compiled_batched_greedy_equals_batch_one(batch_oracle, cfg):
    family, model, heads, prompts, conts, engine = batch_oracle
    out = generate_batch(model, prompts, heads, cfg, eos=set(), engine=engine.fresh())
    for b, (r, ref) in enumerate(zip(out, conts)):
        assert r.tokens == ref.tolist(), f"{family}: row {b} diverged from its batch-1 greedy output"
    if cfg.tree != "none":
        steps = [a for r in out for a in r.accept_lengths]
        assert sum(steps) / len(steps) > 1.5  # several tokens per step: paths were moved in the cache


def test_rows_join_stop_and_leave_on_the_compiled_engine(llama_oracle):
    """Row 0 stops early and row 2 is cancelled, so later rows move down the cache; a row joins mid-way, into the
    slot a leaver freed; every row still equals its batch-1 output."""
    family, model, heads, prompts, conts, engine = llama_oracle
    cfg = DecodeConfig(tree="dynamic", node_budget=7, top_m=4, max_new_tokens=NEW)
    dec = BatchDecoder(model, heads, cfg, eos=set(), engine=engine.fresh())
    r0 = dec.add(prompts[0], row_config(cfg, max_new_tokens=3))
    r1, r2, r3 = (dec.add(p) for p in prompts[1:4])
    dec.step()
    dec.cancel(r2)
    dec.step()
    dec.step()
    r4 = dec.add(prompts[4])
    assert len(dec.engine.lengths) == len(dec.rows) == 3  # r0 done, r2 gone, r4 in
    while dec.active:
        dec.step()
    assert r0.result.tokens == conts[0][:3].tolist()
    for b, r in ((1, r1), (3, r3), (4, r4)):
        assert r.result.tokens == conts[b].tolist(), f"{family}: row {b}"
    assert len(r2.result.tokens) < NEW


def test_the_cache_grows_with_rows_and_context(monkeypatch):
    family, model, heads, prompts, conts = oracle_setup("llama", num_prompts=3, new_tokens=NEW, seed=13)
    model = copy.deepcopy(model)
    monkeypatch.setattr(batch_engine_mod, "CAPACITY_STEP", 16)
    engine = CompiledBatchEngine(CompiledEngine(model, buckets=(1, 4), backend="inductor"))
    cfg = DecodeConfig(tree="dynamic", node_budget=3, top_m=2, max_new_tokens=NEW)
    dec = BatchDecoder(model, heads, cfg, eos=set(), engine=engine)
    rows = [dec.add(prompts[0], row_config(cfg, max_new_tokens=2))]  # a small first allocation ...
    rows += [dec.add(p) for p in prompts[1:]]  # ... more rows and slots later, what is there copied over
    while dec.active:
        dec.step()
    assert rows[0].result.tokens == conts[0][:2].tolist()
    assert [r.result.tokens for r in rows[1:]] == [c.tolist() for c in conts[1:]]
    assert engine.kv == []  # the batch emptied: the cache is freed


def test_a_long_row_that_leaves_takes_its_slots_with_it(monkeypatch):
    """Every step attends over all the cache's slots: when the row that needed many leaves, the cache is cut."""
    family, model, heads, prompts, conts = oracle_setup("llama", num_prompts=2, new_tokens=NEW, seed=15)
    model = copy.deepcopy(model)
    monkeypatch.setattr(batch_engine_mod, "CAPACITY_STEP", 16)
    engine = CompiledBatchEngine(CompiledEngine(model, buckets=(1, 4), backend="inductor"))
    cfg = DecodeConfig(tree="none", max_new_tokens=NEW)
    dec = BatchDecoder(model, None, cfg, eos=set(), engine=engine)
    long = dec.add(prompts[0], row_config(cfg, max_new_tokens=200))
    short = dec.add(prompts[1])
    big = engine.kv[0].shape[2]
    dec.step()
    dec.cancel(long)
    dec.step()  # the cancelled row leaves at this step's start
    assert len(dec.rows) == 1 and engine.kv[0].shape[2] < big // 2  # cut to the short row's need
    while dec.active:
        dec.step()
    assert short.result.tokens == conts[1].tolist()


def test_latency_is_measured_on_an_empty_copy(llama_oracle):
    family, model, heads, prompts, conts, engine = llama_oracle
    live = engine.fresh()
    live.prefill([prompts[0]], [64])
    live.join()
    before = [t.clone() for t in live.kv]
    ms = measure_batch_engine(live, [1, 4, 8], batch=3, prefix_len=16, reps=1)
    assert len(ms) == 3 and all(m > 0 for m in ms)
    assert live.lengths == [prompts[0].shape[1]]
    assert all(torch.equal(a, b) for a, b in zip(before, live.kv))


def test_batched_compile_failure_falls_back_to_eager(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDUSA_CACHE", str(tmp_path))
    family, model, heads, prompts, conts = oracle_setup("llama", num_prompts=2, new_tokens=8, seed=14)
    model = copy.deepcopy(model)
    attn = model.config._attn_implementation
    single = CompiledEngine(model, buckets=(1, 4), backend="inductor")
    single.backend = "aoti"  # the batched steps are built as packages, and that fails
    engine_mod._restore_attention(model)

    def broken(*args, **kwargs):
        raise RuntimeError("C++ compiler not found\nmore detail")

    monkeypatch.setattr(engine_mod, "_build_package", broken)
    engine, reason = make_batch_engine(model, single, verbose=False, build=False)  # --engine auto: no build
    assert reason == "eager: the batched steps were not built here yet (once: --engine compiled)"
    engine, reason = make_batch_engine(model, single, verbose=False)
    assert isinstance(engine, EagerBatchEngine)
    assert reason == "eager: compiling the batched steps failed (RuntimeError: C++ compiler not found)"
    assert model.config._attn_implementation == attn
    out = generate_batch(model, prompts, heads, DecodeConfig(max_new_tokens=8), eos=set(), engine=engine)
    assert [r.tokens for r in out] == [c.tolist() for c in conts]
    assert make_batch_engine(model, None)[1] == "eager (the one-row engine is eager)"


def test_a_decoder_refuses_an_engine_that_holds_rows(llama_oracle):
    family, model, heads, prompts, conts, engine = llama_oracle
    live = engine.fresh()
    live.prefill([prompts[0]])
    live.join()
    with pytest.raises(ValueError, match="already holds rows"):
        BatchDecoder(model, heads, DecodeConfig(), eos=set(), engine=live)


def test_two_rows_of_two_node_trees_run_the_fixed_tree_shape(llama_oracle):
    family, model, heads, prompts, conts, engine = llama_oracle
    cfg = DecodeConfig(tree="dynamic", node_budget=1, top_m=2, max_new_tokens=NEW, drafter="heads")
    live = engine.fresh()
    calls = []
    step = live.steps[(2, 2)]
    live.steps = dict(live.steps) | {(2, 2): lambda *a: calls.append(1) or step(*a)}
    out = generate_batch(model, prompts[:2], heads, cfg, eos=set(), engine=live)
    assert [r.tokens for r in out] == [c.tolist() for c in conts[:2]]
    assert calls and max(max(r.tree_sizes) for r in out) == 2


def test_one_row_matches_generate_on_the_compiled_engine(llama_oracle):
    """One row runs the one-row steps: the same tokens as batch-1 decoding on the compiled engine."""
    family, model, heads, prompts, conts, engine = llama_oracle
    cfg = DecodeConfig(tree="dynamic", node_budget=7, top_m=4, max_new_tokens=NEW)
    out = generate_batch(model, prompts[:1], heads, cfg, eos=set(), engine=engine.fresh())
    alone = generate(model, prompts[0], heads, cfg, eos=set(), engine=engine.single)
    assert out[0].tokens == alone.tokens == conts[0].tolist()


def test_prompts_prefilled_together_decode_like_batch_one(llama_oracle, monkeypatch):
    """Prompts of different lengths prefilled in one packed forward (and, with a small PREFILL_TOKENS, in several
    groups); a row that ends at its first token never joins and the rows after it close the gap."""
    from infer.decode import batch as batch_mod

    family, model, heads, prompts, conts, engine = llama_oracle
    assert len({p.shape[1] for p in prompts}) > 1  # prompts of different lengths share the packed row
    cfg = DecodeConfig(tree="dynamic", node_budget=7, top_m=4, max_new_tokens=NEW)
    for budget in (2048, 2 * max(p.shape[1] for p in prompts)):
        monkeypatch.setattr(batch_mod, "PREFILL_TOKENS", budget)
        dec = BatchDecoder(model, heads, cfg, eos={int(conts[1][0])}, engine=engine.fresh())
        rows = dec.add_many(prompts)
        assert rows[1].done and rows[1].result.tokens == conts[1][:1].tolist()
        assert len(dec.rows) == len(prompts) - 1 and dec.engine.lengths[1] == prompts[2].shape[1]
        while dec.active:
            dec.step()
        for b, (r, ref) in enumerate(zip(rows, conts)):
            if b != 1:
                stop = next((i + 1 for i, t in enumerate(ref.tolist()) if t == int(conts[1][0])), len(ref))
                assert r.result.tokens == ref[:stop].tolist(), f"row {b} (budget {budget})"


def test_no_dynamic_plain_step_when_fixed_shapes_serve_every_plain_batch():
    from infer.engine.batch import step_shapes

    assert step_shapes((1, 4), ((2, 1), (4, 1))) == [(None, 4), (2, 1), (4, 1)]
    assert step_shapes((1, 4), ((2, 2),)) == [
        (None, 1),
        (None, 4),
        (2, 2),
    ]  # plain batches need the dynamic one
