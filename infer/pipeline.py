"""One inference pipeline: the base model, its heads, their calibration and the latency profile, loaded and checked
in one place; prompts read and encoded one way; one context check. Every entry point (``infer.generate``,
``infer.bench``, ``infer.position_bias``, ``infer.serve``) builds on this module and none imports another.

Everything here raises exceptions (:class:`PipelineError`, a ``ValueError``, or the loaders' own ``BaseModelError``
/ ``HeadsError`` / ``CalibrationError``); only the command-line entry points turn them into ``error: ...`` exits.

    from infer.pipeline import load_pipeline
    pipe = load_pipeline()                                  # embedded default + shipped heads, auto dtype/budget
    ids = pipe.encode([{"role": "user", "content": "Hi"}])  # [1, L]
    result = pipe.generate(ids, max_new_tokens=64)          # infer.decode.single.DecodeResult
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass

import torch

from .decode.single import DecodeConfig, DecodeResult, generate, tree_room
from .draft.heads import MedusaHeads
from .model.backbone import stop_ids
from .model.base import DEFAULT_MODEL, load_base_model

# The shipped heads of the default model, both with an 8,192-token head vocabulary: sequential heads
# (recipes/smollm2-135m-sequential.yaml), the default because they measured faster (README, Results), and Medusa
# heads (recipes/smollm2-135m.yaml).
PRETRAINED = os.path.join(os.path.dirname(__file__), "pretrained")
SHIPPED_HEADS = {DEFAULT_MODEL: os.path.join(PRETRAINED, "smollm2-135m-sequential")}
SHIPPED_MEDUSA_HEADS = {DEFAULT_MODEL: os.path.join(PRETRAINED, "smollm2-135m")}


class PipelineError(ValueError):
    """Input the pipeline cannot use: a prompt file, a prompt, a device, a context overflow."""


# ------------------------------------------------------------------------------------------------- prompts
def read_prompts(path: str, limit: int | None = None, split: str | None = None) -> list[list[str]]:
    """-> a list of conversations, each a list of user turns. ``.jsonl``: records with "turns" (list of strings)
    or "prompt"; other files: one prompt a line. split: only JSONL records whose "split" is this."""
    if not os.path.exists(path):
        raise PipelineError(f"prompt file not found: {path}")
    convs = []
    with open(path, "rb") as f:
        for i, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise PipelineError(f"{path}:{i}: not UTF-8 text (byte {e.start} of the line)") from None
            if not line.strip():
                continue
            if not path.endswith(".jsonl"):
                convs.append([line.rstrip("\n")])
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise PipelineError(f"{path}:{i}: bad JSON ({e})") from None
            if not isinstance(rec, dict):
                raise PipelineError(
                    f"{path}:{i}: expected a JSON object with 'turns' or 'prompt', got {type(rec).__name__}"
                )
            if split is not None and rec.get("split") != split:
                continue
            turns = rec.get("turns") if "turns" in rec else ([rec["prompt"]] if "prompt" in rec else None)
            if (
                not isinstance(turns, list)
                or not turns
                or not all(isinstance(t, str) and t.strip() for t in turns)
            ):
                raise PipelineError(f"{path}:{i}: expected non-empty 'turns' (list of strings) or 'prompt'")
            convs.append(turns)
    if not convs:
        raise PipelineError(f"no prompts in {path}" + (f" with split {split!r}" if split else ""))
    return convs[:limit] if limit else convs


def encode(
    tokenizer, messages: list[dict], chat_template: bool = True, template: str | None = None
) -> torch.Tensor:
    """Messages -> input ids [1, L] (the chat template with the assistant's generation prompt, or the last
    message's text alone). ``template``: the Jinja text to use instead of the tokenizer's own (the heads' training
    template, :func:`heads_template`); with neither, training's fallback (:func:`data.chat.resolve_template`)."""
    if not messages or not all(isinstance(m.get("content"), str) for m in messages):
        raise PipelineError("messages must be a non-empty list of {'role', 'content': str}")
    if not messages[-1]["content"].strip():
        raise PipelineError("empty prompt")
    if chat_template:
        if template is None and tokenizer.chat_template is None:  # as training resolves it: Vicuna's by name
            from data.chat import resolve_template

            try:
                template = resolve_template(tokenizer, None)
            except ValueError as e:
                raise PipelineError(f"{e}; or pass --no-chat-template") from None
        text = tokenizer.apply_chat_template(
            messages, chat_template=template, tokenize=False, add_generation_prompt=True
        )
        return tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
    return tokenizer(messages[-1]["content"], return_tensors="pt").input_ids


def context_length(model) -> int | None:
    return getattr(model.config, "max_position_embeddings", None)


def check_context(model, prompt_len: int, max_new_tokens: int, room: int = 0) -> None:
    """The one context check: prompt + new tokens + the tree's extra cache slots must fit the model's context."""
    context = context_length(model)
    if context and prompt_len + max_new_tokens + room > context:
        raise PipelineError(
            f"prompt of {prompt_len} tokens + {max_new_tokens} new tokens exceeds the model's context of "
            f"{context}; shorten the prompt or lower the number of new tokens"
        )


# ------------------------------------------------------------------------------------------------ pipeline
@dataclass
class Pipeline:
    model: object
    tokenizer: object
    heads: MedusaHeads | None
    config: DecodeConfig  # the default decoding settings (calibration and latency profile attached)
    device: str = "cpu"
    name: str = DEFAULT_MODEL  # the base model's id, as asked
    template: str | None = None  # the chat template the heads were trained with (their recipe's), else None
    engine: object = None  # infer.engine.single: who runs the model's steps (None: eager)
    engine_reason: str = "eager"  # why that engine, in one line
    batch_engine_reason: str | None = None  # the same for batched decoding, once asked
    engine_asked: str = "auto"  # --engine as asked: only "compiled" builds what is not on disk yet
    _batch_engine: object = dataclasses.field(default=None, repr=False)  # built at the first batch_engine()

    def batch_engine(self, verbose: bool = True):
        """A new, empty batched engine (:mod:`infer.engine.batch`) for a BatchDecoder: compiled when the pipeline's
        engine is and its batched steps load from the disk cache (or, under ``engine="compiled"``, build now: minutes,
        once); else eager, with the reason said once."""
        from .engine.batch import make_batch_engine

        if self._batch_engine is None:
            build = self.engine_asked == "compiled"
            self._batch_engine, self.batch_engine_reason = make_batch_engine(
                self.model, self.engine, verbose, build
            )
            if verbose:
                print(f"batched engine -> {self.batch_engine_reason}", flush=True)
        return self._batch_engine.fresh()

    @property
    def eos(self) -> set[int]:
        return stop_ids(self.model, self.tokenizer)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def encode(self, messages: list[dict], chat_template: bool = True) -> torch.Tensor:
        return encode(self.tokenizer, messages, chat_template, self.template).to(self.device)

    def decode_config(self, **changes) -> DecodeConfig:
        """The pipeline's settings with ``changes`` (e.g. max_new_tokens, tree, temperature), validated."""
        return dataclasses.replace(self.config, **changes)

    def generate(self, input_ids, cfg: DecodeConfig | None = None, on_tokens=None, generator=None, **changes):
        """input ids [1, L] -> DecodeResult, after the context check."""
        cfg = cfg or self.decode_config(**changes)
        heads = None if cfg.tree == "none" else self.heads
        check_context(self.model, input_ids.shape[1], cfg.max_new_tokens, tree_room(cfg, heads))
        return generate(
            self.model, input_ids, heads, cfg, eos=self.eos, on_tokens=on_tokens, generator=generator,
            engine=self.engine,
        )  # fmt: skip


DETERMINISTIC = (
    "float32: greedy answers depend only on the request (trees, batching, streaming and load change nothing: in "
    "float32 every one of them gives plain greedy decoding's text); in bfloat16 a tree step and a one-token step, or "
    "rows batched differently, round differently, so near-ties can flip"
)


def deterministic_dtype(dtype: str, deterministic: bool) -> str:
    """--deterministic -> float32 (``dtype`` auto or float32), else ``dtype`` as asked."""
    if not deterministic:
        return dtype
    if dtype not in ("auto", "float32"):
        raise PipelineError(
            f"--deterministic decodes in float32 ({DETERMINISTIC}); it cannot take --dtype {dtype}"
        )
    return "float32"


def heads_template(heads_folder: str, tokenizer) -> str | None:
    """The chat template the heads were trained with: their recipe's ``data.template`` (a shipped name, a .jinja
    file or Jinja text), resolved by the same function training uses (:func:`data.chat.resolve_template`); None when
    the recipe names none (the tokenizer's own, as in training)."""
    import yaml

    path = os.path.join(heads_folder, "recipe.yaml")
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            recipe = yaml.safe_load(f)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise PipelineError(f"{path}: cannot be read ({e})") from None
    template = ((recipe or {}).get("data") or {}).get("template") if isinstance(recipe, dict) else None
    if template is None:
        return None
    from data.chat import resolve_template

    try:
        return resolve_template(tokenizer, template)
    except (ValueError, TypeError, FileNotFoundError) as e:
        raise PipelineError(f"{path}: data.template: {e}") from None


def check_device(device: str) -> None:
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise PipelineError(
            f"device {device}, but this torch has no usable CUDA (torch {torch.__version__}); use cpu"
        )


def load_heads(path: str | None, model, revision: str | None = None, name: str = DEFAULT_MODEL):
    """Heads for ``model``: ``path`` (folder or Hub id), else the shipped heads of ``name``; checked against the
    model, moved to its device and dtype, frozen."""
    heads_path = path or SHIPPED_HEADS.get(name)
    if heads_path is None or (path is None and not os.path.isdir(heads_path)):
        raise PipelineError(f"no heads for {name}: pass heads (a folder or Hub id), or decode without a tree")
    heads = MedusaHeads.from_pretrained(heads_path, revision=revision)
    heads.check_base(model)
    param = next(model.parameters())
    return heads.to(device=param.device, dtype=param.dtype).eval().requires_grad_(False)


def load_calibration(
    heads: MedusaHeads, heads_path: str | None, calibration: str = "auto", name=DEFAULT_MODEL
):
    """ "auto": calibration.json beside the heads (None when absent); "none": None; else a calibration file."""
    from .draft.calibration import Calibration
    from .draft.calibration import load_calibration as beside
    from .draft.heads import resolve_heads_path

    if calibration == "none":
        return None
    if calibration == "auto":
        cal = beside(resolve_heads_path(heads_path or SHIPPED_HEADS[name]))
    else:
        cal = Calibration.from_file(calibration)
    if cal is not None:
        cal.check_heads(heads.num_heads)
    return cal


def load_pipeline(
    model: str | None = None,
    heads: str | None = None,
    *,
    dtype: str = "auto",
    device: str = "cpu",
    revision: str | None = None,
    heads_revision: str | None = None,
    trust_remote_code: bool = False,
    calibration: str = "auto",
    config: DecodeConfig | None = None,
    auto_budget: bool = True,
    max_nodes: int = 32,
    remeasure: bool = False,
    verbose: bool = True,
    engine: str = "auto",
) -> Pipeline:
    """Base model + heads (+ calibration, + the latency profile of the auto node budget) -> Pipeline.

    ``model`` None: the embedded default; ``heads`` None: its shipped heads (``config.tree == "none"``: no heads).
    ``auto_budget``: dynamic trees pick their node count each step (<= max_nodes) from measured latency.
    ``engine``: ``auto`` (compiled where a build here measured it faster), ``compiled`` or ``eager`` (:mod:`.engine`).
    """
    from .draft.tree import sparse_tree_from_accuracies
    from .engine.single import make_engine

    check_device(device)
    name = model or DEFAULT_MODEL
    # the pipeline's own copy: the measured state attached below never changes the caller's config
    cfg = dataclasses.replace(config) if config is not None else DecodeConfig(node_budget=max_nodes)
    if (
        cfg.context or cfg.hybrid
    ) and cfg.context_stats is None:  # the context nodes' acceptance, across requests
        from .draft.context import ContextStats

        cfg.context_stats = ContextStats()
    base, tokenizer = load_base_model(model, dtype, revision, trust_remote_code, device, verbose=verbose)
    step_engine, reason = make_engine(base, engine, verbose=verbose)
    if verbose:
        print(f"engine {engine} -> {reason}", flush=True)
    loaded = None
    if cfg.tree != "none" and not cfg.context:
        loaded = load_heads(heads, base, heads_revision, name)
        cfg.calibration = load_calibration(loaded, heads, calibration, name)
        if step_engine.name == "compiled":  # the heads' drafting calls compiled too (built under "compiled")
            from .engine.compiled_heads import compile_heads

            loaded, heads_reason = compile_heads(loaded, base, step_engine, engine == "compiled", verbose)
            if verbose:
                print(heads_reason, flush=True)
        rank_acc = getattr(cfg.calibration, "rank_accuracy", None)
        if cfg.tree == "static" and cfg.medusa_choices is None and rank_acc:
            # Medusa's recipe: grow the static tree on held-out per-rank accuracies (16 nodes under auto)
            n = 16 if auto_budget else cfg.node_budget
            cfg.medusa_choices = sparse_tree_from_accuracies(rank_acc[: cfg.depth or len(rank_acc)], n)
    if (
        cfg.tree == "dynamic" and auto_budget and (loaded is not None or cfg.context)
    ):  # context: chains cut too
        from .draft.budget import DEFAULT_SIZES, load_or_measure

        top = max_nodes + 1 if step_engine.buckets is None else min(max_nodes + 1, step_engine.buckets[-1])
        sizes = [t for t in DEFAULT_SIZES if t <= top]
        cfg.latency = load_or_measure(
            base, loaded, device, sizes=sizes, force=remeasure, verbose=verbose, engine=step_engine
        )
    template = None
    if loaded is not None:
        from .draft.heads import resolve_heads_path

        template = heads_template(resolve_heads_path(heads or SHIPPED_HEADS[name]), tokenizer)
    return Pipeline(
        base, tokenizer, loaded, cfg, device, name, template, step_engine, reason, engine_asked=engine
    )


def result_summary(r: DecodeResult, tag: str) -> dict:
    """A DecodeResult's figures as flat JSON fields prefixed with ``tag``."""
    return {
        f"{tag}_new_tokens": len(r.tokens),
        f"{tag}_steps": r.steps,
        f"{tag}_tokens_per_step": round(r.tokens_per_step, 4),
        f"{tag}_tokens_per_s": round(r.tokens_per_second, 2),
        f"{tag}_time_s": round(r.time_total, 4),
        f"{tag}_tree_s": round(r.time_tree, 4),
        f"{tag}_heads_s": round(r.time_heads, 4),
    }
