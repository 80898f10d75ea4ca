"""Feature cache for medusa1: run the frozen base once over the data, then train heads on its hidden states.

Shards of SHARD examples (safetensors: hidden [n, H], targets [n, K], tokens [n, K] (the path tokens t+1..t+K that
sequential heads read), lengths), written atomically, in a folder
keyed by a hash of the tokenised data, the model and the heads' shifts; a killed run resumes shard by shard.
"""

from __future__ import annotations

import hashlib
import json
import math
import os

import torch
import torch.nn.functional as F

from train.trainee import IGNORE, shifted_targets, shifted_tokens

SHARD = 256  # examples per feature-cache shard file
VERSION = 2  # 2: shards also hold the path tokens


def tqdm_(total, desc, accelerator, initial=0, unit="it"):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not accelerator.is_main_process)


def to_device(batch, device):
    return {k: v.to(device) for k, v in batch.items()}


class FeatureSet(torch.utils.data.Dataset):
    """Cached features: example i -> {"hidden": [n_i, H], "targets": [n_i, K], "tokens": [n_i, K]} (its rows with a
    head target; tokens: the next K input tokens, which sequential heads read)."""

    def __init__(self, folder):
        from safetensors import safe_open

        with open(os.path.join(folder, "index.json")) as f:
            self.n = json.load(f)["examples"]
        self.files = [os.path.join(folder, shard_name(s)) for s in range(math.ceil(self.n / SHARD))]
        self.offsets = []  # per shard: row offset of each example
        for path in self.files:
            with safe_open(path, framework="pt") as f:
                self.offsets.append(F.pad(f.get_tensor("lengths").cumsum(0), (1, 0)))

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        from safetensors import safe_open

        s, j = divmod(i, SHARD)
        a, b = int(self.offsets[s][j]), int(self.offsets[s][j + 1])
        with safe_open(self.files[s], framework="pt") as f:
            return {k: f.get_slice(k)[a:b] for k in ("hidden", "targets", "tokens")}


def shard_name(s):
    return f"shard-{s:05d}.safetensors"


def collate_features(items):
    return {k: torch.cat([it[k] for it in items]) for k in ("hidden", "targets", "tokens")}


def cache_features(accelerator, cfg, base, ds, collate_fn, name):
    """Run the frozen base over ds once (each process a share of the shards) -> FeatureSet. The folder name hashes
    the tokenised data, the model and its dtype, and the heads' shifts; a killed run resumes shard by shard."""
    from safetensors.torch import save_file

    from infer.cache import cache_root
    from infer.model.base import resolve_model_path

    K, path, m = cfg.heads.medusa_num_heads, resolve_model_path(cfg.model.name_or_path), cfg.model
    files = [os.path.join(path, f) for f in sorted(os.listdir(path))] if os.path.isdir(path) else []
    dtype = str(next(base.parameters()).dtype).replace("torch.", "")  # resolved: "auto" is not a dtype
    model_id = [m.name_or_path, m.revision, dtype] + [
        (f, os.stat(f).st_size, os.stat(f).st_mtime) for f in files
    ]
    data_id = [getattr(ds, "_fingerprint", None), len(ds), ds[0]["input_ids"], ds[len(ds) - 1]["input_ids"]]
    key = hashlib.sha256(
        json.dumps([model_id, data_id, K, cfg.data.max_length, VERSION], default=str).encode()
    )
    root = cfg.train.features_dir or os.path.join(cache_root(), "features")
    folder = os.path.join(root, f"{name}-{key.hexdigest()[:16]}")
    if not os.path.exists(os.path.join(folder, "index.json")):
        os.makedirs(folder, exist_ok=True)
        shards = range(accelerator.process_index, math.ceil(len(ds) / SHARD), accelerator.num_processes)
        sizes = {s: min(len(ds), (s + 1) * SHARD) - s * SHARD for s in shards}
        # ticks per conversation (a shard of 256 takes minutes on a CPU), this process's share
        bar = tqdm_(
            sum(sizes.values()), f"caching {name} features (base model, once)", accelerator, unit="conv"
        )
        for s in shards:
            out, bs = os.path.join(folder, shard_name(s)), cfg.train.eval_batch_size
            idx = list(range(s * SHARD, s * SHARD + sizes[s]))
            if os.path.exists(out):
                bar.update(sizes[s])
            hidden, targets, tokens, lengths = [], [], [], []
            for i in range(0, len(idx), bs) if not os.path.exists(out) else []:  # done by a killed run: skip
                batch = to_device(collate_fn([ds[j] for j in idx[i : i + bs]]), base.device)
                inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
                with torch.no_grad():
                    h = base.base_model(**inputs, use_cache=False).last_hidden_state
                tg = shifted_targets(batch["labels"], batch.get("position_ids"), [k + 2 for k in range(K)])
                keep = (tg != IGNORE).any(-1)
                tok = shifted_tokens(batch["input_ids"], K)
                for b in range(len(h)):
                    hidden.append(h[b][keep[b]].cpu())
                    targets.append(tg[b][keep[b]].cpu())
                    tokens.append(tok[b][keep[b]].cpu())
                    lengths.append(int(keep[b].sum()))
                bar.update(len(h))
            if hidden:
                tensors = {
                    "hidden": torch.cat(hidden),
                    "targets": torch.cat(targets),
                    "tokens": torch.cat(tokens),
                    "lengths": torch.tensor(lengths),
                }
                save_file({k: v.contiguous() for k, v in tensors.items()}, out + ".tmp")
                os.replace(out + ".tmp", out)
        bar.close()
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            with open(os.path.join(folder, "index.json.tmp"), "w") as f:
                json.dump({"examples": len(ds), "shard_size": SHARD, "model": model_id}, f, default=str)
            os.replace(os.path.join(folder, "index.json.tmp"), os.path.join(folder, "index.json"))
    accelerator.wait_for_everyone()
    return FeatureSet(folder)
