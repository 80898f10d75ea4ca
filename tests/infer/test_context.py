"""The context drafter (prompt lookup over token ids): longest suffix matches first, incremental, and greedy decoding
with it equals plain greedy decoding on every tiny architecture, on the eager and the compiled engine."""

import copy

import pytest
import torch

from infer.context import ContextIndex
from infer.decode import DecodeConfig, generate
from infer.engine import CompiledEngine
from tests.tiny import FAMILIES, oracle_setup

NEW = 24


def test_longest_match_first_and_incremental():
    ix = ContextIndex([5, 6, 7, 8, 9, 6, 7, 1, 2, 6, 7])
    assert ix.propose(3) == [1, 2, 6]  # the 2-gram (6, 7) last continued with 1, 2, 6
    ix.extend([8])  # suffix (6, 7, 8): its 3-gram occurred at the start
    assert ix.propose(2) == [9, 6]
    assert ix.propose(10) == [9, 6, 7, 1, 2, 6, 7, 8]  # runs up to the end of what is known
    assert ContextIndex([1, 2, 3]).propose(4) == []  # no earlier occurrence of any suffix
    # an update costs max_ngram inserts per token: the index holds at most 3 entries per token, never a rescan
    long = ContextIndex(list(torch.randint(0, 50, (8192,)).tolist()))
    assert len(long.seen) <= 3 * 8192


def test_chain_scores_follow_observed_acceptance():
    ix = ContextIndex([1, 2, 1])
    fresh = ix.chain_tree([2, 1, 2], "cpu")
    assert torch.allclose(fresh.score.exp(), torch.tensor([1.0, 0.5, 0.25, 0.125]))
    assert fresh.parents.tolist() == [0, 0, 1, 2] and fresh.tokens.tolist() == [0, 2, 1, 2]
    for _ in range(8):
        ix.observe(3, 1)  # depth 1 always accepted, depth 2 never
    tree = ix.chain_tree([2, 1, 2], "cpu")
    assert tree.score.exp()[1] > 0.85 and tree.score.exp()[2] < 0.1


@pytest.mark.parametrize("family", FAMILIES)
def test_context_drafting_is_lossless(family):
    _, model, _, prompts, conts = oracle_setup(family, num_prompts=6, new_tokens=NEW, seed=2)
    chains = 0
    for prompt, ref in zip(prompts, conts):
        repeated = torch.cat([prompt, ref[None], prompt], 1)  # the answer is in the context: lookups hit
        plain = generate(model, repeated, None, DecodeConfig(tree="none", max_new_tokens=NEW), eos=set())
        out = generate(model, repeated, None, DecodeConfig(drafter="context", max_new_tokens=NEW), eos=set())
        assert out.tokens == plain.tokens, f"{family}: context drafting diverged from plain greedy decoding"
        chains += sum(size > 1 for size in out.tree_sizes)
        assert out.tokens_per_step >= 1.0
    assert chains >= 6  # chains were proposed and verified


def test_context_drafting_on_the_compiled_engine_and_sampling():
    _, model, _, prompts, conts = oracle_setup("qwen2", num_prompts=4, new_tokens=NEW, seed=3)
    model = copy.deepcopy(model)
    engine = CompiledEngine(model, buckets=(1, 4), backend="inductor")
    cfg = DecodeConfig(drafter="context", max_new_tokens=NEW)
    for prompt, ref in zip(prompts, conts):
        repeated = torch.cat([prompt, ref[None], prompt], 1)
        plain = generate(model, repeated, None, DecodeConfig(tree="none", max_new_tokens=NEW), eos=set())
        out = generate(model, repeated, None, cfg, eos=set(), engine=engine)
        assert out.tokens == plain.tokens and max(out.tree_sizes) <= 4  # chains cut to the largest step
    sample = DecodeConfig(drafter="context", max_new_tokens=NEW, acceptance="sample", temperature=1.0)
    a = generate(model, repeated, None, sample, eos=set(), generator=torch.Generator().manual_seed(0))
    b = generate(model, repeated, None, sample, eos=set(), generator=torch.Generator().manual_seed(0))
    assert a.tokens == b.tokens and len(a.tokens) == NEW
    with pytest.raises(ValueError, match="drafter must be one of"):
        DecodeConfig(drafter="ngram")


@pytest.mark.parametrize("family", ["llama", "gemma"])
def test_batched_context_drafting_equals_batch_one(family):
    """Each row of a batch looks up its own context; rows with and without a chain in the same step; every row's
    greedy output equals its plain batch-1 output."""
    from infer.batch import generate_batch

    _, model, _, prompts, conts = oracle_setup(family, num_prompts=5, new_tokens=NEW, seed=4)
    rows = [
        torch.cat([p, c[None], p], 1) if i % 2 == 0 else p for i, (p, c) in enumerate(zip(prompts, conts))
    ]
    cfg = DecodeConfig(drafter="context", max_new_tokens=NEW)
    out = generate_batch(model, rows, None, cfg, eos=set())
    for b, (r, ids) in enumerate(zip(out, rows)):
        plain = generate(model, ids, None, DecodeConfig(tree="none", max_new_tokens=NEW), eos=set())
        assert r.tokens == plain.tokens, f"{family}: row {b} diverged from its batch-1 greedy output"
    assert max(max(r.tree_sizes) for r in out) > 1  # chains were verified in the batch
