import json

import torch

from infer.decode.single import DecodeConfig, generate
from infer.draft import budget
from infer.draft.budget import LatencyProfile, load_or_measure
from infer.draft.heads import MedusaConfig, MedusaHeads
from tests.tiny import fit_oracle_heads, greedy_continuations, tiny_model

SIZES = [1, 2, 4, 8]


def _heads():
    return MedusaHeads(MedusaConfig(hidden_size=64, vocab_size=512, medusa_num_heads=2))


def test_best_budget_trades_acceptance_for_latency():
    prof = LatencyProfile(
        sizes=torch.tensor([1, 2, 3, 5]),
        seconds=torch.tensor([1.0, 1.0, 2.0, 2.0], dtype=torch.float64),
        heads_seconds=0.0,
        key={},
        probe=False,
    )
    confident = torch.tensor([0.9, 0.9, 0.9, 0.9]).log()  # E(1)=1.9, E(2)=2.8 over 2.0 s, E(4)=4.6 over 2.0 s
    assert prof.best_budget(confident) == 4
    hopeless = torch.tensor([0.2, 0.01, 0.01, 0.01]).log()  # nothing pays for a slower step
    assert prof.best_budget(hopeless) == 1  # size 2 costs the same as size 1 here, so one node is free
    assert prof.best_budget(torch.tensor([0.04, 0.01]).log()) == 0  # a free node worth 4 %: within the margin
    prof.seconds[1] = 1.5
    assert prof.best_budget(hopeless) == 0  # plain step
    # a batch: the rows' expected tokens add up; two rows with one confident node each
    assert prof.best_budget([confident, hopeless]) == 4


def test_trees_that_cannot_pay_even_when_always_accepted_are_not_drafted():
    prof = LatencyProfile(
        sizes=torch.tensor([1, 2, 4, 8]),
        seconds=torch.tensor([0.05, 0.10, 0.20, 0.40], dtype=torch.float64),  # a batch where every node costs
        heads_seconds=0.002,
        key={},
        probe=False,
    )
    assert not prof.trees_can_pay(batch=8, depth=4)  # 2 tokens/row at best for 1.8x the time + drafting
    prof.seconds = torch.tensor([0.05, 0.06, 0.07, 0.09], dtype=torch.float64)
    assert prof.trees_can_pay(batch=8, depth=4)


def test_a_batch_that_stopped_drafting_rechecks_with_a_probe():
    """Once the prior says trees cannot pay, the batched decoder still drafts (and probes a tree) now and then: a
    pessimistic prior (measured on a busy machine) is corrected only by trees it observes."""
    from infer.draft.budget import UNPAID_RECHECK

    prof = LatencyProfile(
        sizes=torch.tensor([1, 2, 4, 8]),
        seconds=torch.tensor([0.05, 0.10, 0.20, 0.40], dtype=torch.float64),
        heads_seconds=0.002,
        key={},
        probe=False,  # as BatchLatency gives a batch: no scheduled probes, only the re-check's
    )
    decisions = [prof.may_draft(batch=2, depth=4) for _ in range(4 * UNPAID_RECHECK)]
    assert decisions.count(True) == 2 and decisions.index(True) == 2 * UNPAID_RECHECK - 1
    assert prof.force_probe  # the re-check asks the budget to probe
    prof.force_probe = False
    hopeless = torch.tensor([0.2, 0.01, 0.01]).log()
    prof.steps = 40  # off the probe schedule: without the re-check's probe this would be plain (n = 0)
    assert prof.best_budget([hopeless, hopeless]) == 0
    prof.force_probe = True
    assert prof.best_budget([hopeless, hopeless]) > 0  # the re-check observes a tree


def _fake_measure(calls):
    """A deterministic monotone measurement (tiny models time in noise-dominated microseconds)."""

    def measure(model, sizes, reps=3, **k):
        calls.append(1)
        return LatencyProfile(torch.tensor(sizes), torch.tensor(sizes, dtype=torch.float64) * 1e-3, 0.0, {})

    return measure


def test_measure_latency_times_every_size():
    prof = budget.measure_latency(tiny_model("llama"), SIZES, prefix_len=16, reps=1)
    assert prof.sizes.tolist() == SIZES and (prof.seconds > 0).all()


def test_profile_cache_is_reused_and_invalidated(tmp_path, monkeypatch):
    calls = []
    counting = _fake_measure(calls)

    monkeypatch.setattr(budget, "measure_latency", counting)
    model, heads = tiny_model("llama"), _heads()
    p1 = load_or_measure(model, heads, sizes=SIZES, cache_dir=str(tmp_path), verbose=False)
    p2 = load_or_measure(model, heads, sizes=SIZES, cache_dir=str(tmp_path), verbose=False)
    assert len(calls) == 1 and p1.seconds.tolist() == p2.seconds.tolist()
    assert (p1.seconds > 0).all() and p1.sizes.tolist() == SIZES
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and json.loads(files[0].read_text())["key"]["dtype"] == "float32"
    # dtype change -> new measurement
    load_or_measure(
        model.to(torch.bfloat16),
        heads.to(torch.bfloat16),
        sizes=SIZES,
        cache_dir=str(tmp_path),
        verbose=False,
    )
    assert len(calls) == 2
    # another model -> new measurement
    load_or_measure(tiny_model("qwen2"), _heads(), sizes=SIZES, cache_dir=str(tmp_path), verbose=False)
    assert len(calls) == 3
    # another device (key only: no second device on this machine) -> another cache file
    k_cpu = budget.profile_key(model, "cpu")
    k_gpu = budget.profile_key(model, "cuda:0")
    assert budget._key_file(k_cpu, str(tmp_path)) != budget._key_file(k_gpu, str(tmp_path))
    assert len(list(tmp_path.iterdir())) == 3


def test_profile_is_keyed_by_model_not_heads(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(budget, "measure_latency", _fake_measure(calls))
    model = tiny_model("llama")
    load_or_measure(model, _heads(), sizes=SIZES, cache_dir=str(tmp_path), verbose=False)
    other = MedusaHeads(
        MedusaConfig(hidden_size=64, vocab_size=512, medusa_num_heads=3, head_type="sequential")
    )
    prof = load_or_measure(model, other, sizes=SIZES, cache_dir=str(tmp_path), verbose=False)
    assert (
        len(calls) == 1 and prof.heads_seconds > 0
    )  # new heads: the cost of drafting timed, not the profile


def test_non_monotone_profiles_are_measured_again_and_never_cached(tmp_path, monkeypatch):
    assert budget.non_monotone([1, 2, 8], [0.29, 0.98, 0.20]) == (2, 8)  # the poisoned profile of the issue
    assert budget.non_monotone([1, 2, 8], [0.10, 0.09, 0.30]) is None  # within noise
    fake = [0.3, 1.0, 0.2, 0.25]
    seen = []

    def poisoned(model, sizes, reps=3, **k):
        seen.append(reps)
        return LatencyProfile(torch.tensor(sizes), torch.tensor(fake, dtype=torch.float64), 0.0, {})

    monkeypatch.setattr(budget, "measure_latency", poisoned)
    prof = load_or_measure(tiny_model("llama"), None, sizes=SIZES, cache_dir=str(tmp_path), verbose=False)
    assert seen == [3, 5] and list(tmp_path.iterdir()) == []  # measured twice, then not cached
    assert prof.seconds.tolist() == [0.3, 1.0, 1.0, 1.0]  # monotone envelope until decoding corrects it
    # A poisoned file already in the cache is re-measured, not trusted.
    good = [0.1, 0.11, 0.15, 0.2]
    fake[:] = good
    model = tiny_model("llama")
    path = budget._key_file(budget.profile_key(model, "cpu"), str(tmp_path))
    bad = LatencyProfile(
        torch.tensor(SIZES), torch.tensor([0.3, 1.0, 0.2, 0.25]), 0.0, budget.profile_key(model, "cpu")
    )
    tmp_path.joinpath(path.split("/")[-1]).write_text(json.dumps(bad.to_dict()))
    prof = load_or_measure(model, None, sizes=SIZES, cache_dir=str(tmp_path), verbose=False)
    assert prof.seconds.tolist() == good and json.loads(open(path).read())["seconds"] == good


def _steps(prof, truth, logp, n_steps):
    """Drive the budget as decoding does: choose, then observe the true latency of the chosen size."""
    chosen = []
    for _ in range(n_steps):
        n = prof.best_budget(logp)
        prof.observe(n + 1, truth(n + 1), 0.0)
        chosen.append(n)
    return chosen


def _share(chosen, n):
    return sum(c == n for c in chosen) / len(chosen)


def test_budget_learns_from_observed_steps():
    sizes = torch.tensor(budget.DEFAULT_SIZES[:17])  # 1..16, 20
    true = lambda T: 1.0 + 0.02 * T  # noqa: E731  trees nearly free
    logp = torch.full((20,), 0.5).log()  # each node accepted half the time: trees pay off
    best = LatencyProfile(sizes, torch.tensor([true(int(t)) for t in sizes], dtype=torch.float64), 0.0, {})
    target = best.best_budget(logp)
    assert target > 4
    # Prior corrupted: every tree 10x too slow -> plain steps first, probes find the truth, then trees.
    slow_trees = LatencyProfile(
        sizes, torch.tensor([true(1)] + [10 * true(int(t)) for t in sizes[1:]]), 0.0, {}
    )
    chosen = _steps(slow_trees, true, logp, 80)
    assert chosen[0] == 0 and _share(chosen[8:], target) > 0.9  # a few probe steps aside
    # Prior corrupted the other way: the plain step 10x too slow; trees are what they cost anyway.
    slow_plain = LatencyProfile(
        sizes, torch.tensor([10 * true(1)] + [true(int(t)) for t in sizes[1:]]), 0.0, {}
    )
    assert _share(_steps(slow_plain, true, logp, 80)[8:], target) > 0.9
    # Trees really are slower than plain steps here (prior says free): the budget falls to plain decoding.
    costly = lambda T: 1.0 if T == 1 else 3.0 + T  # noqa: E731
    prof = LatencyProfile(sizes, torch.ones(len(sizes), dtype=torch.float64), 0.0, {})
    chosen = _steps(prof, costly, logp, 80)
    assert chosen[0] > 0 and _share(chosen[8:], 0) > 0.9
    # One slow outlier does not move a size with enough observations (median).
    for _ in range(5):
        prof.observe(1, 1.0)
    prof.observe(1, 50.0)
    assert float(prof.estimate()[0]) == 1.0


def _oracle(family, seed, n_prompts, new, num_heads, steps):
    """A tiny model, prompts, their greedy continuations and oracle heads fitted to them."""
    model = tiny_model(family, seed=seed)
    g = torch.Generator().manual_seed(seed - 3)
    prompts = [torch.randint(3, 512, (1, 8), generator=g) for _ in range(n_prompts)]
    conts = greedy_continuations(model, prompts, new)
    seqs = [torch.cat([p[0], c]) for p, c in zip(prompts, conts)]
    return model, prompts, conts, fit_oracle_heads(model, seqs, num_heads=num_heads, steps=steps)


def test_auto_budget_stays_lossless():
    model, prompts, conts, heads = _oracle("mistral", 5, 6, 20, num_heads=3, steps=60)
    # A synthetic profile where big trees are expensive: the chosen budget varies from step to step.
    prof = LatencyProfile(
        sizes=torch.arange(1, 33),
        seconds=torch.linspace(1.0, 4.0, 32, dtype=torch.float64),
        heads_seconds=0.1,
        key={},
    )
    cfg = DecodeConfig(tree="dynamic", node_budget=32, latency=prof, max_new_tokens=20)
    for p, c in zip(prompts, conts):
        out = generate(model, p, heads, cfg, eos=set())
        assert out.tokens == c.tolist()


def test_when_plain_steps_win_auto_stops_drafting_and_stays_lossless():
    model, prompts, conts, heads = _oracle("llama", 4, 3, 24, num_heads=2, steps=30)
    sizes = torch.arange(1, 17)
    # Trees cost 10x a plain step, drafting 2x: plain decoding wins; only every RECHECK-th step drafts again.
    prof = LatencyProfile(sizes, torch.where(sizes > 1, 10.0, 1.0).double(), 2.0, {}, probe=False)
    cfg = DecodeConfig(tree="dynamic", node_budget=16, latency=prof, max_new_tokens=24)
    for p, c in zip(prompts, conts):
        drafts = prof.steps
        out = generate(model, p, heads, cfg, eos=set())
        assert out.tokens == c.tolist()
        drafts = prof.steps - drafts  # best_budget runs once per drafted step
        assert out.tree_sizes.count(1) == out.steps and drafts <= 1 + out.steps // budget.RECHECK


def test_recheck_interval_doubles_while_plain_keeps_winning_and_resets_when_trees_pay():
    sizes = torch.arange(1, 17)
    expensive = LatencyProfile(sizes, torch.where(sizes > 1, 10.0, 1.0).double(), 2.0, {}, probe=False)
    sure = torch.zeros(8)  # log-probs of nodes that are always accepted
    gaps = []
    for _ in range(5):  # each draft: plain wins; count the plain steps until the next re-check
        assert expensive.best_budget(sure) == 0 and expensive.skipping
        gap = 1
        while not expensive.want_draft():
            gap += 1
        gaps.append(gap)
    assert gaps == [
        budget.RECHECK,
        2 * budget.RECHECK,
        4 * budget.RECHECK,
        budget.RECHECK_MAX,
        budget.RECHECK_MAX,
    ]
    cheap = LatencyProfile(
        sizes, torch.ones(16, dtype=torch.float64), 0.0, {}, probe=False
    )  # trees cost nothing
    cheap.skipping, cheap.recheck = True, budget.RECHECK_MAX  # ... after a long run of plain steps
    assert cheap.best_budget(sure) > 0 and cheap.recheck == budget.RECHECK and not cheap.skipping


def test_a_batched_profile_is_keyed_by_the_engine_kernel(tmp_path, monkeypatch):
    """A new version of our kernel (or none) changes the steps' costs: the profile is measured again."""
    from types import SimpleNamespace

    calls = []
    monkeypatch.setattr(budget, "measure_latency", _fake_measure(calls))
    model, heads = tiny_model("llama"), _heads()
    for kernel in ("bf16_linear-v1", "bf16_linear-v1", "bf16_linear-v2", None):
        engine = SimpleNamespace(name="compiled", buckets=(1, 4), fixed_shapes=((2, 1),), kernel=kernel)
        load_or_measure(
            model, heads, sizes=SIZES, cache_dir=str(tmp_path), verbose=False, batch=2, engine=engine
        )
    assert len(calls) == 3 and len(list(tmp_path.iterdir())) == 3
