"""``--dtype auto``: the dtype is part of the hardware, so it is chosen by measurement on this machine.

bfloat16 halves the weights' memory traffic, but it is fast on a CPU only where the CPU computes in bf16 natively
(``avx512_bf16`` / AMX); elsewhere every matmul converts, and a 16-token tree step measured ~6x a one-token step
in bf16 against ~2x in float32. On a GPU, bf16 (or fp16 where bf16 is unsupported) is always the faster choice.

On a CPU :func:`choose_dtype` times a one-token step and a 17-token tree step in float32 and in bfloat16,
interleaved and repeated (median), and keeps the dtype with the smaller cost for the purpose: ``decode`` (generation)
takes the better of a plain step per token and a tree step that yields 2 tokens (min(t1, t17 / 2)); ``train``
(feature caching, batched forwards) takes the 17-token step. Without native bf16 the two can disagree: a one-token
bf16 step may be the fastest of all while a 17-token one costs 7x it. The decision is cached per (purpose, model,
device, threads, torch version, CPU capability) under ``$MEDUSA_CACHE/dtype`` and says which and why.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os

import torch

STEP_SIZES = (1, 17)  # a plain step and a 16-node tree step (root included)


def cpu_flags() -> list[str]:
    """The CPU's bf16-relevant features (from /proc/cpuinfo) and torch's vector capability."""
    flags = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    keep = ["avx2", "avx512f", "avx512_bf16", "amx_bf16"]
    out = [f for f in keep if f in flags]
    cap = torch.backends.cpu.get_cpu_capability() if hasattr(torch.backends, "cpu") else "?"
    return out + [f"torch:{cap}"]


def profile_key(model, device: str | torch.device) -> dict:
    """Everything a step's latency depends on (the node budget's profiles, the compiled engine's packages and
    records key on it); a change in any of it means a new measurement."""
    cfg = model.config.to_json_string(use_diff=False)
    dev = torch.device(device)
    return {
        "model": getattr(model.config, "_name_or_path", "") or type(model).__name__,
        "model_hash": hashlib.sha256(cfg.encode()).hexdigest()[:16],
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu": cpu_flags() if dev.type == "cpu" else [],
    }


PURPOSES = ("decode", "train")


def _cost(purpose: str, t1: float, t17: float) -> float:
    """Seconds per token the purpose can expect: decoding takes the better of plain steps and trees of ~2 tokens."""
    return min(t1, t17 / 2) if purpose == "decode" else t17


def _key(model, device, purpose: str) -> dict:
    cfg = model.config.to_json_string(use_diff=False)
    return {
        "purpose": purpose,
        "model": getattr(model.config, "_name_or_path", "") or type(model).__name__,
        "model_hash": hashlib.sha256(cfg.encode()).hexdigest()[:16],
        "device": str(torch.device(device)),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu": cpu_flags(),
    }


def choose_dtype(
    model,
    device="cpu",
    cache_dir: str | None = None,
    force: bool = False,
    verbose=True,
    purpose: str = "decode",
):
    """A float32 model -> (dtype, reason). GPUs: bfloat16 (float16 without bf16 support); CPUs: by measurement."""
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {PURPOSES}, got {purpose!r}")
    dev = torch.device(device)
    if dev.type == "cuda":
        bf16 = torch.cuda.is_bf16_supported()
        return (torch.bfloat16 if bf16 else torch.float16), "GPU: half precision is always faster"
    if dev.type != "cpu":
        return torch.float32, f"{dev.type}: float32 (no measurement for this device)"
    from ..cache import cache_root

    key = _key(model, device, purpose)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    path = os.path.join(cache_dir or os.path.join(cache_root(), "dtype"), f"dtype-{digest}.json")
    if not force and os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        if saved.get("key") == key:
            return getattr(torch, saved["dtype"]), saved["reason"] + " (cached)"
    if verbose:
        print("dtype auto: timing float32 and bfloat16 steps on this CPU (~10 s, once) ...", flush=True)
    from .timing import non_monotone, time_steps  # the step timer and its sanity check

    half = copy.deepcopy(model).to(torch.bfloat16)
    medians = {}
    for attempt in range(2):  # a 17-token step faster than a 1-token one means a busy machine: measure again
        for name, m in (("float32", model), ("bfloat16", half)):
            medians[name] = time_steps(m, STEP_SIZES, prefix_len=128, reps=5)
        consistent = all(non_monotone(STEP_SIZES, v) is None for v in medians.values())
        if consistent:
            break
        if verbose and not attempt:
            print(
                "dtype auto: a 17-token step timed faster than a 1-token one (a busy machine?): again",
                flush=True,
            )
    del half
    best = min(medians, key=lambda n: _cost(purpose, *medians[n]))
    ms = lambda n: "/".join(f"{1000 * s:.0f}" for s in medians[n])  # noqa: E731
    reason = (
        f"{best} for {purpose}: 1-token/17-token step {ms('bfloat16')} ms in bfloat16 vs {ms('float32')} ms in "
        f"float32 (CPU {' '.join(key['cpu'])})"
    )
    if not consistent:  # used for this run only: a choice measured under load is never cached
        return getattr(torch, best), reason + " (inconsistent timings: not cached)"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump({"key": key, "dtype": best, "reason": reason, "ms": medians}, f)
    os.replace(path + ".tmp", path)
    return getattr(torch, best), reason
