"""Checkpoints of train/medusa.py: written to a .tmp folder then renamed, so a kill never leaves a half one.

checkpoint-{step}/ holds the heads (engine format), adapter/ (medusa2), recipe.yaml, metrics.json,
trainer_state.json (with a hash of each rank's trainable weights) and state/ (optimizer, RNG, trainable weights).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from contextlib import nullcontext


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


def save_checkpoint(accelerator, model, cfg, name, trainer_state, metrics, with_state):
    """All processes call this. Writes output_dir/name.tmp, then renames it; prunes old checkpoint-* folders."""
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
    if accelerator.is_main_process:
        with open(os.path.join(tmp, "recipe.yaml"), "w") as f:  # relaunchable: its first line is the command
            f.write(cfg.to_yaml(header=f"python train/medusa.py {os.path.join(final, 'recipe.yaml')}"))
        with open(os.path.join(tmp, "metrics.json"), "w") as f:
            json.dump(metrics, f, indent=2)
        with open(os.path.join(tmp, "trainer_state.json"), "w") as f:
            json.dump(trainer_state | {"rank_param_sha256": hashes}, f, indent=2)
        if os.path.exists(final):
            shutil.rmtree(final)
        os.rename(tmp, final)
        limit = cfg.output.save_total_limit
        for old in complete_checkpoints(out_dir)[:-limit] if limit else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return hashes


# recipe keys that may change between a run and its resumption: they do not change what the weights become
# (data.eval_fraction / eval_data / eval_split do: they decide which records are held out of training)
RESUME_FREE = ("output.", "train.stop_after_steps", "train.eval_every", "train.log_every", "train.eval_batch_size",
               "train.features_dir", "data.cache_dir", "data.num_proc", "data.calib_", "data.max_eval_")  # fmt: skip


def recipe_changes(checkpoint: str, current: dict) -> list[str]:
    """Keys whose value in checkpoint/recipe.yaml differs from the current recipe's (ignoring RESUME_FREE)."""
    import yaml

    from train.config import flatten

    with open(os.path.join(checkpoint, "recipe.yaml")) as f:
        saved = yaml.safe_load(f)

    a, b = flatten(saved), flatten(current)
    keys = sorted(k for k in a.keys() & b.keys() if not k.startswith(RESUME_FREE))  # new keys: their default
    return [f"{k}: {a[k]!r} -> {b[k]!r}" for k in keys if a[k] != b[k]]
