"""Checkpoints of train/medusa.py: written to a .tmp folder then renamed, so a kill never leaves a half one.

checkpoint-{step}/ holds the heads (engine format), adapter/ (medusa2), recipe.yaml, metrics.json,
trainer_state.json (with a hash of each rank's trainable weights) and state/ (optimizer, RNG, trainable weights).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from contextlib import nullcontext

from safetensors import SafetensorError


def is_deepspeed(accelerator):
    return getattr(accelerator.state, "deepspeed_plugin", None) is not None


def is_zero3(accelerator):
    return is_deepspeed(accelerator) and accelerator.state.deepspeed_plugin.zero_stage == 3


def gathered(accelerator, params):
    """ZeRO-3: the full parameters on every process for the duration; otherwise nothing to do."""
    if is_zero3(accelerator):
        import deepspeed

        return deepspeed.zero.GatheredParameters(params, modifier_rank=None)
    return nullcontext()


def complete_checkpoints(output_dir):
    """checkpoint-{step} folders that finished writing (renamed from .tmp), oldest first."""
    if not os.path.isdir(output_dir):
        return []
    paths = [
        os.path.join(output_dir, n) for n in os.listdir(output_dir) if re.fullmatch(r"checkpoint-\d+", n)
    ]
    paths = [p for p in paths if os.path.exists(os.path.join(p, "trainer_state.json"))]
    return sorted(paths, key=lambda p: int(p.rsplit("-", 1)[1]))


class CheckpointWriteError(RuntimeError):
    """A checkpoint that could not be written (a full disk, most often): says why, what is kept and how to go on."""


MIN_FREE = 64 * 2**20  # bytes: less free space than this after a failed write means the disk is full
# torch.save on a full disk: its zip writer's messages (no errno survives them)
TORCH_WRITE_FAILED = ("unexpected pos", "PytorchStreamWriter failed", "file write failed")
# what a failed write raises: OSError (open, json), RuntimeError (torch.save) and safetensors' SafetensorError,
# which is neither ("Error while serializing: I/O error: No space left on device (os error 28)")
WRITE_ERRORS = (OSError, RuntimeError, SafetensorError)


def write_errno(error: BaseException) -> int | None:
    """The errno of a failed write: an OSError's own, or the "(os error N)" safetensors' message ends with."""
    if isinstance(error, OSError):
        return error.errno
    found = re.search(r"\(os error (\d+)\)", str(error))
    return int(found.group(1)) if found else None


def as_write_error(error: BaseException, path: str) -> OSError | None:
    """A failed file write as an OSError (errno, its text, ``path``), or None when ``error`` is not one: an OSError
    as it is; safetensors' I/O errors ("(os error N)") and torch.save's zip-writer errors (no errno: ENOSPC, what
    they mean in practice, said as a guess) turned into one."""
    if isinstance(error, OSError):
        return error
    code = write_errno(error)
    if code is not None:
        return OSError(code, os.strerror(code), path)
    if any(s in str(error) for s in TORCH_WRITE_FAILED):
        said = " ".join(str(error).split())[:200]
        return OSError(errno.ENOSPC, f"the write failed, most likely a full disk (torch.save: {said})", path)
    return None


def disk_full(error: BaseException, folder: str) -> bool:
    """Whether a write failed for lack of space: ENOSPC (an OSError's, or in safetensors' message), torch's zip
    writer's "unexpected pos" (what a full disk looks like through torch.save), or next to no free space left on
    ``folder``'s filesystem."""
    if write_errno(error) in (errno.ENOSPC, errno.EDQUOT):
        return True
    if any(s in str(error) for s in ("No space left", *TORCH_WRITE_FAILED)):
        return True
    try:
        return shutil.disk_usage(folder).free < MIN_FREE
    except OSError:
        return False


def write_failure(error: BaseException, folder: str) -> str:
    """Why a write into ``folder`` failed, in one line: "the disk is full (No space left on device, errno 28)",
    "the write failed (File too large, errno 27: PATH)", or the error's own words when it has no errno."""
    code = write_errno(error)
    if code:
        detail = f"{os.strerror(code)}, errno {code}"
    else:
        detail = f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"
    if getattr(error, "filename", None):
        detail += f": {error.filename}"
    return f"the disk is full ({detail})" if disk_full(error, folder) else f"the write failed ({detail})"


def save_checkpoint(accelerator, model, cfg, name, trainer_state, metrics, with_state):
    """All processes call this. Writes output_dir/name.tmp, then renames it; prunes old checkpoint-* folders.
    A failed write (a full disk) removes the half-written folder and raises :class:`CheckpointWriteError`, after
    rescuing the trained heads alone (no optimizer state: much smaller) beside it or in the temp folder."""
    out_dir = cfg.output.output_dir
    try:
        return _save(accelerator, model, cfg, name, trainer_state, metrics, with_state)
    except WRITE_ERRORS as e:
        if accelerator.is_main_process:
            shutil.rmtree(os.path.join(out_dir, name + ".tmp"), ignore_errors=True)
        why = write_failure(e, out_dir)
        kept = "the previous checkpoints are untouched"
        if accelerator.is_main_process:
            rescued = _rescue_heads(accelerator, model, out_dir, name, trainer_state.get("run_id") or "run")
            heads = (
                f"the trained heads were saved to {rescued}"
                if rescued
                else "the heads could not be saved anywhere"
            )
            kept = heads if name == "final" else f"{kept}; {heads}"
        raise CheckpointWriteError(
            f"could not write {os.path.join(out_dir, name)}: {why}; {kept}. Free some space and run the same command "
            "again (output.resume=auto continues from the last complete checkpoint)"
        ) from e


def _rescue_heads(accelerator, model, out_dir: str, name: str, run_id: str) -> str | None:
    """The heads alone (config.json + model.safetensors), where they fit: beside the output
    (``{name}-heads-rescued``), else the temp folder; a folder that could not be written is removed."""
    heads = accelerator.unwrap_model(model).heads
    for folder in (
        os.path.join(out_dir, f"{name}-heads-rescued"),
        os.path.join(tempfile.gettempdir(), f"heads-{run_id}-{name}"),
    ):
        try:
            shutil.rmtree(folder, ignore_errors=True)
            heads.save_pretrained(folder)
            return folder
        except WRITE_ERRORS:
            shutil.rmtree(folder, ignore_errors=True)
    return None


def _save(accelerator, model, cfg, name, trainer_state, metrics, with_state):
    out_dir = cfg.output.output_dir
    final, tmp = os.path.join(out_dir, name), os.path.join(out_dir, name + ".tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    accelerator.wait_for_everyone()
    if with_state:  # optimizer, RNG, trainable weights (DeepSpeed: its own shards, without the frozen base)
        kw = {"exclude_frozen_parameters": True} if is_deepspeed(accelerator) else {}
        accelerator.save_state(os.path.join(tmp, "state"), **kw)
    unwrapped = accelerator.unwrap_model(model)
    trainable = [(n, p) for n, p in unwrapped.named_parameters() if p.requires_grad]
    with gathered(accelerator, [p for _, p in trainable]):
        digest = hashlib.sha256()
        for n, p in trainable:
            digest.update(n.encode() + p.detach().float().cpu().numpy().tobytes())
        if accelerator.is_main_process:
            unwrapped.heads.save_pretrained(tmp)
            if unwrapped.lora:
                unwrapped.base.save_pretrained(os.path.join(tmp, "adapter"))
    from accelerate.utils import gather_object

    hashes = gather_object([digest.hexdigest()])
    accelerator.wait_for_everyone()  # every rank's state/ files are written: the manifest sees them all
    if accelerator.is_main_process:
        with open(os.path.join(tmp, "recipe.yaml"), "w") as f:  # relaunchable: its first line is the command
            f.write(cfg.to_yaml(header=f"python train/medusa.py {os.path.join(final, 'recipe.yaml')}"))
        with open(os.path.join(tmp, "metrics.json"), "w") as f:
            json.dump(metrics, f, indent=2)
        state = trainer_state | {"rank_param_sha256": hashes, "files": manifest(tmp)}
        with open(os.path.join(tmp, "trainer_state.json"), "w") as f:  # written last: marks it complete
            json.dump(state, f, indent=2)
        if os.path.exists(final):
            shutil.rmtree(final)
        os.rename(tmp, final)
        prune(out_dir, trainer_state.get("run_id"), cfg.output.save_total_limit)
    accelerator.wait_for_everyone()
    return hashes


def manifest(folder: str) -> dict[str, int]:
    """Every file of a checkpoint folder -> its size in bytes (what checkpoint_damage checks)."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            out[os.path.relpath(path, folder)] = os.path.getsize(path)
    return out


def read_state(checkpoint: str) -> dict | None:
    """checkpoint/trainer_state.json, or None when it is missing or unreadable."""
    try:
        with open(os.path.join(checkpoint, "trainer_state.json")) as f:
            state = json.load(f)
        return state if isinstance(state, dict) else None
    except (OSError, ValueError):
        return None


def checkpoint_damage(checkpoint: str) -> str | None:
    """What is wrong with a checkpoint folder (a file missing, truncated or unreadable), or None when intact."""
    state = read_state(checkpoint)
    if state is None:
        return "trainer_state.json is missing or not JSON"
    for rel, size in (state.get("files") or {}).items():  # checkpoints of older versions have no manifest
        path = os.path.join(checkpoint, rel)
        if not os.path.isfile(path):
            return f"{rel} is missing"
        if os.path.getsize(path) != size:
            return f"{rel} has {os.path.getsize(path)} bytes, {size} were written"
    try:
        from safetensors import safe_open

        with safe_open(os.path.join(checkpoint, "model.safetensors"), framework="pt") as f:
            list(f.keys())
    except Exception as e:
        return f"model.safetensors is unreadable ({e})"
    return None


def prune(out_dir: str, run_id: str | None, limit: int) -> None:
    """Delete the checkpoints of other runs (an earlier run in this folder, started over with resume=none) and all
    but the newest ``limit`` of this run's (0 = keep all of this run's)."""
    own, other = [], []
    for path in complete_checkpoints(out_dir):
        state = read_state(path) or {}
        (own if run_id is not None and state.get("run_id") == run_id else other).append(path)
    for old in other + (own[:-limit] if limit else []):
        shutil.rmtree(old, ignore_errors=True)


# recipe keys that may change between a run and its resumption: they do not change what the weights become
# (data.eval_fraction / eval_data / eval_split do: they decide which records are held out of training)
RESUME_FREE = ("output.", "train.stop_after_steps", "train.eval_every", "train.log_every", "train.eval_batch_size",
               "train.features_dir", "data.cache_dir", "data.num_proc", "data.calib_", "data.max_eval_")  # fmt: skip


def recipe_changes(checkpoint: str, current: dict) -> list[str]:
    """Keys whose value in checkpoint/recipe.yaml differs from the current recipe's (ignoring RESUME_FREE)."""
    from train.config import flatten, read_saved_recipe

    saved = read_saved_recipe(checkpoint)
    if saved is None:
        return ["recipe.yaml: missing from the checkpoint"]
    a, b = flatten(saved.to_dict()), flatten(current)
    keys = sorted(k for k in a.keys() & b.keys() if not k.startswith(RESUME_FREE))
    return [f"{k}: {a[k]!r} -> {b[k]!r}" for k in keys if a[k] != b[k]]
