"""Tree speculative sampling preserves the base model's distribution (chi-square on a small vocabulary)."""

import pytest
import torch
from scipy.stats import chisquare

from infer.decode.batch import generate_batch
from infer.decode.single import DecodeConfig, generate
from infer.draft.heads import MedusaConfig, MedusaHeads
from tests.tiny import tiny_model

V = 8
RUNS = 1500


def _setup(temperature, head_type="medusa"):
    model = tiny_model("llama", vocab_size=V, hidden_size=32, seed=3)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(0.15)  # soft distributions: every token is likely
    torch.manual_seed(0)
    heads = MedusaHeads(
        MedusaConfig(
            hidden_size=32, vocab_size=V, medusa_num_heads=2, layout="own_lm_head", head_type=head_type
        )
    )
    heads.init_from_lm_head(model.get_output_embeddings())
    if heads.sequential:  # drafts that really depend on the path
        with torch.no_grad():
            for layer in heads.inputs:
                layer.linear.weight.add_(torch.randn_like(layer.linear.weight) * 0.5)
    prompt = torch.tensor([[1, 4, 2, 6]])
    # Exact joint distribution of the first two new tokens at this temperature, and of the 2nd and 3rd (the 3rd comes
    # from a depth-2 tree node whenever the first tree step accepts two nodes).
    with torch.no_grad():
        p1 = torch.softmax(model(prompt).logits[0, -1] / temperature, -1)
        seqs = torch.cat([prompt.repeat(V, 1), torch.arange(V)[:, None]], 1)
        p2 = torch.softmax(model(seqs).logits[:, -1] / temperature, -1)  # [V, V]: P(x2 | x1)
        seqs3 = torch.cat([seqs.repeat_interleave(V, 0), torch.arange(V).repeat(V)[:, None]], 1)
        p3 = torch.softmax(model(seqs3).logits[:, -1] / temperature, -1).reshape(V, V, V)  # P(x3 | x1, x2)
    joint12 = p1[:, None] * p2
    joint23 = (joint12[:, :, None] * p3).sum(0)  # [V, V]: P(x2, x3)
    _setup.joint23 = joint23.reshape(-1)
    return model, heads, prompt, joint12.reshape(-1)


def _sample_joint(model, heads, prompt, cfg, batch: int = 0):
    """RUNS samples of the first new tokens (one at a time, or ``batch`` rows per batched call) -> (counts of
    (x1, x2), counts of (x2, x3), the most tokens a tree step emitted)."""
    g = torch.Generator().manual_seed(1234)
    counts, counts23 = torch.zeros(V * V), torch.zeros(V * V)
    longest = 0
    outs = []
    while len(outs) < RUNS:
        if batch:
            gens = [
                torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1,), generator=g)))
                for _ in range(batch)
            ]
            outs += generate_batch(model, [prompt] * batch, heads, cfg, eos=set(), generators=gens)
        else:
            outs.append(generate(model, prompt, heads, cfg, eos=set(), generator=g))
    for out in outs[:RUNS]:
        counts[out.tokens[0] * V + out.tokens[1]] += 1
        counts23[out.tokens[1] * V + out.tokens[2]] += 1
        longest = max(longest, max(out.accept_lengths))
    _sample_joint.counts23 = counts23
    return counts, longest


def _pvalue(counts, expected_p):
    keep = expected_p * RUNS >= 5
    exp = expected_p[keep] * RUNS
    obs = counts[keep]
    # Fold the rare cells into one so the test keeps all mass.
    if (~keep).any():
        exp = torch.cat([exp, (expected_p[~keep] * RUNS).sum()[None]])
        obs = torch.cat([obs, counts[~keep].sum()[None]])
    exp = exp * obs.sum() / exp.sum()
    return chisquare(obs.numpy(), exp.numpy()).pvalue


@pytest.mark.parametrize(
    "tree,head_type,batch",
    [
        ("dynamic", "medusa", 0),
        ("static", "medusa", 0),
        ("dynamic", "sequential", 0),
        ("dynamic", "medusa", 50),
    ],
    ids=["dynamic-medusa", "static-medusa", "dynamic-sequential", "dynamic-medusa-batched"],
)
@pytest.mark.slow
def test_tree_sampling_matches_base_distribution(tree, head_type, batch):
    """Every depth: (x1, x2) checks the root's children, (x2, x3) the depth-2 nodes (a step that accepts two nodes
    emits x3 from depth 2); single rows and rows sampled together in batches."""
    model, heads, prompt, joint = _setup(1.0, head_type)
    cfg = DecodeConfig(
        tree=tree, acceptance="sample", temperature=1.0, node_budget=6, top_m=3, max_new_tokens=4
    )
    counts, longest = _sample_joint(model, heads, prompt, cfg, batch)
    assert longest >= 3, "no depth-2 node was ever accepted: the test would not exercise deep acceptance"
    assert _pvalue(counts, joint) > 1e-3
    assert _pvalue(_sample_joint.counts23, _setup.joint23) > 1e-3


@pytest.mark.slow
def test_chi_square_detects_a_biased_sampler():
    # The same check on greedy-style acceptance at temperature 1 (not lossless) must fail: the test can fail.
    model, heads, prompt, joint = _setup(1.0)
    cfg = DecodeConfig(
        tree="dynamic", acceptance="typical", temperature=1.0, posterior_threshold=0.3, max_new_tokens=3
    )
    counts, _ = _sample_joint(model, heads, prompt, cfg)
    assert _pvalue(counts, joint) < 1e-3


def test_typical_acceptance_runs_and_accepts():
    model, heads, prompt, _ = _setup(0.7)
    cfg = DecodeConfig(tree="dynamic", acceptance="typical", temperature=0.7, max_new_tokens=20)
    out = generate(model, prompt, heads, cfg, eos=set(), generator=torch.Generator().manual_seed(0))
    assert len(out.tokens) == 20 and sum(out.accept_lengths) == 19  # the first token comes from the prefill
    assert max(out.accept_lengths) > 1  # drafts were accepted (heads copied from the base's lm_head)


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA: the generator lives on the model's device"
)
def test_tree_sampling_with_a_generator_on_the_models_device():
    """The CLI and the server create the generator on the model's device; tree acceptance draws its uniforms with
    it (it drew them on the CPU, which raises for a CUDA generator)."""
    model, heads, prompt, _ = _setup(1.0)
    model, heads, prompt = model.cuda(), heads.cuda(), prompt.cuda()
    cfg = DecodeConfig(
        tree="dynamic", node_budget=6, top_m=3, acceptance="sample", temperature=1.0, max_new_tokens=8
    )
    gen = torch.Generator(device="cuda").manual_seed(0)
    out = generate(model, prompt, heads, cfg, eos=set(), generator=gen)
    assert len(out.tokens) == 8
