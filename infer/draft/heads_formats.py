"""The heads' file formats beyond our own: reading (FasterDecoding's Medusa-1 layout, vLLM's Medusa draft model) and
writing (vLLM; TGI / TensorRT-LLM / Medusa-1), in one place so that a format's names live once.

Readers -> :class:`.heads.MedusaHeads` (what ``MedusaHeads.from_pretrained`` dispatches to): :func:`load_medusa1`,
:func:`load_vllm_medusa`. Writers -> ``{file name: content}`` for ``train.export`` to write: :func:`vllm_files`,
:func:`original_files`; a writer takes the heads' config, a ``projection(k)`` [V, H] and a ``block(k, layer, name)``
tensor source, and reports what the format cannot hold through ``warn``. Which engine reads which names, and what each
format holds: ``train/export.py``'s docstring.
"""

from __future__ import annotations

import json
import os
import re

import torch
from safetensors.torch import load_file

from .heads import CONFIG_NAME, WEIGHTS_NAME, HeadsError, MedusaConfig, MedusaHeads

MEDUSA_PT = "medusa_lm_head.pt"
MEDUSA_ST = "medusa_lm_head.safetensors"
MEDUSA1_FIXED_HEADS = 5  # FasterDecoding MedusaModelABC.from_pretrained sets medusa_num_heads = 5 (a TODO)
CHOICES_NAME = "medusa_choices.json"
# what vLLM 0.32 needs to load the token_map layout (its Medusa load_weights does not report token_map as loaded)
VLLM_TOKEN_MAP_FLAG = "--model-loader-extra-config '{\"enable_weights_track\": false}'"


# ---------------------------------------------------------------------- reading
MEDUSA1_FILES = (MEDUSA_ST, MEDUSA_PT)


def load_medusa1(folder: str) -> MedusaHeads:
    """FasterDecoding Medusa-1: keys ``{h}.{l}.linear.weight/bias`` and ``{h}.{L}.weight`` (own projections).

    Its config may list fewer heads than the file holds (their released checkpoints say 3 but store 5): the
    file is the truth, and all heads it holds are loaded.
    """
    with open(os.path.join(folder, CONFIG_NAME)) as f:
        raw = json.load(f)
    for name in MEDUSA1_FILES:
        path = os.path.join(folder, name)
        if os.path.exists(path):
            break
    else:
        raise HeadsError(f"{folder}: Medusa-1 config but neither of {MEDUSA1_FILES}")
    if path.endswith(".safetensors"):
        state = load_file(path)
    else:
        try:  # weights only: a pickle that would run code or build objects is refused, never executed
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            kind = (
                "holds pickled objects other than tensors"
                if "Unpickl" in type(e).__name__
                else "is unreadable"
            )
            raise HeadsError(
                f"{path} {kind} and was not loaded ({type(e).__name__}); a heads file holds tensors only. "
                "Convert trusted heads to .safetensors, or use heads from a source you trust."
            ) from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise HeadsError(f"{path}: expected a dict of tensors (the Medusa-1 layout)")
    pat = re.compile(r"^(\d+)\.(\d+)\.(linear\.weight|linear\.bias|weight)$")
    heads_idx, layers_idx = set(), set()
    for key in state:
        m = pat.match(key)
        if not m:
            raise HeadsError(f"{path}: unexpected key {key!r} for the Medusa-1 layout")
        heads_idx.add(int(m.group(1)))
        if m.group(3).startswith("linear"):
            layers_idx.add(int(m.group(2)))
    K, L = len(heads_idx), len(layers_idx)
    proj = state[f"0.{L}.weight"]
    cfg = MedusaConfig(
        hidden_size=proj.shape[1],
        vocab_size=proj.shape[0],
        medusa_num_heads=K,
        medusa_num_layers=L,
        layout="own_lm_head",
        base_model_name_or_path=raw.get("base_model_name_or_path", ""),
    )
    heads = MedusaHeads(cfg)
    ours = {}
    for h in range(K):
        for layer in range(L):
            ours[f"blocks.{h}.{layer}.linear.weight"] = state[f"{h}.{layer}.linear.weight"]
            ours[f"blocks.{h}.{layer}.linear.bias"] = state[f"{h}.{layer}.linear.bias"]
        ours[f"lm_heads.{h}.weight"] = state[f"{h}.{L}.weight"]
    heads.load_state_dict(ours, strict=True)
    return heads


# ---------------------------------------------------------------------- vLLM's Medusa layout
VLLM_MODEL_TYPE = "medusa"
# vLLM's MedusaConfig defaults (vllm/transformers_utils/configs/medusa.py), used where a config omits a field.
_VLLM_DEFAULTS = {"hidden_size": 4096, "vocab_size": 32001, "num_heads": 5, "num_hidden_layers": 1}
_VLLM_KEY = re.compile(
    r"^(?:blocks\.(\d+)\.layers\.(\d+)\.(weight|bias)|lm_heads\.(\d+)\.weight|lm_head\.weight|token_map)$"
)


def read_vllm_config(raw: dict) -> dict:
    """The config as vLLM's ``MedusaConfig.from_pretrained`` reads it: every key holding "num" and "heads" becomes
    ``num_heads``, every other key holding "num" and "layers" becomes ``num_hidden_layers`` (last one wins)."""
    cfg = dict(raw)
    for key in list(cfg):
        if "num" in key and "heads" in key:
            cfg["num_heads"] = cfg.pop(key)
        elif "num" in key and "layers" in key:
            cfg["num_hidden_layers"] = cfg.pop(key)
    return {**_VLLM_DEFAULTS, **cfg}


def load_vllm_medusa(folder: str, raw: dict | None = None) -> MedusaHeads:
    """vLLM's Medusa draft model (``vllm/model_executor/models/medusa.py``), loaded as own-projection heads.

    Config (``model_type: medusa``): ``num_heads``, ``num_hidden_layers``, ``hidden_size``, ``vocab_size``,
    ``truncated_vocab_size``, ``medusa_fc_bias`` (blocks without bias when false, as vLLM builds them),
    ``original_lm_head`` (one projection shared by all heads, stored as ``lm_heads.0.weight``). Weights (every
    ``*.safetensors`` of the folder, an optional ``medusa_heads.`` prefix stripped, as vLLM does):
    ``blocks.{k}.layers.{l}.weight|bias``, ``lm_heads.{k}.weight`` and, when ``truncated_vocab_size <
    vocab_size``, ``token_map`` (row i of a truncated projection scores token ``token_map[i]``). ``token_map``
    becomes ``head_vocab`` (same order); truncated projections are placed at those rows of a ``[V, H]`` projection
    whose other rows stay zero (never read: the head vocabulary restricts the logits to ``token_map``).
    """
    if raw is None:
        with open(os.path.join(folder, CONFIG_NAME)) as f:
            raw = json.load(f)
    cfg = read_vllm_config(raw)
    try:
        K, L = int(cfg["num_heads"]), int(cfg["num_hidden_layers"])
        H, V = int(cfg["hidden_size"]), int(cfg["vocab_size"])
        T = int(cfg.get("truncated_vocab_size") or V)
    except (TypeError, ValueError) as e:
        raise HeadsError(f"{folder}: bad vLLM Medusa config ({e})") from None
    fc_bias, shared = bool(cfg.get("medusa_fc_bias", False)), bool(cfg.get("original_lm_head", False))
    files = sorted(n for n in os.listdir(folder) if n.endswith(".safetensors"))
    if not files:
        raise HeadsError(f"{folder}: vLLM Medusa config (model_type medusa) but no *.safetensors weights")
    state: dict[str, torch.Tensor] = {}
    for name in files:
        try:
            part = load_file(os.path.join(folder, name))
        except Exception as e:
            raise HeadsError(f"{folder}/{name}: not a readable safetensors file ({e})") from None
        for key, tensor in part.items():
            key = key.replace("medusa_heads.", "")
            if not _VLLM_KEY.match(key):
                raise HeadsError(f"{folder}/{name}: unexpected key {key!r} for vLLM's Medusa layout")
            state[key] = tensor
    token_map = state.pop("token_map", None)
    if T > V or T < 1:
        raise HeadsError(f"{folder}: truncated_vocab_size {T} must be in [1, vocab_size {V}]")
    if T == V:
        token_map = None  # vLLM only reads token_map when the vocabulary is truncated
    elif token_map is None:
        raise HeadsError(
            f"{folder}: truncated_vocab_size {T} < vocab_size {V} but the weights hold no token_map"
        )
    else:
        if token_map.dim() != 1 or token_map.numel() != T or token_map.is_floating_point():
            raise HeadsError(
                f"{folder}: token_map must be {T} integer token ids, got {tuple(token_map.shape)}"
            )
        token_map = token_map.long()
        if int(token_map.min()) < 0 or int(token_map.max()) >= V:
            raise HeadsError(f"{folder}: token_map holds token ids outside [0, vocab_size {V})")

    def take(key: str, shape: tuple[int, ...]) -> torch.Tensor:
        if key not in state:
            raise HeadsError(f"{folder}: vLLM Medusa weights miss {key!r}")
        if tuple(state[key].shape) != shape:
            raise HeadsError(f"{folder}: {key} has shape {tuple(state[key].shape)}, config says {shape}")
        return state[key]

    ours: dict[str, torch.Tensor] = {}
    for k in range(K):
        for layer in range(L):
            weight = take(f"blocks.{k}.layers.{layer}.weight", (H, H))
            ours[f"blocks.{k}.{layer}.linear.weight"] = weight
            bias = (
                take(f"blocks.{k}.layers.{layer}.bias", (H,))
                if fc_bias
                else torch.zeros(H, dtype=weight.dtype)
            )
            ours[f"blocks.{k}.{layer}.linear.bias"] = bias
    for k in range(K):
        if shared:
            key = "lm_heads.0.weight" if "lm_heads.0.weight" in state else "lm_head.weight"
        else:
            key = f"lm_heads.{k}.weight"
        rows = state.get(key)
        if rows is None:
            raise HeadsError(f"{folder}: vLLM Medusa weights miss {key!r}")
        if tuple(rows.shape) == (V, H):
            full = rows
        elif token_map is not None and tuple(rows.shape) == (T, H):
            full = torch.zeros(V, H, dtype=rows.dtype)
            full[token_map] = rows
        else:
            raise HeadsError(f"{folder}: {key} has shape {tuple(rows.shape)}, expected {(V, H)} or {(T, H)}")
        ours[f"lm_heads.{k}.weight"] = full  # load_state_dict copies: a shared projection is not aliased
    config = MedusaConfig(
        hidden_size=H,
        vocab_size=V,
        medusa_num_heads=K,
        medusa_num_layers=L,
        layout="own_lm_head",
        base_model_name_or_path=str(cfg.get("base_model_name_or_path") or ""),
        head_vocab=token_map.tolist() if token_map is not None else None,
    )
    heads = MedusaHeads(config)
    heads.load_state_dict(ours, strict=True)
    return heads


# ---------------------------------------------------------------------- writing
def vllm_files(
    cfg, base_name, projection, block, shared: bool, keep_map: bool, mb_per_row: float, warn
) -> dict[str, object]:
    """vLLM: config.json + model.safetensors. A shared lm_head is stored once (original_lm_head); with
    ``keep_map`` a head vocabulary is kept as truncated projection rows + token_map, else the projection covers the
    full vocabulary (rows outside the head vocabulary are zero: see :func:`export_heads`)."""
    K, L = cfg.medusa_num_heads, cfg.medusa_num_layers
    rows = torch.tensor(cfg.head_vocab, dtype=torch.long) if keep_map else None
    state = {
        f"blocks.{k}.layers.{layer}.{name}": block(k, layer, name)
        for k in range(K)
        for layer in range(L)
        for name in ("weight", "bias")
    }
    for k in range(1 if shared else K):
        w = projection(k)
        state[f"lm_heads.{k}.weight"] = (w[rows] if rows is not None else w).contiguous()
    if rows is not None:
        state["token_map"] = rows
    if shared:
        n = state["lm_heads.0.weight"].shape[0]
        warn(
            f"shared_lm_head: vLLM's Medusa cannot read the base model's lm_head, so one copy of it ({n} rows, "
            f"{n * mb_per_row:.1f} MB) is stored as original_lm_head (lm_heads.0.weight), shared by all heads"
        )
    elif rows is not None:
        warn(
            "own projections with a reduced head vocabulary are written as per-head truncated lm_heads + token_map, "
            "which vLLM loads where it builds each lm_head with truncated_vocab_size (e.g. commit 09cddad8); newer "
            "vLLM builds per-head lm_heads with the full vocab_size, honours token_map only with original_lm_head, "
            "and fails to load these (AssertionError in VocabParallelEmbedding.weight_loader)"
        )
    if keep_map:
        warn(
            f"token_map layout: vLLM 0.32 loads it only with {VLLM_TOKEN_MAP_FLAG} (its Medusa load_weights does "
            "not report token_map as loaded)"
        )
    truncated = len(rows) if rows is not None else cfg.vocab_size
    return {CONFIG_NAME: vllm_config(cfg, base_name, shared, truncated), WEIGHTS_NAME: state}


def original_files(
    fmt: str, cfg, base_name, projection, block, shared: bool, mb_per_row: float, warn
) -> dict[str, object]:
    """tgi / trtllm / medusa1: FasterDecoding's config + medusa_lm_head with a full [V, H] projection per head."""
    K, L, V = cfg.medusa_num_heads, cfg.medusa_num_layers, cfg.vocab_size
    if shared:
        warn(
            f"shared_lm_head: {fmt} holds one projection per head, so the base lm_head is copied into each of the "
            f"{K} heads ({K} x {V * mb_per_row:.1f} MB = {K * V * mb_per_row:.1f} MB)"
        )
    state = {}
    for k in range(K):
        for layer in range(L):
            state[f"{k}.{layer}.linear.weight"] = block(k, layer, "weight")
            state[f"{k}.{layer}.linear.bias"] = block(k, layer, "bias")
        # a tensor of its own per head: safetensors refuses tensors that share storage
        state[f"{k}.{L}.weight"] = projection(k).clone()
    if fmt == "medusa1" and K != MEDUSA1_FIXED_HEADS:
        what = (
            f"heads {K}..{MEDUSA1_FIXED_HEADS - 1} are left untrained, so pass the {CHOICES_NAME} written here "
            f"(depth <= {K}), not its default trees (depth 4)"
            if K < MEDUSA1_FIXED_HEADS
            else f"only the first {MEDUSA1_FIXED_HEADS} are loaded"
        )
        warn(
            f"FasterDecoding's MedusaModel.from_pretrained builds {MEDUSA1_FIXED_HEADS} heads whatever "
            f"medusa_num_heads says (medusa_model.py); with {K} heads, {what}"
        )
    config = {"medusa_num_heads": K, "medusa_num_layers": L, "base_model_name_or_path": base_name}
    return {CONFIG_NAME: config, MEDUSA_PT if fmt == "medusa1" else MEDUSA_ST: state}


def vllm_config(cfg, base_name: str, original_lm_head: bool, truncated: int) -> dict:
    """vLLM's MedusaConfig fields. No other key may hold "num" with "heads" or "layers": vLLM's from_pretrained
    renames every such key to num_heads / num_hidden_layers."""
    return {
        "architectures": ["MedusaModel"],
        "model_type": "medusa",
        "hidden_size": cfg.hidden_size,
        "vocab_size": cfg.vocab_size,
        "num_heads": cfg.medusa_num_heads,
        "num_hidden_layers": cfg.medusa_num_layers,
        "max_paths": 64,  # vLLM's defaults; its Medusa drafts top-1 tokens and reads neither
        "topk": 10,
        "truncated_vocab_size": truncated,
        "medusa_fc_bias": True,
        "original_lm_head": original_lm_head,
        "base_model_name_or_path": base_name,
    }
