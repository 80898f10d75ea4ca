import json
import os

import pytest
import torch
from safetensors.torch import save_file

from infer.draft.heads import HeadsError, MedusaConfig, MedusaHeads
from tests.tiny import tiny_model


def _random_heads(layout="shared_lm_head", K=3, L=2, H=64, V=512, **kw):
    torch.manual_seed(0)
    heads = MedusaHeads(
        MedusaConfig(
            hidden_size=H, vocab_size=V, medusa_num_heads=K, medusa_num_layers=L, layout=layout, **kw
        )
    )
    for p in heads.parameters():
        p.data.normal_(0, 0.1)
    return heads


@pytest.mark.parametrize("layout", ["shared_lm_head", "own_lm_head"])
def test_save_load_round_trip(tmp_path, layout):
    model = tiny_model("llama")
    heads = _random_heads(layout, base_model_name_or_path="org/base")
    heads.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert (
        cfg["medusa_num_heads"] == 3
        and cfg["layout"] == layout
        and cfg["base_model_name_or_path"] == "org/base"
    )
    back = MedusaHeads.from_pretrained(str(tmp_path))
    h = torch.randn(5, 64)
    lm_head = model.get_output_embeddings()
    torch.testing.assert_close(back(h, lm_head), heads(h, lm_head))
    assert back(h, lm_head).shape == (3, 5, 512)
    back.check_base(model)


def test_layers_have_distinct_weights():
    heads = _random_heads(L=2)
    a, b = heads.blocks[0][0].linear.weight, heads.blocks[0][1].linear.weight
    assert a.data_ptr() != b.data_ptr() and not torch.equal(a, b)


def test_untrained_heads_equal_the_base_projection():
    model = tiny_model("llama")
    heads = MedusaHeads(
        MedusaConfig(hidden_size=64, vocab_size=512, medusa_num_heads=2, layout="own_lm_head")
    )
    heads.init_from_lm_head(model.get_output_embeddings())
    h = torch.randn(4, 64)
    expected = model.get_output_embeddings()(h)
    for k in range(2):
        torch.testing.assert_close(heads(h)[k], expected)


def test_mismatched_base_is_refused():
    model = tiny_model("llama")
    with pytest.raises(HeadsError, match="hidden size 32"):
        _random_heads(H=32).check_base(model)
    with pytest.raises(HeadsError, match="vocabulary of 1000"):
        _random_heads(V=1000).check_base(model)


def test_bad_config_and_missing_paths(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 8, "vocab_size": 8, "colour": "red"}))
    with pytest.raises(HeadsError, match="unknown keys"):
        MedusaHeads.from_pretrained(str(tmp_path))
    with pytest.raises(HeadsError, match="not found"):
        MedusaHeads.from_pretrained(str(tmp_path / "nope"))
    with pytest.raises(HeadsError, match="layout"):
        MedusaConfig(hidden_size=8, vocab_size=8, layout="weird")


def _medusa1_state(K, L, H, V):
    g = torch.Generator().manual_seed(0)
    state = {}
    for h in range(K):
        for layer in range(L):
            state[f"{h}.{layer}.linear.weight"] = torch.randn(H, H, generator=g)
            state[f"{h}.{layer}.linear.bias"] = torch.randn(H, generator=g)
        state[f"{h}.{L}.weight"] = torch.randn(V, H, generator=g)
    return state


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_loads_original_medusa1_layout(tmp_path, fmt):
    # Their released configs may list fewer heads than the file holds: the file wins.
    state = _medusa1_state(K=5, L=1, H=64, V=512)
    (tmp_path / "config.json").write_text(
        json.dumps(
            {"medusa_num_heads": 3, "medusa_num_layers": 1, "base_model_name_or_path": "lmsys/vicuna-7b-v1.3"}
        )
    )
    if fmt == "pt":
        torch.save(state, tmp_path / "medusa_lm_head.pt")
    else:
        save_file(state, str(tmp_path / "medusa_lm_head.safetensors"))
    heads = MedusaHeads.from_pretrained(str(tmp_path))
    assert heads.num_heads == 5 and heads.config.layout == "own_lm_head"
    assert heads.config.base_model_name_or_path == "lmsys/vicuna-7b-v1.3"
    h = torch.randn(64)
    x = h + torch.nn.functional.silu(state["4.0.linear.weight"] @ h + state["4.0.linear.bias"])
    torch.testing.assert_close(heads(h)[4], state["4.1.weight"] @ x, atol=1e-4, rtol=1e-4)


def test_reduced_head_vocab_maps_back_to_full_ids():
    model = tiny_model("llama")
    vocab = [5, 9, 100, 300]
    heads = _random_heads(head_vocab=vocab)
    logits = heads(torch.randn(64), model.get_output_embeddings())
    assert logits.shape == (3, 4)
    idx = logits.argmax(-1)
    assert set(heads.to_full_vocab(idx).tolist()) <= set(vocab)


def test_damaged_heads_folders_get_one_clear_error(tmp_path):
    import json

    import pytest

    from infer.draft.heads import HeadsError, MedusaConfig, MedusaHeads

    good = tmp_path / "good"
    MedusaHeads(MedusaConfig(hidden_size=16, vocab_size=40, medusa_num_heads=2)).save_pretrained(str(good))
    cfg = json.loads((good / "config.json").read_text())
    weights = (good / "model.safetensors").read_bytes()

    def folder(name, config=None, data=weights):
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text(config if isinstance(config, str) else json.dumps(config or cfg))
        (d / "model.safetensors").write_bytes(data)
        return str(d)

    with pytest.raises(HeadsError, match="config.json: not a JSON heads config"):
        MedusaHeads.from_pretrained(folder("notjson", "{oops"))
    with pytest.raises(HeadsError, match="model.safetensors: not a readable safetensors file"):
        MedusaHeads.from_pretrained(folder("truncated", data=weights[: len(weights) // 2]))
    # A config claiming 100 huge heads is refused from the file's header, before anything is allocated.
    with pytest.raises(HeadsError, match="weights do not match config.json"):
        MedusaHeads.from_pretrained(folder("huge", cfg | {"medusa_num_heads": 100, "hidden_size": 4096}))
    with pytest.raises(HeadsError, match=r"head_vocab must be distinct token ids in \[0, 40\)"):
        MedusaHeads.from_pretrained(folder("vocab", cfg | {"head_vocab": [1, 2, 99]}))


def test_a_malicious_pickle_is_refused_with_our_message(tmp_path):
    """medusa_lm_head.pt is read with weights_only: a pickle that would run code is refused, and the message does
    not suggest torch's weights_only=False (which would run it)."""
    import pickle

    class Exploit:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    (tmp_path / "config.json").write_text(json.dumps({"medusa_num_heads": 1, "base_model_name_or_path": "x"}))
    (tmp_path / "medusa_lm_head.pt").write_bytes(pickle.dumps({"0.0.linear.weight": Exploit()}))
    with pytest.raises(HeadsError) as e:
        MedusaHeads.from_pretrained(str(tmp_path))
    assert "medusa_lm_head.pt" in str(e.value) and "weights_only=False" not in str(e.value)
    assert not (tmp_path / "pwned").exists()
