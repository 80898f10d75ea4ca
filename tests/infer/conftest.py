"""Folders with a tiny model + tokenizer and heads, for the command-line tools."""

import pytest
import torch

from infer.draft.heads import MedusaConfig, MedusaHeads
from tests.tiny import tiny_model, tiny_tokenizer


@pytest.fixture(scope="session")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    model = tiny_model("llama", vocab_size=400)
    model.config.max_position_embeddings = 160
    model.save_pretrained(root / "model")
    tiny_tokenizer().save_pretrained(root / "model")
    torch.manual_seed(0)
    heads = MedusaHeads(
        MedusaConfig(hidden_size=64, vocab_size=400, medusa_num_heads=3, base_model_name_or_path="tiny")
    )
    for p in heads.parameters():
        p.data.normal_(0, 0.05)
    heads.save_pretrained(root / "heads")
    seq = MedusaHeads(
        MedusaConfig(hidden_size=64, vocab_size=400, medusa_num_heads=3, head_type="sequential")
    )
    for p in seq.parameters():
        p.data.normal_(0, 0.05)
    seq.save_pretrained(root / "seq_heads")
    bad = MedusaHeads(MedusaConfig(hidden_size=32, vocab_size=400, medusa_num_heads=2))
    bad.save_pretrained(root / "bad_heads")
    return root


@pytest.fixture
def calibrated_heads(folders, tmp_path):
    """A copy of the tiny heads with an identity calibration that carries per-rank accuracies."""
    from infer.draft.calibration import Calibration

    heads = tmp_path / "heads"
    heads.mkdir()
    for f in (folders / "heads").iterdir():
        (heads / f.name).write_bytes(f.read_bytes())
    cal = Calibration.identity(3)
    cal.rank_accuracy = [[0.5, 0.2, 0.1], [0.4, 0.2], [0.3]]
    cal.to_file(str(heads / "calibration.json"))
    return heads
