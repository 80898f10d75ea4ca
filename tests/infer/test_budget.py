import json

import torch

from infer import budget
from infer.budget import LatencyProfile, load_or_measure
from infer.decode import DecodeConfig, generate
from infer.heads import MedusaConfig, MedusaHeads
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
    )
    confident = torch.tensor([0.9, 0.9, 0.9, 0.9]).log()  # E(1)=1.9, E(2)=2.8 over 2.0 s, E(4)=4.6 over 2.0 s
    assert prof.best_budget(confident) == 4
    hopeless = torch.tensor([0.05, 0.01, 0.01, 0.01]).log()  # nothing pays for a slower step
    assert prof.best_budget(hopeless) == 1  # size 2 costs the same as size 1 here, so one node is free
    prof.seconds[1] = 1.5
    assert prof.best_budget(hopeless) == 0  # plain step


def test_profile_cache_is_reused_and_invalidated(tmp_path, monkeypatch):
    calls = []
    real = budget.measure_latency

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(budget, "measure_latency", counting)
    model, heads = tiny_model("llama"), _heads()
    p1 = load_or_measure(model, heads, sizes=SIZES, cache_dir=str(tmp_path), verbose=False)
    p2 = load_or_measure(model, heads, sizes=SIZES, cache_dir=str(tmp_path), verbose=False)
    assert len(calls) == 1 and p1.to_dict() == p2.to_dict()
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
    k_cpu = budget.profile_key(model, heads, "cpu")
    k_gpu = budget.profile_key(model, heads, "cuda:0")
    assert budget._key_file(k_cpu, str(tmp_path)) != budget._key_file(k_gpu, str(tmp_path))
    assert len(list(tmp_path.iterdir())) == 3


def test_auto_budget_stays_lossless():
    model = tiny_model("mistral", seed=5)
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(3, 512, (1, 8), generator=g) for _ in range(6)]
    conts = greedy_continuations(model, prompts, 20)
    heads = fit_oracle_heads(
        model, [torch.cat([p[0], c]) for p, c in zip(prompts, conts)], num_heads=3, steps=60
    )
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
