"""train.export: every format x {own, shared} x {head vocabulary or not} loads back with identical head logits, both
through our loader and through a re-implementation of what each engine's loader computes; refusals; the CLI."""

import json
import os
import re

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from infer.draft.heads import HeadsError, MedusaConfig, MedusaHeads
from tests.tiny import tiny_model
from train.export import ExportError, export_heads, main

# ---------------------------------------------------------------------- the engines' names, from their sources
# vLLM vllm/transformers_utils/configs/medusa.py: MedusaConfig(hidden_size, vocab_size, num_heads, num_hidden_layers,
# max_paths, topk, truncated_vocab_size), model_type "medusa", architectures ["MedusaModel"]; its from_pretrained
# renames every key holding "num" + "heads" to num_heads and "num" + "layers" to num_hidden_layers.
# vllm/model_executor/models/medusa.py reads getattr(config, "medusa_fc_bias") (default False: blocks without bias)
# and getattr(config, "original_lm_head") (one lm_head shared by all heads, loaded from "lm_heads.0.weight").
VLLM_CONFIG_FIELDS = {
    "architectures",
    "model_type",
    "hidden_size",
    "vocab_size",
    "num_heads",
    "num_hidden_layers",
    "max_paths",
    "topk",
    "truncated_vocab_size",
    "medusa_fc_bias",
    "original_lm_head",
}
# vllm/model_executor/models/medusa.py: Medusa.blocks[i] = ResidualBlock(.layers[j] = nn.Linear), Medusa.lm_heads[i],
# load_weights: "token_map" (only when truncated_vocab_size < vocab_size), weights of every *.safetensors.
VLLM_BLOCK_KEY = "blocks.{k}.layers.{l}.{p}"
VLLM_LM_HEAD_KEY = "lm_heads.{k}.weight"
VLLM_TOKEN_MAP_KEY = "token_map"
VLLM_WEIGHTS_FILE = "model.safetensors"
# TGI server/text_generation_server/models/__init__.py: config_dict["medusa_num_heads"],
# config_dict["base_model_name_or_path"], model_paths ["medusa_lm_head.safetensors"]; layers/medusa.py:
# medusa_config["medusa_num_layers"], ResBlock prefix f"{i}.{l}.linear" (bias=True), out prefix f"{i}.{n}";
# layers/speculative.py: a config with "architectures" is taken for an MLP speculator, not Medusa.
TGI_CONFIG_FIELDS = {"medusa_num_heads", "medusa_num_layers", "base_model_name_or_path"}
TGI_WEIGHTS_FILE = "medusa_lm_head.safetensors"
# TensorRT-LLM tensorrt_llm/models/medusa/weight.py load_medusa_hf: "medusa_lm_head.pt", else
# "medusa_lm_head.safetensors"; keys f"{h}.{l}.linear.weight|bias", f"{h}.{num_medusa_layers}.weight";
# examples/medusa/convert_checkpoint.py: config.get('medusa_num_layers'), --num_medusa_heads (default 4),
# --max_medusa_token_len (default 63); run.py --medusa_choices takes a list[list[int]].
TRTLLM_WEIGHTS_FILES = ("medusa_lm_head.pt", "medusa_lm_head.safetensors")
TRTLLM_CONFIG_FIELDS = {"medusa_num_layers"}
# FasterDecoding/Medusa medusa/model/medusa_model.py: MedusaConfig(medusa_num_heads, medusa_num_layers,
# base_model_name_or_path); it loads medusa_lm_head.pt into nn.Sequential(*([ResBlock(H)] * L),
# nn.Linear(H, V, bias=False)) -> keys "{h}.{l}.linear.weight|bias", "{h}.{L}.weight".
MEDUSA1_CONFIG_FIELDS = {"medusa_num_heads", "medusa_num_layers", "base_model_name_or_path"}
MEDUSA1_WEIGHTS_FILE = "medusa_lm_head.pt"
ORIGINAL_KEYS = ("{k}.{l}.linear.weight", "{k}.{l}.linear.bias", "{k}.{L}.weight")

FORMATS = ("vllm", "tgi", "trtllm", "medusa1")
K, H, V = 3, 32, 128
VOCAB = [2, 5, 7, 11, 40, 99, 127]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny llama saved to a folder, and its lm_head."""
    folder = tmp_path_factory.mktemp("base") / "model"
    model = tiny_model("llama", vocab_size=V, hidden_size=H, layers=1)
    model.save_pretrained(folder)
    return str(folder), model.get_output_embeddings()


def _heads(folder, base_path, layout, vocab=None, L=2, head_type="medusa", seed=0):
    torch.manual_seed(seed)
    heads = MedusaHeads(
        MedusaConfig(
            hidden_size=H,
            vocab_size=V,
            medusa_num_heads=K,
            medusa_num_layers=L,
            layout=layout,
            head_type=head_type,
            base_model_name_or_path=base_path,
            head_vocab=vocab,
        )
    )
    for p in heads.parameters():
        p.data.normal_(0, 0.1)
    heads.save_pretrained(str(folder))
    return heads


# ---------------------------------------------------------------------- what each engine computes from the files
def _block(x, w, b):
    return x + torch.nn.functional.silu(x @ w.T + (b if b is not None else 0))


def _vllm_logits(folder, x):
    """vllm/model_executor/models/medusa.py on the exported folder: [K, N, V] logits, -inf outside token_map."""
    cfg = json.loads(open(os.path.join(folder, "config.json")).read())
    for key in list(cfg):  # MedusaConfig.from_pretrained's renaming
        if "num" in key and "heads" in key:
            cfg["num_heads"] = cfg.pop(key)
        elif "num" in key and "layers" in key:
            cfg["num_hidden_layers"] = cfg.pop(key)
    state = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".safetensors"):
            state.update(
                {k.replace("medusa_heads.", ""): v for k, v in load_file(os.path.join(folder, name)).items()}
            )
    vocab, trunc = cfg["vocab_size"], cfg.get("truncated_vocab_size") or cfg["vocab_size"]
    token_map = state.get("token_map") if trunc < vocab else None
    assert trunc == vocab or token_map is not None
    bias = cfg.get("medusa_fc_bias", False)
    heads_out = []
    for k in range(cfg["num_heads"]):
        h = x
        for layer in range(cfg["num_hidden_layers"]):
            b = state[f"blocks.{k}.layers.{layer}.bias"] if bias else None
            h = _block(h, state[f"blocks.{k}.layers.{layer}.weight"], b)
        w = state["lm_heads.0.weight" if cfg.get("original_lm_head") else f"lm_heads.{k}.weight"]
        if token_map is not None and w.shape[0] > token_map.shape[0]:
            w = w[token_map]
        assert w.shape == (trunc, cfg["hidden_size"])  # default_weight_loader: the param is [truncated, H]
        logits = h @ w.T
        if token_map is not None:
            full = torch.full((*logits.shape[:-1], vocab), -torch.inf)
            full[..., token_map] = logits
            logits = full
        heads_out.append(logits)
    return torch.stack(heads_out)


def _original_logits(folder, fmt, x):
    """TGI MedusaHeadV1 / TensorRT-LLM load_medusa_hf / FasterDecoding MedusaModel on the exported folder."""
    cfg = json.loads(open(os.path.join(folder, "config.json")).read())
    L = cfg["medusa_num_layers"]
    if fmt == "tgi":
        state = load_file(os.path.join(folder, TGI_WEIGHTS_FILE))
    else:
        pt, st = (os.path.join(folder, n) for n in TRTLLM_WEIGHTS_FILES)
        state = torch.load(pt, weights_only=True) if os.path.exists(pt) else load_file(st)
    if fmt == "medusa1":  # the real module: one ResBlock repeated L times, then the projection
        from infer.draft.heads import ResBlock

        heads = torch.nn.ModuleList(
            torch.nn.Sequential(*([ResBlock(H)] * L), torch.nn.Linear(H, V, bias=False))
            for _ in range(cfg["medusa_num_heads"])
        )
        missing, unexpected = heads.load_state_dict(state, strict=False)
        assert not missing and not unexpected
        return torch.stack([head(x) for head in heads])
    out = []
    for k in range(cfg["medusa_num_heads"]):
        h = x
        for layer in range(L):
            h = _block(h, state[f"{k}.{layer}.linear.weight"], state[f"{k}.{layer}.linear.bias"])
        out.append(h @ state[f"{k}.{L}.weight"].T)
    return torch.stack(out)


# ---------------------------------------------------------------------- round trips
@pytest.mark.parametrize("vocab", [None, VOCAB], ids=["full-vocab", "head-vocab"])
@pytest.mark.parametrize("layout", ["own_lm_head", "shared_lm_head"])
@pytest.mark.parametrize("fmt_id", [*FORMATS, "vllm+token_map"])
def test_export_loads_back_with_identical_logits(tmp_path, base, fmt_id, layout, vocab):
    fmt, token_map = fmt_id.split("+")[0], fmt_id.endswith("+token_map")
    base_path, lm_head = base
    L = 1 if fmt == "medusa1" else 2
    heads = _heads(tmp_path / "heads", base_path, layout, vocab, L=L)
    out = str(tmp_path / "out")
    warnings = export_heads(str(tmp_path / "heads"), fmt, out, token_map=token_map)
    x = torch.randn(5, H)
    ours = heads(x, lm_head)  # [K, 5, V or V']
    cols = vocab if vocab is not None else list(range(V))
    others = sorted(set(range(V)) - set(cols))  # outside the head vocabulary
    kept = token_map and vocab is not None  # vLLM's token_map layout; else masked full-vocabulary rows
    masked = [w for w in warnings if "full-vocabulary projections whose other" in w and "above 0" in w]
    assert len(masked) == (vocab is not None and not token_map)
    back = MedusaHeads.from_pretrained(out)
    assert back.num_heads == K and back.config.medusa_num_layers == L and not back.sequential
    cfg = json.loads(open(os.path.join(out, "config.json")).read())
    if fmt == "vllm":
        assert set(cfg) == VLLM_CONFIG_FIELDS | {"base_model_name_or_path"}
        renamed = [k for k in cfg if "num" in k]  # vLLM renames keys holding "num": no other may
        assert renamed == ["num_heads", "num_hidden_layers"]
        assert cfg["model_type"] == "medusa" and cfg["architectures"] == ["MedusaModel"]
        dims = cfg["num_heads"], cfg["num_hidden_layers"], cfg["hidden_size"], cfg["vocab_size"]
        assert dims == (K, L, H, V)
        assert cfg["medusa_fc_bias"] is True and cfg["original_lm_head"] is (layout == "shared_lm_head")
        assert cfg["truncated_vocab_size"] == (len(cols) if kept else V)
        assert sorted(os.listdir(out)) == ["README.md", "config.json", VLLM_WEIGHTS_FILE]
        keys = {
            VLLM_BLOCK_KEY.format(k=k, l=j, p=p)
            for k in range(K)
            for j in range(L)
            for p in ("weight", "bias")
        }
        keys |= {VLLM_LM_HEAD_KEY.format(k=k) for k in range(1 if layout == "shared_lm_head" else K)}
        keys |= {VLLM_TOKEN_MAP_KEY} if kept else set()
        with safe_open(os.path.join(out, VLLM_WEIGHTS_FILE), framework="pt") as f:
            assert set(f.keys()) == keys
            assert f.get_slice("lm_heads.0.weight").get_shape() == [len(cols) if kept else V, H]
            if kept:
                assert f.get_tensor("token_map").tolist() == vocab
                assert f.get_slice("token_map").get_dtype() == "I64"
        engine = _vllm_logits(out, x)
        torch.testing.assert_close(engine[..., cols], ours)
        if kept:  # vLLM masks the rest with -inf; we keep the head vocabulary
            assert torch.isinf(engine).sum() == K * 5 * (V - len(vocab))
            assert back.config.head_vocab == vocab
            torch.testing.assert_close(back(x), ours)
        else:  # logit 0 outside the head vocabulary
            assert not engine[..., others].any() and back.config.head_vocab is None
            torch.testing.assert_close(back(x)[..., cols], ours)
            assert not back(x)[..., others].any()
    else:
        assert set(cfg) == TGI_CONFIG_FIELDS and "architectures" not in cfg
        assert TRTLLM_CONFIG_FIELDS <= set(cfg) and MEDUSA1_CONFIG_FIELDS == set(cfg)
        assert [cfg["medusa_num_heads"], cfg["medusa_num_layers"], cfg["base_model_name_or_path"]] == [
            K,
            L,
            base_path,
        ]
        weights = {
            "tgi": TGI_WEIGHTS_FILE,
            "trtllm": TRTLLM_WEIGHTS_FILES[1],
            "medusa1": MEDUSA1_WEIGHTS_FILE,
        }[fmt]
        extra = ["medusa_choices.json"] if fmt in ("trtllm", "medusa1") else []
        assert sorted(os.listdir(out)) == sorted(["README.md", "config.json", weights, *extra])
        state = (
            torch.load(os.path.join(out, weights), weights_only=True)
            if weights.endswith(".pt")
            else load_file(os.path.join(out, weights))
        )
        keys = {t.format(k=k, l=j, L=L) for k in range(K) for j in range(L) for t in ORIGINAL_KEYS}
        assert set(state) == keys and all(state[f"{k}.{L}.weight"].shape == (V, H) for k in range(K))
        engine = _original_logits(out, fmt, x)
        torch.testing.assert_close(engine[..., cols], ours)
        assert not engine[..., others].any()  # logit 0 outside the head vocabulary
        assert back.config.head_vocab is None
        torch.testing.assert_close(back(x)[..., cols], ours)
    size = [w for w in warnings if w.startswith("shared_lm_head") and "MB" in w]
    assert len(size) == (layout == "shared_lm_head")
    readme = open(os.path.join(out, "README.md")).read()
    assert all(w in readme for w in warnings)


def test_trtllm_and_medusa1_carry_the_static_tree(tmp_path, base):
    from infer.decode.single import DEFAULT_CHOICES
    from infer.draft.calibration import Calibration
    from infer.draft.tree import sparse_tree_from_accuracies

    _heads(tmp_path / "heads", base[0], "own_lm_head", L=1)
    export_heads(str(tmp_path / "heads"), "trtllm", str(tmp_path / "a"))
    choices = json.loads((tmp_path / "a" / "medusa_choices.json").read_text())
    assert choices == [list(c) for c in DEFAULT_CHOICES if len(c) <= K]  # no calibration beside the heads
    cal = Calibration.identity(K)
    cal.rank_accuracy = [[0.5, 0.2, 0.1], [0.4, 0.2, 0.1], [0.3, 0.1, 0.05]]
    cal.to_file(str(tmp_path / "heads" / "calibration.json"))
    export_heads(str(tmp_path / "heads"), "medusa1", str(tmp_path / "b"), tree_nodes=6)
    choices = json.loads((tmp_path / "b" / "medusa_choices.json").read_text())
    assert choices == [list(c) for c in sparse_tree_from_accuracies(cal.rank_accuracy, 6)]
    export_heads(str(tmp_path / "heads"), "trtllm", str(tmp_path / "c"), medusa_choices="[[0], [1], [0, 0]]")
    assert json.loads((tmp_path / "c" / "medusa_choices.json").read_text()) == [[0], [1], [0, 0]]
    readme = (tmp_path / "c" / "README.md").read_text()
    assert "--num_medusa_heads 3" in readme and "--speculative_decoding_mode medusa" in readme
    assert "medusa_choices.json" in readme and "--max_medusa_token_len 63" in readme
    with pytest.raises(ExportError, match="3 deep|only 3"):
        export_heads(
            str(tmp_path / "heads"),
            "trtllm",
            str(tmp_path / "d"),
            medusa_choices=[[0], [0, 0], [0, 0, 0], [0, 0, 0, 0]],
        )
    with pytest.raises(ExportError, match="prefix"):
        export_heads(str(tmp_path / "heads"), "trtllm", str(tmp_path / "d"), medusa_choices=[[0, 1]])
    with pytest.raises(ExportError, match="no tree"):
        export_heads(str(tmp_path / "heads"), "vllm", str(tmp_path / "d"), medusa_choices=[[0]])
    assert not (tmp_path / "d").exists()


def test_shared_lm_head_is_read_from_the_checkpoint_alone(tmp_path, monkeypatch):
    """A tied base stores only the input embedding: it is found by name, without loading the model."""
    from transformers import AutoModelForCausalLM

    import infer.model.base
    from tests.tiny import tiny_config

    config = tiny_config("llama", vocab_size=V, hidden_size=H, layers=1)
    config.tie_word_embeddings = True
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_config(config).eval()
    model.save_pretrained(tmp_path / "tied")
    with safe_open(str(tmp_path / "tied" / "model.safetensors"), framework="pt") as f:
        assert "lm_head.weight" not in set(f.keys())

    def no_full_load(*args, **kwargs):
        raise AssertionError("the base model was loaded")

    monkeypatch.setattr(infer.model.base, "load_base_model", no_full_load)
    heads = _heads(tmp_path / "heads", str(tmp_path / "tied"), "shared_lm_head")
    export_heads(str(tmp_path / "heads"), "tgi", str(tmp_path / "out"))
    x = torch.randn(4, H)
    torch.testing.assert_close(
        MedusaHeads.from_pretrained(str(tmp_path / "out"))(x), heads(x, model.get_output_embeddings())
    )
    small = tmp_path / "small"
    tiny_model("llama", vocab_size=64, hidden_size=H, layers=1).save_pretrained(small)
    with pytest.raises(ExportError, match=r"lm_head of shape \(64, 32\)"):
        export_heads(str(tmp_path / "heads"), "vllm", str(tmp_path / "x"), base_model=str(small))


def test_shared_lm_head_falls_back_to_loading_the_base_model(tmp_path, monkeypatch):
    import train.export
    from tests.tiny import tiny_tokenizer

    model = tiny_model("llama", vocab_size=V, hidden_size=H, layers=1, seed=2)
    model.save_pretrained(tmp_path / "base")
    tiny_tokenizer().save_pretrained(tmp_path / "base")

    def unknown_layout(*args, **kwargs):
        raise KeyError("weight_map")

    monkeypatch.setattr(train.export, "_read_output_embedding", unknown_layout)
    heads = _heads(tmp_path / "heads", str(tmp_path / "base"), "shared_lm_head", VOCAB)
    export_heads(str(tmp_path / "heads"), "vllm", str(tmp_path / "out"), token_map=True)
    x = torch.randn(4, H)
    torch.testing.assert_close(
        MedusaHeads.from_pretrained(str(tmp_path / "out"))(x), heads(x, model.get_output_embeddings())
    )


# ---------------------------------------------------------------------- refusals
def test_sequential_heads_are_refused_in_every_format(tmp_path, base):
    _heads(tmp_path / "seq", base[0], "own_lm_head", L=1, head_type="sequential")
    for fmt in FORMATS:
        with pytest.raises(ExportError, match="head_type 'sequential'.*token embeddings of the draft path"):
            export_heads(str(tmp_path / "seq"), fmt, str(tmp_path / fmt))
        assert not (tmp_path / fmt).exists()


def test_medusa1_refuses_distinct_blocks_and_points_to_tgi(tmp_path, base):
    _heads(tmp_path / "heads", base[0], "own_lm_head", L=2)
    with pytest.raises(ExportError, match=r"ONE block.*--format tgi"):
        export_heads(str(tmp_path / "heads"), "medusa1", str(tmp_path / "out"))
    export_heads(str(tmp_path / "heads"), "tgi", str(tmp_path / "out"))  # TGI keeps them


def test_existing_out_is_refused_unless_force(tmp_path, base):
    _heads(tmp_path / "heads", base[0], "own_lm_head")
    out = tmp_path / "out"
    out.mkdir()
    export_heads(str(tmp_path / "heads"), "vllm", str(out))  # an empty folder is fine
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(ExportError, match="--force"):
        export_heads(str(tmp_path / "heads"), "tgi", str(out))
    assert (out / "mine.txt").read_text() == "keep me"
    export_heads(str(tmp_path / "heads"), "tgi", str(out), force=True)
    assert sorted(os.listdir(out)) == ["README.md", "config.json", TGI_WEIGHTS_FILE]
    with pytest.raises(ExportError, match="heads folder"):
        export_heads(str(tmp_path / "heads"), "vllm", str(tmp_path / "heads"), force=True)
    with pytest.raises(ExportError, match="heads folder"):
        export_heads(str(tmp_path / "heads"), "vllm", str(tmp_path), force=True)
    assert MedusaHeads.from_pretrained(str(tmp_path / "heads")).num_heads == K
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]  # no temporary folder left
    # --force replaces earlier exports only, never a folder of something else
    other = tmp_path / "project"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match="not an earlier export"):
        export_heads(str(tmp_path / "heads"), "vllm", str(other), force=True)
    assert (other / "notes.txt").read_text() == "keep me"
    # every exported file is readable by others (a server running as another user)
    old = os.umask(0o022)
    try:
        export_heads(str(tmp_path / "heads"), "tgi", str(out), force=True)
    finally:
        os.umask(old)
    assert {oct(os.stat(out / n).st_mode & 0o777) for n in os.listdir(out)} == {"0o644"}


def test_a_failed_write_leaves_nothing(tmp_path, base, monkeypatch, capsys):
    """A full disk, as safetensors reports it (a SafetensorError, neither an OSError nor a RuntimeError): an OSError
    naming the file, the previous export untouched, nothing half-written; the CLI says so in one line, status 2."""
    import errno

    import safetensors.torch
    from safetensors import SafetensorError

    import train.export

    _heads(tmp_path / "heads", base[0], "own_lm_head")
    export_heads(str(tmp_path / "heads"), "vllm", str(tmp_path / "out"))
    before = sorted(os.listdir(tmp_path / "out"))

    def disk_full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "serialize_file", disk_full)
    with pytest.raises(OSError, match="No space left on device") as failed:
        export_heads(str(tmp_path / "heads"), "tgi", str(tmp_path / "out"), force=True)
    assert failed.value.errno == errno.ENOSPC
    assert failed.value.filename == str(tmp_path / "out" / "medusa_lm_head.safetensors")
    assert sorted(os.listdir(tmp_path / "out")) == before  # the previous export is untouched
    assert sorted(os.listdir(tmp_path)) == ["heads", "out"]
    # the command line says so in one line (it printed a traceback)
    code = train.export.main(
        [str(tmp_path / "heads"), "--format", "tgi", "--out", str(tmp_path / "new"), "--force"]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: cannot write the export") and err.count("\n") == 1, err
    assert "No space left on device" in err and sorted(os.listdir(tmp_path)) == ["heads", "out"]


EXPORT_UNDER_A_LIMIT = """
import resource, signal, sys
import train.export

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing us
resource.setrlimit(resource.RLIMIT_FSIZE, (20000, resource.RLIM_INFINITY))  # the weights file is larger
sys.exit(train.export.main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_real_write_failure_is_one_line(tmp_path, base):
    """A real failed write (a file-size limit: EFBIG, through safetensors' Rust writer and torch.save as ENOSPC
    would be): exit status 2, one ``error:`` line naming the file, nothing left behind."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=root, OMP_NUM_THREADS="1")
    _heads(tmp_path / "heads", base[0], "own_lm_head", L=1)  # medusa1 takes one block per head
    for fmt, weights in (
        ("tgi", TGI_WEIGHTS_FILE),
        ("medusa1", MEDUSA1_WEIGHTS_FILE),
    ):  # safetensors, torch.save
        cmd = [sys.executable, "-c", EXPORT_UNDER_A_LIMIT, str(tmp_path / "heads"), "--format", fmt]
        cmd += ["--out", str(tmp_path / "out")]
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, proc.stderr[-3000:]
        errors = [line for line in proc.stderr.splitlines() if not line.startswith("warning: ")]
        assert len(errors) == 1 and errors[0].startswith("error: cannot write the export"), proc.stderr
        assert str(tmp_path / "out" / weights) in errors[0], errors[0]
        assert sorted(os.listdir(tmp_path)) == ["heads"]


def test_a_token_map_export_exports_again(tmp_path, base):
    """Own projections loaded back from a token_map export (no rows outside the head vocabulary) export to every
    format with the head vocabulary's logits; --token-map is vLLM's alone."""
    _heads(tmp_path / "heads", base[0], "own_lm_head", VOCAB)
    export_heads(str(tmp_path / "heads"), "vllm", str(tmp_path / "vllm"), token_map=True)
    x = torch.randn(2, H)
    ours = MedusaHeads.from_pretrained(str(tmp_path / "heads"))(x)
    export_heads(str(tmp_path / "vllm"), "tgi", str(tmp_path / "tgi"))
    torch.testing.assert_close(MedusaHeads.from_pretrained(str(tmp_path / "tgi"))(x)[..., VOCAB], ours)
    export_heads(str(tmp_path / "vllm"), "vllm", str(tmp_path / "again"), token_map=True)
    torch.testing.assert_close(MedusaHeads.from_pretrained(str(tmp_path / "again"))(x), ours)
    with pytest.raises(ExportError, match="--token-map: only vLLM"):
        export_heads(str(tmp_path / "heads"), "tgi", str(tmp_path / "t2"), token_map=True)


def test_shared_heads_without_a_base_model_are_refused(tmp_path):
    _heads(tmp_path / "heads", "", "shared_lm_head")
    with pytest.raises(ExportError, match="--base-model"):
        export_heads(str(tmp_path / "heads"), "vllm", str(tmp_path / "out"))


# ---------------------------------------------------------------------- vLLM checkpoints made elsewhere
def test_loader_reads_vllm_checkpoints_as_vllm_does(tmp_path):
    """No bias (medusa_fc_bias absent), a "medusa_heads." prefix, a renamed head count, one original_lm_head
    stored with all V rows and a token_map (vLLM slices the rows)."""
    g = torch.Generator().manual_seed(0)
    L, tm = 2, torch.tensor([9, 3, 70, 1])
    state = {
        f"medusa_heads.blocks.{k}.layers.{j}.weight": torch.randn(H, H, generator=g) * 0.1
        for k in range(K)
        for j in range(L)
    }
    state["medusa_heads.lm_heads.0.weight"] = torch.randn(V, H, generator=g)
    state["token_map"] = tm
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "model_type": "medusa",
                "medusa_num_heads": K,
                "num_hidden_layers": L,
                "hidden_size": H,
                "vocab_size": V,
                "truncated_vocab_size": 4,
                "original_lm_head": True,
            }
        )
    )
    save_file(state, str(tmp_path / "model.safetensors"))
    heads = MedusaHeads.from_pretrained(str(tmp_path))
    assert heads.config.head_vocab == tm.tolist() and heads.config.layout == "own_lm_head"
    x = torch.randn(3, H)
    torch.testing.assert_close(heads(x), _vllm_logits(str(tmp_path), x)[..., tm])
    cfg = json.loads((tmp_path / "config.json").read_text())
    del state["token_map"]
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(HeadsError, match="no token_map"):
        MedusaHeads.from_pretrained(str(tmp_path))
    cfg["truncated_vocab_size"] = V  # no truncation: the full rows are the projection
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    torch.testing.assert_close(MedusaHeads.from_pretrained(str(tmp_path))(x), _vllm_logits(str(tmp_path), x))


# ---------------------------------------------------------------------- CLI
def test_cli(tmp_path, base, capsys):
    _heads(tmp_path / "heads", base[0], "shared_lm_head", VOCAB, L=1)
    rc = main(
        [
            str(tmp_path / "heads"),
            "--format",
            "trtllm",
            "--out",
            str(tmp_path / "out"),
            "--base-model",
            base[0],
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0 and "medusa_lm_head.safetensors" in captured.out and "medusa_choices.json" in captured.out
    assert captured.err.count("warning: ") == 2
    rc = main([str(tmp_path / "heads"), "--format", "vllm", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and re.fullmatch(r"error: .*--force.*\n", err)
    _heads(tmp_path / "seq", base[0], "own_lm_head", L=1, head_type="sequential")
    rc = main([str(tmp_path / "seq"), "--format", "tgi", "--out", str(tmp_path / "seq_out")])
    err = capsys.readouterr().err
    assert rc == 2 and re.fullmatch(r"error: [^\n]*head_type 'sequential'[^\n]*\n", err)
    rc = main(
        [
            str(tmp_path / "heads"),
            "--format",
            "medusa1",
            "--out",
            str(tmp_path / "m1"),
            "--medusa-choices",
            "[[0",
        ]
    )
    assert rc == 2 and capsys.readouterr().err.startswith("error: --medusa-choices is not JSON")
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "heads"), "--format", "onnx", "--out", str(tmp_path / "x")])
    assert e.value.code == 2


def test_own_heads_for_another_base_are_refused(tmp_path, base):
    """Heads with own projections name their base only; heads of another size than that base are refused."""
    _heads(tmp_path / "heads", base[0], "own_lm_head", L=1)
    small = tmp_path / "small"
    tiny_model("llama", vocab_size=64, hidden_size=H, layers=1).save_pretrained(small)
    with pytest.raises(ExportError, match=r"do not fit the base model .*vocabulary 64"):
        export_heads(str(tmp_path / "heads"), "tgi", str(tmp_path / "x"), base_model=str(small))
    assert not os.path.exists(tmp_path / "x")
    export_heads(str(tmp_path / "heads"), "tgi", str(tmp_path / "y"))  # the base they name fits
