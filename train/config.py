"""Training recipes: YAML -> strict dataclass -> ``key=value`` overrides -> the resolved recipe.

Config flows one way::

    recipes/<name>.yaml --yaml.safe_load--> dict --Recipe.from_dict (strict)--> Recipe
                         --apply_overrides(["train.lr=3e-4", "max_steps=100"])--> Recipe --to_yaml--> recipe.yaml

Strict means: an unknown key is an error (with a suggestion), a value of the wrong type is an error (an int is
accepted for a float; "1e-3", which YAML 1.1 reads as a string, is accepted for a float). Override keys are dotted
(``train.lr``) or, when the name is unique across sections, bare (``lr``); values are parsed as YAML scalars or flow
lists (``[q_proj, v_proj]``) and checked against the field's type, so ``train.lr=abc`` fails before anything loads.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml

DEFAULT_MODEL = (
    "HuggingFaceTB/SmolLM2-135M-Instruct"  # the embedded default of infer/model/base.py (loads offline)
)
MODES = ("medusa1", "medusa2")
LAYOUTS = ("shared_lm_head", "own_lm_head")
DTYPES = ("float32", "bfloat16", "float16", "auto")  # auto: the faster on this machine, measured
MIXED_PRECISION = ("no", "bf16", "fp16")
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _short(value) -> str:
    """A value's repr cut short: a YAML alias bomb is a few hundred bytes that expand to gigabytes when printed."""
    import reprlib

    r = reprlib.Repr()
    r.maxlevel, r.maxlist, r.maxdict, r.maxstring, r.maxother = 2, 4, 4, 80, 80
    return r.repr(value)


class RecipeError(ValueError):
    """A recipe or override that does not fit the schema: unknown key, wrong type or bad value."""


@dataclass
class ModelConfig:
    name_or_path: str = DEFAULT_MODEL  # Hub id or local folder of the base model (a causal LM)
    revision: str | None = None  # Hub revision (branch, tag or commit) of the base model
    dtype: str = "float32"  # weights dtype of the base model: float32, bfloat16 or float16
    trust_remote_code: bool = False  # allow custom modelling code from the model repo


@dataclass
class DataConfig:
    path: str = "data/fastchat_dummy_conversation.json"  # ShareGPT / OpenAI-messages .json or .jsonl file
    template: str | None = None  # chat template: None = the tokenizer's own, or a name in data/templates
    max_length: int = 2048  # tokens per example (longer conversations are truncated)
    pack: bool = False  # concatenate conversations into max_length sequences (adds position_ids)
    skip_bad: bool = False  # skip (and count) malformed records instead of failing
    max_train_examples: int = 0  # use only the first N training examples after the split (0 = all)
    split: str = (
        "train"  # records tagged with another "split" (distilled files: train/calib/eval) are not used
    )
    eval_split: str = "eval"  # split of eval_data's tagged records used for evaluation
    calib_data: str | None = None  # conversations the heads never train on: calibrate on them after training
    calib_split: str = "calib"  # split of calib_data's tagged records used for calibration
    calib_max_examples: int = 200  # conversations used for calibration (0 = all)
    eval_data: str | None = None  # held-out file for per-head accuracy; None = split off eval_fraction
    eval_fraction: float = 0.02  # fraction of the data held out when eval_data is None (0 = no eval)
    max_eval_examples: int = 0  # evaluate on at most the first N held-out examples (0 = all)
    cache_dir: str | None = None  # where tokenised Arrow files are cached (None = no cache)
    num_proc: int = 1  # worker processes for tokenisation


@dataclass
class DistillConfig:
    enabled: bool = False  # first the base answers data.path's user turns itself (self-distillation)
    output: str | None = None  # the distilled JSONL (None = <output_dir>/distilled.jsonl), resumed and reused
    max_new_tokens: int = 256  # cap on each regenerated assistant turn
    batch_size: int = 16  # conversations generated together, per process
    temperature: float = 0.0  # 0 = greedy
    max_conversations: int = 0  # distill only the first N conversations of data.path (0 = all)


@dataclass
class HeadsConfig:
    medusa_num_heads: int = 4  # K: head k predicts the token at t+k+2
    medusa_num_layers: int = 1  # residual blocks per head
    layout: str = (
        "shared_lm_head"  # shared_lm_head (frozen base lm_head) or own_lm_head (Medusa-1, init from it)
    )
    head_type: str = (
        "medusa"  # medusa (hidden state only) or sequential (+ embeddings of the drafted path, Hydra)
    )
    decay: float = 0.8  # head k's loss weight is decay**k
    head_vocab_size: int = 0  # N > 0: heads score only the N most frequent training tokens (0 = all)


@dataclass
class Medusa2Config:
    lora_r: int = 16  # LoRA rank on the base (mode: medusa2)
    lora_alpha: int = 32  # LoRA scaling numerator (scale = alpha / r)
    lora_dropout: float = 0.05  # dropout on the LoRA input
    lora_target_modules: list[str] = field(
        default_factory=lambda: list(LORA_TARGETS)
    )  # module names to adapt
    heads_coefficient: float = 0.2  # weight of the heads loss next to the base's LM loss
    heads_warmup_steps: int = 100  # heads_coefficient ramps linearly from 0 over this many steps
    heads_lr_multiplier: float = 4.0  # heads learning rate = train.lr * this (LoRA uses train.lr)
    distill_weight: float = 0.0  # weight of KL(base without adapters || base with adapters); 0 = off


@dataclass
class TrainConfig:
    seed: int = 42  # seeds heads/LoRA init and the data order (resuming replays the same order)
    num_epochs: float = 1.0  # passes over the training data (ignored when max_steps > 0)
    max_steps: int = 0  # optimizer steps to run; 0 = derived from num_epochs
    per_device_batch_size: int = 8  # sequences per process per micro-batch
    gradient_accumulation_steps: int = 1  # micro-batches per optimizer step
    lr: float = 1e-3  # peak learning rate (after warm-up)
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW betas
    warmup_ratio: float = 0.1  # fraction of the steps spent warming the lr up linearly, then cosine to 0
    max_grad_norm: float = 1.0  # clip the global gradient norm (0 = no clipping)
    mixed_precision: str = "no"  # accelerate mixed precision: no, bf16 or fp16
    gradient_checkpointing: bool = False  # recompute base activations in backward (medusa2 memory saver)
    cache_features: bool = False  # medusa1: run the frozen base once, train the heads on cached hidden states
    features_dir: str | None = None  # where the feature cache lives; None = $MEDUSA_CACHE/features
    logits_dtype: str = "float32"  # dtype of the vocabulary projections in the loss: float32 or bfloat16
    eval_every: int = 0  # evaluate per-head accuracy every N steps (0 = only at the end)
    eval_batch_size: int = 8  # sequences per process per evaluation batch
    log_every: int = 10  # print/log the training loss every N steps
    stop_after_steps: int = (
        0  # debug: exit after this global step without a final save, as if killed (0 = off)
    )


@dataclass
class OutputConfig:
    output_dir: str = "outputs/medusa"  # checkpoint-{step}/, final/, log.jsonl go here
    save_every: int = 500  # write checkpoint-{step} every N steps (0 = only final/)
    save_total_limit: int = 2  # keep the newest N checkpoint-{step} folders (0 = keep all)
    resume: str = "auto"  # auto = latest complete checkpoint in output_dir if any; none; or a checkpoint path
    report_to: list[str] = field(default_factory=list)  # accelerate trackers, e.g. [tensorboard] or [wandb]
    project_name: str = "medusa"  # tracker project name
    push_to_hub: str | None = None  # Hub repo id (owner/name): push final/ in one commit after training
    hub_private: bool = False  # create that repo private
    hub_base_model: str | None = None  # base model's Hub id for the card, if name_or_path is a folder
    license: str | None = None  # license id written in the pushed model card's metadata (e.g. apache-2.0)
    export: list[str] = field(default_factory=list)  # after training: final/ in these formats (train.export)


@dataclass
class Recipe:
    mode: str = (
        "medusa1"  # medusa1: frozen base, heads only; medusa2: LoRA on the base trained with the heads
    )
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    heads: HeadsConfig = field(default_factory=HeadsConfig)
    medusa2: Medusa2Config = field(default_factory=Medusa2Config)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def __post_init__(self):
        _choice("mode", self.mode, MODES)
        _choice("model.dtype", self.model.dtype, DTYPES)
        _choice("heads.layout", self.heads.layout, LAYOUTS)
        _choice("heads.head_type", self.heads.head_type, ("medusa", "sequential"))
        _choice("train.mixed_precision", self.train.mixed_precision, MIXED_PRECISION)
        _choice("train.logits_dtype", self.train.logits_dtype, ("float32", "bfloat16"))
        positive = {
            "data.max_length": self.data.max_length,
            "heads.medusa_num_heads": self.heads.medusa_num_heads,
            "train.per_device_batch_size": self.train.per_device_batch_size,
            "train.gradient_accumulation_steps": self.train.gradient_accumulation_steps,
            "train.eval_batch_size": self.train.eval_batch_size,
            "train.log_every": self.train.log_every,
            "medusa2.lora_r": self.medusa2.lora_r,
            "distill.max_new_tokens": self.distill.max_new_tokens,
            "distill.batch_size": self.distill.batch_size,
        }
        for name, value in positive.items():
            if value < 1:
                raise RecipeError(f"{name} must be >= 1, got {value}")
        if not 0.0 <= self.data.eval_fraction < 1.0:
            raise RecipeError(f"data.eval_fraction must be in [0, 1), got {self.data.eval_fraction}")
        if not 0.0 <= self.train.warmup_ratio <= 1.0:
            raise RecipeError(f"train.warmup_ratio must be in [0, 1], got {self.train.warmup_ratio}")
        if len(self.train.adam_betas) != 2 or not all(0.0 <= b < 1.0 for b in self.train.adam_betas):
            raise RecipeError(f"train.adam_betas must be two numbers in [0, 1), got {self.train.adam_betas}")
        finite_positive = {"train.lr": self.train.lr}
        finite_non_negative = {
            "distill.temperature": self.distill.temperature,
            "distill.max_conversations": self.distill.max_conversations,
            "train.weight_decay": self.train.weight_decay,
            "train.max_grad_norm": self.train.max_grad_norm,
            "train.num_epochs": self.train.num_epochs,
            "heads.decay": self.heads.decay,
        }
        for name, value in finite_positive.items():
            if not (math.isfinite(value) and value > 0):
                raise RecipeError(f"{name} must be a finite number > 0, got {value}")
        for name, value in finite_non_negative.items():
            if not (math.isfinite(value) and value >= 0):
                raise RecipeError(f"{name} must be a finite number >= 0, got {value}")
        if self.train.max_steps < 0:
            raise RecipeError(f"train.max_steps must be >= 0 (0: use num_epochs), got {self.train.max_steps}")
        if self.train.max_steps <= 0 and self.train.num_epochs <= 0:
            raise RecipeError("set train.max_steps > 0 or train.num_epochs > 0")
        if self.mode == "medusa2" and self.train.cache_features:
            raise RecipeError("train.cache_features needs a frozen base: it works with mode: medusa1 only")
        for name in ("medusa_num_layers", "head_vocab_size"):
            if getattr(self.heads, name) < 0:
                raise RecipeError(f"heads.{name} must be >= 0")
        export_formats = ("vllm", "tgi", "trtllm", "medusa1")
        for fmt in self.output.export:
            _choice("output.export", fmt, export_formats)
        if self.output.export and self.heads.head_type == "sequential":
            raise RecipeError(
                "output.export: sequential heads read the draft path's embeddings, which no serving engine's "
                "Medusa layout holds; train Medusa heads (heads.head_type: medusa) to export"
            )
        if "medusa1" in self.output.export and self.heads.medusa_num_layers > 1:
            raise RecipeError(
                "output.export: medusa1 (FasterDecoding) shares one block across layers; with "
                "heads.medusa_num_layers > 1 export tgi or trtllm instead"
            )
        for name in ("save_every", "save_total_limit"):
            if getattr(self.output, name) < 0:
                raise RecipeError(f"output.{name} must be >= 0")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, raw: dict | None) -> Recipe:
        return _build(cls, raw or {}, "")

    @classmethod
    def from_yaml(cls, path: str, overrides: list[str] | None = None) -> Recipe:
        """A recipe file; a file that is not UTF-8 text, not YAML or does not fit the schema is a RecipeError
        naming it (and, for YAML, the line and column)."""
        raw = _read_yaml(path)
        if raw is not None and not isinstance(raw, dict):
            raise RecipeError(f"{path}: a recipe is a mapping of sections, got {type(raw).__name__}")
        raw = apply_overrides(raw or {}, overrides or [])
        try:
            return cls.from_dict(raw)
        except RecipeError as e:
            raise RecipeError(f"{path}: {e}") from None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self, header: str | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None, width=110)
        return (f"# {header}\n" if header else "") + text


def _read_yaml(path: str) -> Any:
    """A YAML file's content; RecipeError (one line, naming the file) for one that cannot be read, is not UTF-8
    text or is not YAML (with the line and column of the problem)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise RecipeError(f"{path}: cannot read it ({e.strerror or e})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise RecipeError(
            f"{path}: not UTF-8 text (byte 0x{data[e.start]:02x} at line {line}, column {column}); save it as UTF-8"
        ) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: not valid YAML ({_yaml_problem(e)})") from None


def _yaml_problem(error: yaml.YAMLError) -> str:
    """A YAML error in one line, its place first: "line 2, column 5: expected ',' or ']', but got ':' (while
    parsing a flow sequence that starts at line 1, column 8)"."""
    if not isinstance(error, yaml.MarkedYAMLError):
        return " ".join(str(error).split())
    mark = error.problem_mark or error.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    said = " ".join((error.problem or error.context or "invalid YAML").split())
    if error.context and error.problem:
        since = error.context_mark
        at = (
            f" that starts at line {since.line + 1}, column {since.column + 1}"
            if since and since != mark
            else ""
        )
        said += f" ({' '.join(error.context.split())}{at})"
    return where + said


def _choice(name: str, value: str, choices: tuple) -> None:
    if value not in choices:
        raise RecipeError(f"{name} must be one of {list(choices)}, got {_short(value)}")


# ---------------------------------------------------------------------- strict typing
def _fields(cls) -> dict[str, Any]:
    """Field name -> resolved type annotation."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _build(cls, raw: Any, where: str):
    if not isinstance(raw, dict):
        raise RecipeError(
            f"{where.rstrip('.') or 'recipe'}: expected a mapping, got {type(raw).__name__} {_short(raw)}"
        )
    types_ = _fields(cls)
    unknown = [k for k in raw if k not in types_]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), list(types_), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {sorted(types_)}"
        raise RecipeError(f"unknown key {where + str(key)!r}{hint}")
    kwargs = {k: _check(v, types_[k], where + k) for k, v in raw.items()}
    return cls(**kwargs)


def _check(value: Any, tp: Any, where: str) -> Any:
    """value, validated (and minimally coerced: int -> float, '1e-3' -> 1e-3) against annotation tp."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and len(args) < len(typing.get_args(tp)):
            return None
        return _check(value, args[0], where)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where + ".")
    if origin is list:
        if not isinstance(value, list):
            raise RecipeError(f"{where}: expected a list, got {type(value).__name__} {_short(value)}")
        (item,) = typing.get_args(tp)
        return [_check(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - a schema bug, not a user error
        raise TypeError(f"{where}: unsupported annotation {tp!r}")
    raise RecipeError(f"{where}: expected {_name(tp)}, got {type(value).__name__} {_short(value)}")


def _name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


# ---------------------------------------------------------------------- key=value overrides
def leaf_keys(cls=Recipe, prefix: str = "") -> dict[str, Any]:
    """Every settable dotted key -> its type, e.g. {"train.lr": float, "mode": str, ...}."""
    out = {}
    for name, tp in _fields(cls).items():
        if dataclasses.is_dataclass(tp):
            out.update(leaf_keys(tp, prefix + name + "."))
        else:
            out[prefix + name] = tp
    return out


def resolve_key(key: str) -> str:
    """A dotted key as is; a bare key when it names exactly one field across sections."""
    keys = leaf_keys()
    if key in keys:
        return key
    matches = [k for k in keys if k.rsplit(".", 1)[-1] == key]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise RecipeError(f"override key {key!r} is ambiguous: use one of {matches}")
    close = difflib.get_close_matches(key, list(keys), n=1)
    raise RecipeError(f"unknown override key {key!r}" + (f"; did you mean {close[0]!r}?" if close else ""))


def parse_value(text: str, tp: Any, where: str) -> Any:
    """The command-line text of an override, typed by the field it sets."""
    args = typing.get_args(tp)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), tp) if optional else tp
    if optional and text.strip().lower() in ("null", "none", "~", ""):
        return None
    if base is str:  # strings verbatim: model.name_or_path=1234 or output.resume=none stay strings
        return text
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise RecipeError(f"override {where}={text!r}: not a valid value ({e})") from None
    return _check(value, tp, where)


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Set each ``key=value`` into a copy of the raw recipe dict (typed; validated again on build)."""
    import copy

    raw = copy.deepcopy(raw)
    types_ = leaf_keys()
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"override {item!r} must look like key=value (e.g. train.lr=3e-4)")
        key, text = item.split("=", 1)
        key = resolve_key(key.strip())
        value = parse_value(text, types_[key], key)
        node = raw
        *sections, leaf = key.split(".")
        for s in sections:
            if node.get(s) is None:
                node[s] = {}
            if not isinstance(node[s], dict):
                raise RecipeError(f"recipe section {s!r} is not a mapping")
            node = node[s]
        node[leaf] = value
    return raw


def flatten(d, prefix: str = "") -> dict:
    """Nested dicts/lists -> {"a.b": scalar} (lists indexed: heads.0.top1), for trackers and recipe diffs."""
    out = {}
    for k, v in d.items() if isinstance(d, dict) else enumerate(d):
        out |= flatten(v, f"{prefix}{k}.") if isinstance(v, (dict, list)) else {f"{prefix}{k}": v}
    return out


RECIPE_FILE = "recipe.yaml"  # the resolved recipe saved in every checkpoint folder


def read_saved_recipe(folder: str) -> Recipe | None:
    """A checkpoint's ``recipe.yaml`` read back through the schema (None when the folder has none).

    The one way a saved recipe is read (resume check, calibration, model card, push): a file that no longer fits
    the schema is a RecipeError naming it, never a dict searched for keys the schema does not have.
    """
    path = os.path.join(folder, RECIPE_FILE) if os.path.isdir(folder) else folder
    if not os.path.isfile(path):
        return None
    return Recipe.from_yaml(path)


def load_recipe(path: str, overrides: list[str] | None = None) -> Recipe:
    """recipes/<name>.yaml + ``key=value`` overrides -> the resolved, validated Recipe."""
    if not os.path.isfile(path):
        what = "a folder" if os.path.isdir(path) else "not found"
        raise RecipeError(f"recipe {path!r}: {what}; pass a recipe file, e.g. recipes/smollm2-135m.yaml")
    return Recipe.from_yaml(path, overrides)
