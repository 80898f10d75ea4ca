"""Batched decoding: every row's greedy output equals its own batch-1 output (fp32), on the four tiny architectures
with oracle heads; rows of different lengths, their own trees and stops; rows joining and leaving mid-way."""

import dataclasses

import pytest
import torch

from infer.decode.batch import BatchDecoder, generate_batch, row_config
from infer.decode.single import DecodeConfig, generate
from tests.tiny import FAMILIES, oracle_setup, sequential_oracle

NEW = 20


@pytest.fixture(scope="module", params=FAMILIES)
def oracle(request):
    return oracle_setup(request.param, num_prompts=8, new_tokens=NEW, seed=2, min_len=2, max_len=24)


@pytest.mark.parametrize(
    "cfg",
    [
        DecodeConfig(tree="none", max_new_tokens=NEW),
        DecodeConfig(tree="static", max_new_tokens=NEW),
        DecodeConfig(tree="dynamic", node_budget=16, top_m=4, max_new_tokens=NEW),
    ],
    ids=["plain", "static", "dynamic16"],
)
def test_batched_greedy_equals_batch_one(oracle, cfg):
    family, model, heads, prompts, conts = oracle
    out = generate_batch(model, prompts, heads, cfg, eos=set())
    for b, (r, ref) in enumerate(zip(out, conts)):
        assert r.tokens == ref.tolist(), f"{family}: row {b} diverged from its batch-1 greedy output"
    if cfg.tree != "none":
        steps = [a for r in out for a in r.accept_lengths]
        assert sum(steps) / len(steps) > 1.5  # trees accepted several tokens per step in the batch


def test_rows_stop_on_their_own_and_join_mid_way(oracle):
    """Each row its own max_new_tokens and eos; a row added while others decode; a cancelled row leaves."""
    family, model, heads, prompts, conts = oracle
    cfg = DecodeConfig(tree="dynamic", node_budget=8, top_m=4, max_new_tokens=NEW)
    stop = conts[1][7].item()  # row 1 stops at its 8th token (an eos for this test)
    eos = {stop}
    dec = BatchDecoder(model, heads, cfg, eos)
    r0 = dec.add(prompts[0], row_config(cfg, max_new_tokens=5))
    r1 = dec.add(prompts[1])
    r2 = dec.add(prompts[2])
    dec.step()
    dec.step()
    r3 = dec.add(prompts[3])  # joins at a step boundary
    dec.cancel(r2)
    while dec.active:
        dec.step()

    def expect(b, n):
        ref = generate(model, prompts[b], heads, dataclasses.replace(cfg, max_new_tokens=n), eos=eos).tokens
        return ref

    assert r0.result.tokens == expect(0, 5) and len(r0.result.tokens) == 5
    assert r1.result.tokens == expect(1, NEW) and r1.result.tokens[-1] == stop
    assert r3.result.tokens == expect(3, NEW)
    assert r2.cancelled and len(r2.result.tokens) < NEW


def test_sampling_rows_use_their_own_generators(oracle):
    """Lossless tree sampling per row: with the same generator seeds a row samples as batch-1 plain sampling
    would in distribution; here: deterministic given the seed, and different seeds differ."""
    family, model, heads, prompts, conts = oracle
    cfg = DecodeConfig(
        tree="dynamic", node_budget=8, top_m=4, max_new_tokens=NEW, acceptance="sample", temperature=1.0
    )

    def run(seeds):
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        return [r.tokens for r in generate_batch(model, prompts[:3], heads, cfg, eos=set(), generators=gens)]

    a, b, c = run([1, 2, 3]), run([1, 2, 3]), run([4, 5, 6])
    assert a == b and a != c


def test_bad_inputs(oracle):
    family, model, heads, prompts, conts = oracle
    dec = BatchDecoder(model, heads, DecodeConfig(max_new_tokens=4))
    with pytest.raises(ValueError, match="input_ids must be"):
        dec.add(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="input_ids must be"):
        dec.add(torch.zeros(1, 0, dtype=torch.long))
    assert dec.step() == []  # an empty batch steps to nothing


@pytest.fixture(scope="module")
def seq_oracle(oracle):
    """Sequential (path-conditioned) oracle heads for the same model, prompts and continuations."""
    return sequential_oracle(oracle)


@pytest.mark.parametrize(
    "cfg",
    [DecodeConfig(tree="static", max_new_tokens=NEW), DecodeConfig(tree="dynamic", node_budget=16, top_m=4, max_new_tokens=NEW)],
    ids=["static", "dynamic16"],
)  # fmt: skip
def test_batched_sequential_heads_equal_batch_one(seq_oracle, cfg):
    """Sequential heads draft every row's tree depth by depth in one head call per depth for the whole batch."""
    family, model, heads, prompts, conts = seq_oracle
    out = generate_batch(model, prompts, heads, cfg, eos=set())
    for b, (r, ref) in enumerate(zip(out, conts)):
        assert r.tokens == ref.tolist(), f"{family}: row {b} diverged"
    steps = [a for r in out for a in r.accept_lengths]
    assert sum(steps) / len(steps) > 1.5


def test_batched_drafting_builds_each_rows_own_tree(seq_oracle, oracle):
    """draft_trees (one head call per depth for all rows) builds exactly the trees draft_tree builds row by row."""
    from infer.decode.single import draft_tree, draft_trees

    for _, model, heads, _prompts, _ in (seq_oracle, oracle):
        cfg = DecodeConfig(node_budget=12, top_m=4)
        lm_head, embed = model.get_output_embeddings(), model.get_input_embeddings()
        hiddens = torch.randn(5, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
        roots = [3, 7, 11, 13, 17]
        batched, _ = draft_trees(heads, lm_head, embed, hiddens, roots, cfg, heads.num_heads, cfg.top_m)
        for b, (tree, tok, _) in enumerate(batched):
            alone = draft_tree(
                heads, lm_head, embed, hiddens[b], torch.tensor(roots[b]), cfg, heads.num_heads, 4
            )
            assert torch.equal(tree.parents, alone[0].parents) and torch.equal(tree.depth, alone[0].depth)
            mine = tree.tokens if tok is None else tok
            theirs = alone[0].tokens if alone[1] is None else alone[1]
            assert torch.equal(mine, theirs)


def test_a_long_row_beside_short_ones_is_not_packed_every_step(monkeypatch):
    """Prompt lengths 200, 3, 3, 3: packing cannot shorten the cache below the long row, so it must not run on most
    steps (it did on 31 of 39, copying the whole cache each time); rows still decode as they do alone."""
    import infer.engine.batch

    family, model, heads, _, _ = oracle_setup("llama", num_prompts=1, new_tokens=2, seed=9)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 512, (1, n), generator=g) for n in (200, 3, 3, 3)]
    calls, pack = [], infer.engine.batch.pack_rows
    monkeypatch.setattr(infer.engine.batch, "pack_rows", lambda *a: calls.append(1) or pack(*a))
    cfg = DecodeConfig(tree="dynamic", node_budget=8, top_m=4, max_new_tokens=40)
    out = generate_batch(model, prompts, heads, cfg, eos=set())
    alone = [generate(model, p, heads, cfg, eos=set()).tokens for p in prompts]
    assert [r.tokens for r in out] == alone
    steps = max(r.steps for r in out)
    assert len(calls) <= steps // 4, f"packed on {len(calls)} of {steps} steps"


def test_a_group_whose_prefill_raises_emits_nothing_and_adds_no_row(monkeypatch):
    """Prompts prefilled together: when one row's first token cannot be picked, no row of the group has streamed a
    token or joined, so the caller (the server) can retry each prompt alone without duplicating any text."""
    import infer.decode.batch as batch_mod

    family, model, heads, prompts, conts = oracle_setup("llama", num_prompts=3, new_tokens=4, seed=10)
    dec = BatchDecoder(model, heads, DecodeConfig(max_new_tokens=4), eos=set())
    streamed, pick = [], batch_mod.pick_token
    calls = iter(range(100))

    def pick_or_fail(logits, sampling, generator):
        if next(calls) == 1:
            raise RuntimeError("injected")
        return pick(logits, sampling, generator)

    monkeypatch.setattr(batch_mod, "pick_token", pick_or_fail)
    with pytest.raises(RuntimeError, match="injected"):
        dec.add_many(prompts, on_tokens=[streamed.append] * 3)
    assert streamed == [] and dec.rows == [] and dec.added == [] and dec.engine.lengths == []
    monkeypatch.setattr(batch_mod, "pick_token", pick)
    rows = [dec.add(p, on_tokens=streamed.append) for p in prompts]  # one by one, as the server retries
    while dec.active:
        dec.step()
    assert [r.result.tokens for r in rows] == [c.tolist() for c in conts]
