"""Medusa heads: K small residual MLPs on the base model's last hidden state.

Head k (0-based) predicts the token at position t+k+2 from the hidden state at t (the base lm_head predicts t+1).
Each head is L residual blocks ``x + SiLU(W x + b)`` with distinct weights per layer, followed by a vocabulary
projection: either the head's own (``layout="own_lm_head"``, Medusa-1's layout, initialised from the base lm_head)
or the base model's lm_head, shared and frozen (``layout="shared_lm_head"``, a few MB on disk).

``head_type="sequential"`` (Hydra, arXiv 2402.05109): head k also reads the path it extends, the base model's frozen
input embeddings of the root token (t+1) and of the draft tokens at depths 1..k (t+2 .. t+k+1). Its blocks then
run on ``u = A_k [h; e_0; ...; e_k] + b`` (A_k starts as [I, 0, ..., 0]: an untrained sequential head equals a
Medusa head), so its probabilities are conditional on the path: P(token at depth k+1 | the path up to depth k).

On disk: ``config.json`` (see :class:`MedusaConfig`) + ``model.safetensors``. The original FasterDecoding
Medusa-1 layout (``medusa_lm_head.pt`` / ``.safetensors``) loads too, and so does vLLM's Medusa draft-model layout
(``model_type: medusa``): see :mod:`.heads_formats`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

import torch
from safetensors.torch import load_file, save_file
from torch import nn

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
LAYOUTS = ("shared_lm_head", "own_lm_head")
HEAD_TYPES = ("medusa", "sequential")


class HeadsError(ValueError):
    """Heads that cannot be loaded or do not match their base model."""


@dataclass
class MedusaConfig:
    hidden_size: int  # base model hidden size
    vocab_size: int  # base model vocabulary size
    medusa_num_heads: int = 4  # K: head k predicts token t+k+2
    medusa_num_layers: int = 1  # L: residual blocks per head
    layout: str = "shared_lm_head"  # "shared_lm_head" (frozen base lm_head) or "own_lm_head" (Medusa-1)
    base_model_name_or_path: str = ""  # Hub id of the base model (never a local path when pushed)
    base_model_revision: str | None = None  # base model revision the heads were trained against
    head_vocab: list[int] | None = field(default=None, repr=False)  # optional reduced candidate vocabulary
    head_type: str = "medusa"  # "medusa" (hidden state only) or "sequential" (+ embeddings of the path)
    model_type: str = "medusa_heads"

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise HeadsError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.head_type not in HEAD_TYPES:
            raise HeadsError(f"head_type must be one of {HEAD_TYPES}, got {self.head_type!r}")
        if self.medusa_num_heads < 1 or self.medusa_num_layers < 0:
            raise HeadsError("medusa_num_heads must be >= 1 and medusa_num_layers >= 0")
        if self.head_vocab is not None:
            bad = [t for t in self.head_vocab if not (isinstance(t, int) and 0 <= t < self.vocab_size)]
            if bad or len(set(self.head_vocab)) != len(self.head_vocab) or not self.head_vocab:
                raise HeadsError(
                    f"head_vocab must be distinct token ids in [0, {self.vocab_size}); bad: {bad[:5] or 'duplicates'}"
                )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> MedusaConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise HeadsError(f"unknown keys in heads config: {sorted(unknown)}")
        try:
            return cls(**d)
        except TypeError as e:  # a missing required key
            raise HeadsError(f"bad heads config: {e}") from e


class ResBlock(nn.Module):
    """x + SiLU(W x + b); W starts at zero so an untrained head equals its projection."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, hidden_size)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.act(self.linear(x))


class PathInput(nn.Module):
    """Sequential head k's input layer: [h; e_0; ...; e_k] [..., (k+2) H] -> [..., H], starting as u = h."""

    def __init__(self, hidden_size: int, num_tokens: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size * (num_tokens + 1), hidden_size)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        with torch.no_grad():
            self.linear.weight[:, :hidden_size].copy_(torch.eye(hidden_size))

    def forward(self, hidden: torch.Tensor, path_emb: torch.Tensor) -> torch.Tensor:
        """hidden [..., H], path_emb [..., k+1, H] -> [..., H]."""
        x = torch.cat([hidden, path_emb.flatten(-2)], -1)
        return self.linear(x.to(self.linear.weight.dtype))


class MedusaHeads(nn.Module):
    """K heads. ``forward(hidden, lm_head)`` -> logits ``[K, *hidden.shape[:-1], V]``.

    With the shared layout, pass the base model's output embedding as ``lm_head``; it is not part of this module's
    state dict. With ``config.head_vocab`` set, logits cover only that reduced vocabulary (``[..., V_head]``) and
    :meth:`to_full_vocab` maps indices back. Sequential heads also take ``path_emb`` [..., K, H] (the embeddings
    of the tokens t+1 .. t+K; head k reads the first k+1) in :meth:`features` / :meth:`forward`, or one head at a
    time through :meth:`head_logits` (the tree builder).
    """

    def __init__(self, config: MedusaConfig):
        super().__init__()
        self.config = config
        K, L, H, V = config.medusa_num_heads, config.medusa_num_layers, config.hidden_size, config.vocab_size
        self.blocks = nn.ModuleList([nn.Sequential(*[ResBlock(H) for _ in range(L)]) for _ in range(K)])
        if config.layout == "own_lm_head":
            self.lm_heads = nn.ModuleList([nn.Linear(H, V, bias=False) for _ in range(K)])
        else:
            self.lm_heads = None
        if config.head_type == "sequential":
            self.inputs = nn.ModuleList([PathInput(H, k + 1) for k in range(K)])
        else:
            self.inputs = None
        vocab = torch.tensor(config.head_vocab if config.head_vocab is not None else [], dtype=torch.long)
        self.register_buffer("head_vocab", vocab, persistent=False)

    @property
    def num_heads(self) -> int:
        return self.config.medusa_num_heads

    @property
    def sequential(self) -> bool:
        return self.inputs is not None

    def init_from_lm_head(self, lm_head: nn.Module) -> None:
        """Medusa-1 initialisation: each own projection starts as a copy of the base lm_head."""
        if self.lm_heads is not None:
            for proj in self.lm_heads:
                proj.weight.data.copy_(lm_head.weight.data.to(proj.weight.dtype))

    def features(self, hidden: torch.Tensor, path_emb: torch.Tensor | None = None) -> torch.Tensor:
        """[..., H] (+ path_emb [..., K, H] for sequential heads) -> [K, ..., H]: every head's residual blocks."""
        return torch.stack([self.head_features(k, hidden, path_emb) for k in range(self.num_heads)])

    def head_features(
        self, k: int, hidden: torch.Tensor, path_emb: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Head k: hidden [..., H] (+ path_emb [..., >= k+1, H]) -> [..., H]."""
        if self.inputs is not None:
            if path_emb is None or path_emb.shape[-2] < k + 1:
                raise HeadsError(f"sequential head {k} reads the embeddings of {k + 1} path tokens")
            hidden = self.inputs[k](hidden, path_emb[..., : k + 1, :])
        return self.blocks[k](hidden)

    def head_logits(
        self, k: int, hidden: torch.Tensor, lm_head: nn.Module | None, path_emb: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Head k alone: hidden [..., H] (+ path_emb [..., k+1, H]) -> logits [..., V or V_head]."""
        feats = self.head_features(k, hidden, path_emb)
        if self.lm_heads is not None:
            weight = self.lm_heads[k].weight
            weight = weight[self.head_vocab] if self.head_vocab.numel() else weight
        else:
            if lm_head is None:
                raise HeadsError("shared_lm_head layout: pass the base model's lm_head")
            weight = self._shared_weight(lm_head)
        return nn.functional.linear(feats.to(weight.dtype), weight)

    def forward(
        self, hidden: torch.Tensor, lm_head: nn.Module | None = None, path_emb: torch.Tensor | None = None
    ) -> torch.Tensor:
        feats = self.features(hidden, path_emb)  # [K, ..., H]
        shape = feats.shape
        if self.lm_heads is not None:
            weight = torch.stack([p.weight for p in self.lm_heads])  # [K, V, H]
            if self.head_vocab.numel():
                weight = weight[:, self.head_vocab]  # [K, V_head, H]
            flat = feats.reshape(shape[0], -1, shape[-1]).to(weight.dtype)  # [K, N, H]
            logits = torch.bmm(flat, weight.transpose(1, 2))  # [K, N, V]
        else:
            if lm_head is None:
                raise HeadsError("shared_lm_head layout: pass the base model's lm_head to forward()")
            weight = self._shared_weight(lm_head)  # [V or V_head, H]
            logits = nn.functional.linear(feats.reshape(-1, shape[-1]).to(weight.dtype), weight)
        return logits.reshape(*shape[:-1], logits.shape[-1])

    def _shared_weight(self, lm_head: nn.Module) -> torch.Tensor:
        """The base lm_head weight, restricted to the head vocabulary (sliced once, then cached)."""
        weight = lm_head.weight
        if not self.head_vocab.numel():
            return weight
        key = (weight.data_ptr(), weight.dtype, weight.device, weight._version)
        if getattr(self, "_sliced_key", None) != key:
            self._sliced = weight.detach()[self.head_vocab.to(weight.device)]
            self._sliced_key = key
        return self._sliced

    def to_full_vocab(self, idx: torch.Tensor) -> torch.Tensor:
        """Indices into the head vocabulary -> token ids of the base vocabulary."""
        return self.head_vocab[idx] if self.head_vocab.numel() else idx

    # ------------------------------------------------------------------ checkpoints
    def save_pretrained(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, CONFIG_NAME), "w") as f:
            json.dump(self.config.to_dict(), f, indent=2)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, os.path.join(path, WEIGHTS_NAME), metadata={"format": "pt"})

    @classmethod
    def from_pretrained(
        cls, name_or_path: str, revision: str | None = None, token: str | None = None
    ) -> MedusaHeads:
        """Load from a local folder or a Hub id; either our format or the original Medusa-1 layout."""
        folder = resolve_heads_path(name_or_path, revision=revision, token=token)
        cfg_path, weights = os.path.join(folder, CONFIG_NAME), os.path.join(folder, WEIGHTS_NAME)
        if not os.path.exists(cfg_path):
            raise HeadsError(f"{folder}: no {CONFIG_NAME}; not a heads folder")
        try:
            with open(cfg_path, encoding="utf-8") as f:
                raw = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise HeadsError(f"{cfg_path}: not a JSON heads config ({e})") from None
        if not isinstance(raw, dict):
            raise HeadsError(f"{cfg_path}: expected a JSON object, got {type(raw).__name__}")
        from .heads_formats import MEDUSA1_FILES, VLLM_MODEL_TYPE, load_medusa1, load_vllm_medusa

        has_medusa1_file = any(os.path.exists(os.path.join(folder, n)) for n in MEDUSA1_FILES)
        if raw.get("model_type") == VLLM_MODEL_TYPE and not has_medusa1_file:
            return load_vllm_medusa(folder, raw)
        is_medusa1 = raw.get("model_type") != "medusa_heads" and "hidden_size" not in raw
        if is_medusa1 and has_medusa1_file:
            return load_medusa1(folder)
        config = MedusaConfig.from_dict(raw)
        if not os.path.exists(weights):
            raise HeadsError(f"{folder}: no {WEIGHTS_NAME}")
        expected = _expected_shapes(config)
        try:  # the file's header first: a wrong config must not allocate its (maybe huge) module
            from safetensors import safe_open

            with safe_open(weights, framework="pt") as f:
                shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        except Exception as e:  # truncated or not safetensors at all
            raise HeadsError(f"{weights}: not a readable safetensors file ({e})") from None
        if shapes != expected:
            diff = sorted(set(shapes.items()) ^ set(expected.items()))[:4]
            raise HeadsError(f"{weights}: weights do not match {CONFIG_NAME} (first differences: {diff})")
        heads = cls(config)
        try:
            state = load_file(weights)
        except Exception as e:
            raise HeadsError(f"{weights}: not a readable safetensors file ({e})") from None
        missing, unexpected = heads.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise HeadsError(
                f"{folder}: weights do not match config (missing {missing}, unexpected {unexpected})"
            )
        return heads

    def check_base(self, model) -> None:
        """Fail clearly when the heads were built for another hidden size or vocabulary."""
        cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        lm_head = model.get_output_embeddings()
        vocab = lm_head.weight.shape[0] if lm_head is not None else cfg.vocab_size
        if cfg.hidden_size != self.config.hidden_size:
            raise HeadsError(
                f"heads expect hidden size {self.config.hidden_size}, base model has {cfg.hidden_size} "
                f"(heads were trained for {self.config.base_model_name_or_path or 'another model'})"
            )
        if vocab != self.config.vocab_size:
            raise HeadsError(
                f"heads expect a vocabulary of {self.config.vocab_size}, base model has {vocab} "
                f"(heads were trained for {self.config.base_model_name_or_path or 'another model'})"
            )


def _expected_shapes(config: MedusaConfig) -> dict[str, tuple[int, ...]]:
    """State-dict key -> shape of the heads ``config`` describes (computed, nothing allocated)."""
    K, L, H, V = config.medusa_num_heads, config.medusa_num_layers, config.hidden_size, config.vocab_size
    out = {}
    for k in range(K):
        for layer in range(L):
            out[f"blocks.{k}.{layer}.linear.weight"] = (H, H)
            out[f"blocks.{k}.{layer}.linear.bias"] = (H,)
        if config.layout == "own_lm_head":
            out[f"lm_heads.{k}.weight"] = (V, H)
        if config.head_type == "sequential":
            out[f"inputs.{k}.linear.weight"] = (H, (k + 2) * H)
            out[f"inputs.{k}.linear.bias"] = (H,)
    return out


def resolve_heads_path(name_or_path: str, revision: str | None = None, token: str | None = None) -> str:
    """A local folder as is; otherwise download the heads repo from the Hub (config + weights + calibration)."""
    if os.path.isdir(name_or_path):
        return name_or_path
    if os.path.exists(name_or_path) or name_or_path.startswith((".", "/")) or name_or_path.count("/") != 1:
        raise HeadsError(
            f"heads not found: {name_or_path!r} is neither a folder nor a Hub repo id (owner/name)"
        )
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(
            name_or_path,
            revision=revision,
            token=token,
            allow_patterns=["*.json", "*.safetensors", "medusa_lm_head.pt", "*.yaml", "*.md"],
        )
    except Exception as e:  # network, 404, auth: one clear message
        raise HeadsError(f"could not fetch heads {name_or_path!r} from the Hub: {e}") from e


# ---------------------------------------------------------------------- original Medusa-1 layout
