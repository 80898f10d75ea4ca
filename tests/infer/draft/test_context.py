"""The context drafter (prompt lookup over token ids): longest suffix matches first, incremental, and greedy decoding
with it equals plain greedy decoding on every tiny architecture, on the eager and the compiled engine."""

import copy
import dataclasses

import pytest
import torch

from infer.decode.single import DecodeConfig, generate
from infer.draft.context import (
    BOTH,
    CONTEXT,
    HEADS,
    RIVAL,
    ContextIndex,
    ContextStats,
    observe_tree,
    union_tree,
)
from infer.draft.tree import Tree, top_nodes
from infer.engine.single import CompiledEngine
from tests.tiny import FAMILIES, oracle_setup, sequential_oracle

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
    stats = ContextStats()
    root = torch.tensor([0])
    fresh = union_tree(None, root, [2, 1, 2], 3, stats)
    assert torch.allclose(fresh.score.exp(), torch.tensor([1.0, 0.5, 0.25, 0.125]))
    assert fresh.parents.tolist() == [0, 0, 1, 2] and fresh.tokens.tolist() == [0, 2, 1, 2]
    assert fresh.source.tolist() == [0, CONTEXT, CONTEXT, CONTEXT]
    counts = {}
    for _ in range(8):  # depth 1 always accepted, depth 2 never (depth 3: its parent rejected, not an event)
        observe_tree(fresh, torch.tensor([0, 1]), 3, stats, counts)
    assert counts == {"context": 8}
    tree = union_tree(None, root, [2, 1, 2], 3, stats)
    assert tree.score.exp()[1] > 0.85 and (tree.score[2] - tree.score[1]).exp() < 0.15
    assert stats.rate("context", 3, 3) == 0.5  # never verified with its parent accepted: still the prior
    assert union_tree(None, root, [2, 1, 2], 1, stats).score.exp()[1] == 0.5  # a 1-gram match: its own cells


def test_union_tree_shares_nodes_both_propose():
    """Heads tree root -> {5 (p .6) -> 7 (p .5), 6 (p .3)}; the chain 5, 8, 9 shares node 5 and grows 8, 9 below it."""
    stats = ContextStats()
    heads = Tree(
        parents=torch.tensor([0, 0, 0, 1]),
        depth=torch.tensor([0, 1, 1, 2]),
        rank=torch.tensor([0, 0, 1, 0]),
        score=torch.tensor([1.0, 0.6, 0.3, 0.3]).log(),
    )
    tokens = torch.tensor([4, 5, 6, 7])
    tree = union_tree(heads, tokens, [5, 8, 9], 2, stats)
    assert tree.tokens.tolist() == [4, 5, 6, 7, 8, 9] and tree.parents.tolist() == [0, 0, 0, 1, 1, 4]
    assert tree.source.tolist() == [0, BOTH, RIVAL, RIVAL, CONTEXT, CONTEXT]
    p = tree.score.exp()
    assert torch.allclose(p[1], torch.tensor(2 / 3))  # the shared node: the "both" prior
    assert torch.allclose(p[2], torch.tensor(0.3)) and torch.allclose(p[3], p[1] / 3)  # min(own, rivals' 1/3)
    assert torch.allclose(p[5], p[1] * 0.25)
    kept = top_nodes(tree, 3)  # the budget cut ranks both sources together and keeps who proposed what
    assert kept.tokens.tolist() == [4, 5, 6, 8] and kept.source.tolist() == [0, BOTH, RIVAL, CONTEXT]
    counts = {}
    observe_tree(tree, torch.tensor([0, 1, 4]), 2, stats, counts)
    assert counts == {"both": 1, "context": 1}
    assert stats.rate("both", 2, 1) > 2 / 3  # 5 accepted
    assert stats.counts[("context", 2, 2)] == [1.0, 1.0]  # 8 accepted
    assert stats.counts[("context", 2, 3)] == [0.0, 1.0]  # 9 rejected, its parent accepted: an event
    assert stats.counts[("rival", 2, 1)] == stats.counts[("rival", 2, 2)] == [0.0, 1.0]  # 6 and 7 rejected
    assert union_tree(heads, tokens, [6], 2, stats).source.tolist() == [0, RIVAL, BOTH, HEADS]  # 7: no rival


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
        assert max(out.accept_lengths) > 1, (
            f"{family}: no lookup was accepted although the answer is in the context"
        )
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
    from infer.decode.batch import generate_batch

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


HYBRID = [
    DecodeConfig(drafter="heads,context", node_budget=7, top_m=4, max_new_tokens=NEW),
    DecodeConfig(
        drafter="context,heads", tree="static", max_new_tokens=NEW, medusa_choices=[[0], [1], [0, 0]]
    ),
]


@pytest.mark.parametrize("family", FAMILIES)
def test_hybrid_drafting_is_lossless(family):
    """One tree over the heads' candidates and the context's chain: greedy output equals plain greedy decoding, on
    prompts where the heads know the answer and on prompts whose answer is in the context; both sources score."""
    _, model, heads, prompts, conts = oracle_setup(family, num_prompts=4, new_tokens=NEW, seed=5)
    sources = {}
    for prompt, ref in zip(prompts, conts):
        for ids in (prompt, torch.cat([prompt, ref[None], prompt], 1)):
            plain = generate(model, ids, None, DecodeConfig(tree="none", max_new_tokens=NEW), eos=set())
            for cfg in HYBRID:
                out = generate(model, ids, heads, cfg, eos=set())
                assert out.tokens == plain.tokens, (
                    f"{family} {cfg.tree}: hybrid drafting diverged from plain greedy"
                )
                for k, v in out.sources.items():
                    sources[k] = sources.get(k, 0) + v
                assert (
                    sum(out.sources.values()) + out.steps >= len(out.tokens) - 1
                )  # every accepted draft token has a source (the last step may be cut at max_new_tokens)
    assert sources.get("heads", 0) > 0 and sources.get("context", 0) + sources.get("both", 0) > 0, sources


def test_hybrid_with_sequential_heads_compiled_engine_batch_and_sampling():
    family, model, heads, prompts, conts = oracle_setup("llama", num_prompts=4, new_tokens=NEW, seed=6)
    model = copy.deepcopy(model)
    _, _, seq, _, _ = sequential_oracle((family, model, heads, prompts, conts))
    rows = [torch.cat([p, c[None], p], 1) if i % 2 else p for i, (p, c) in enumerate(zip(prompts, conts))]
    plains = [
        generate(model, ids, None, DecodeConfig(tree="none", max_new_tokens=NEW), eos=set()).tokens
        for ids in rows
    ]
    engine = CompiledEngine(model, buckets=(1, 4), backend="inductor")
    cfg = HYBRID[0]
    for ids, plain in zip(rows, plains):
        assert generate(model, ids, seq, cfg, eos=set()).tokens == plain
        out = generate(model, ids, heads, cfg, eos=set(), engine=engine)
        assert out.tokens == plain and max(out.tree_sizes) <= 4
    from infer.decode.batch import generate_batch

    for h in (heads, seq):
        out = generate_batch(model, rows, h, cfg, eos=set())
        assert [r.tokens for r in out] == plains  # every row equals its batch-1 greedy output
        assert sum(sum(r.sources.values()) for r in out) > 0
    sample = dataclasses.replace(cfg, acceptance="sample", temperature=1.0)
    a = generate(model, rows[1], heads, sample, eos=set(), generator=torch.Generator().manual_seed(0))
    b = generate(model, rows[1], heads, sample, eos=set(), generator=torch.Generator().manual_seed(0))
    assert a.tokens == b.tokens and len(a.tokens) == NEW


def test_chains_a_plain_step_beats_are_refused_before_any_tree_is_built(monkeypatch):
    """The context alone under a budget: when the profile says a plain step pays more than the chains' calibrated
    nodes, the Drafter returns a plain step without building the rows' union trees; when trees are cheap, it builds
    them."""
    import infer.draft.drafters
    from infer.draft.budget import LatencyProfile
    from infer.draft.drafters import Drafter, RowState

    _, model, _, _, _ = oracle_setup("llama", num_prompts=1, new_tokens=2, seed=8)
    cfg = DecodeConfig(drafter="context", node_budget=8)
    drafter = Drafter(model, None, cfg, room=9, batched=True)
    rows = [RowState(torch.zeros(8), 5, ContextIndex([1, 2, 3, 4, 5, 1, 2, 3, 4, 5])) for _ in range(2)]
    built = []
    monkeypatch.setattr(infer.draft.drafters, "union_tree", lambda *a: built.append(1) or union_tree(*a))
    sizes = torch.arange(1, 10)

    def profile(tree_cost):
        seconds = torch.where(sizes == 1, 0.01, tree_cost).double()
        return LatencyProfile(sizes=sizes, seconds=seconds, heads_seconds=0.0, key={})

    drafts, _, _ = drafter.propose(rows, profile(1.0))  # a tree step costs 100 plain steps
    assert drafts is None and not built
    drafts, _, _ = drafter.propose(rows, profile(0.0105))  # about what a plain step costs
    assert drafts is not None and len(built) == 2
