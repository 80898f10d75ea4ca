"""The shipped SmolLM2 heads load (weights + calibration) without the base model, and the default is the kind
that measured better."""

import json
import os

import pytest

from infer.base import DEFAULT_MODEL
from infer.calibration import load_calibration
from infer.heads import MedusaHeads
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
