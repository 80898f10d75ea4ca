"""--dtype auto: the choice follows the measured costs of the purpose."""

import pytest
import torch

from infer import hardware
from tests.tiny import tiny_model


@pytest.mark.parametrize(
    "purpose,expected",
    [("decode", torch.bfloat16), ("train", torch.float32)],  # no native bf16: fast plain step, slow tree step
)
def test_choice_follows_the_purpose(tmp_path, monkeypatch, purpose, expected):
    def fake(model, *a, **k):  # seconds of a 1-token and a 17-token step, 5 repetitions each
        bf16 = next(model.parameters()).dtype == torch.bfloat16
        return [[0.021] * 5, [0.148] * 5] if bf16 else [[0.058] * 5, [0.100] * 5]

    monkeypatch.setattr(hardware, "step_latency", fake)
    dtype, reason = hardware.choose_dtype(
        tiny_model("llama"), "cpu", cache_dir=str(tmp_path), purpose=purpose
    )
    assert dtype == expected and f"for {purpose}" in reason and "21/148 ms in bfloat16 vs 58/100 ms" in reason
    again, reason = hardware.choose_dtype(
        tiny_model("llama"), "cpu", cache_dir=str(tmp_path), purpose=purpose
    )
    assert again == expected and reason.endswith("(cached)")
    with pytest.raises(ValueError, match="purpose"):
        hardware.choose_dtype(tiny_model("llama"), "cpu", cache_dir=str(tmp_path), purpose="serve")
