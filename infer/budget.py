"""Hardware-aware node budget: measured verify latency per tree size, and the budget that maximises tokens/s.

A tree of n nodes is only worth verifying if the extra accepted tokens pay for the longer forward pass. On CPUs the
verify latency is not even monotone in n, so it is measured once per (model, dtype, device, threads) and cached
as JSON under ``$MEDUSA_CACHE/latency``. Each step, :meth:`LatencyProfile.best_budget` takes the dynamic tree's
path probabilities (sorted, calibrated when a calibration exists) and picks

    n* = argmax_n  E[tokens/step](n) / (latency(n + 1) + heads_cost),   E(n) = 1 + sum of the n best path probs.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass

import torch

from .base import cache_root
from .decode import forward_hidden, project, tree_attention_mask
from .tree import dynamic_tree, tree_buffers

DEFAULT_SIZES = list(range(1, 17)) + list(range(20, 65, 4))  # tree sizes T (root included) measured


@dataclass
class LatencyProfile:
    sizes: torch.Tensor  # [S] long: tree sizes T = n + 1, ascending, starting at 1
    seconds: torch.Tensor  # [S] float: verify step latency (forward + projection) at each size
    heads_seconds: float  # the heads' cost per step (constant in n)
    key: dict  # what was measured: model, dtype, device, threads, torch version

    def best_budget(self, sorted_logp: torch.Tensor) -> int:
        """sorted_logp [N] descending path log-probs of the best N nodes -> the node budget n* (0..N)."""
        probs = torch.cat([sorted_logp.new_zeros(1), sorted_logp.exp().cumsum(0)])  # [N + 1]: E(n) - 1
        n = (self.sizes - 1).clamp(max=probs.numel() - 1)  # [S]
        rate = (1.0 + probs[n]) / (self.seconds + self.heads_seconds)
        return int(n[int(rate.argmax())])

    def to_dict(self) -> dict:
        return {
            "key": self.key,
            "sizes": self.sizes.tolist(),
            "seconds": self.seconds.tolist(),
            "heads_seconds": self.heads_seconds,
        }

    @classmethod
    def from_dict(cls, d: dict) -> LatencyProfile:
        return cls(
            sizes=torch.tensor(d["sizes"], dtype=torch.long),
            seconds=torch.tensor(d["seconds"], dtype=torch.float64),
            heads_seconds=float(d["heads_seconds"]),
            key=d["key"],
        )


def profile_key(model, heads, device: str | torch.device) -> dict:
    """Everything the latency depends on; a change in any of it means a new measurement."""
    cfg = model.config.to_json_string(use_diff=False)
    hcfg = json.dumps(heads.config.to_dict(), sort_keys=True) if heads is not None else ""
    return {
        "model": getattr(model.config, "_name_or_path", "") or type(model).__name__,
        "model_hash": hashlib.sha256((cfg + hcfg).encode()).hexdigest()[:16],
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "device": str(torch.device(device)),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def _key_file(key: dict, cache_dir: str) -> str:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return os.path.join(cache_dir, f"latency-{digest}.json")


@torch.no_grad()
def measure_latency(
    model, heads, sizes=DEFAULT_SIZES, prefix_len: int = 256, reps: int = 3
) -> LatencyProfile:
    """Time one verify step (tree forward + output projection) for each tree size, best of ``reps``."""
    from transformers import DynamicCache

    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    decoder, lm_head = model.get_decoder(), model.get_output_embeddings()
    vocab = lm_head.weight.shape[0]
    g = torch.Generator().manual_seed(0)
    prefix = torch.randint(0, vocab, (1, prefix_len), generator=g).to(device)
    cache = DynamicCache(config=model.config)
    forward_hidden(decoder, prefix, cache, torch.arange(prefix_len, device=device)[None])
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    K = heads.num_heads if heads is not None else 4
    logp = torch.randn(K, 8, generator=g).log_softmax(-1).sort(descending=True).values.to(device)
    seconds = []
    for T in sizes:
        tree = dynamic_tree(logp, T - 1)
        buf = tree_buffers(tree)
        mask = tree_attention_mask(buf.tree_mask, prefix_len, dtype)
        pos = (buf.position_offsets + prefix_len)[None]
        ids = torch.randint(0, vocab, (1, tree.size), generator=g).to(device)
        best = float("inf")
        for _ in range(reps + 1):  # the first run warms up
            sync()
            t0 = time.perf_counter()
            hidden = forward_hidden(decoder, ids, cache, pos, mask)[0]
            project(model, lm_head, hidden).argmax(-1)
            sync()
            best = min(best, time.perf_counter() - t0)
            for layer in cache.layers:  # drop the tree entries again
                layer.crop(-tree.size)
        seconds.append(best)
    heads_s = 0.0
    if heads is not None:
        h = torch.randn(heads.config.hidden_size, generator=g).to(device, dtype)
        runs = []
        for _ in range(reps + 1):
            sync()
            t0 = time.perf_counter()
            heads(h, lm_head).float().topk(8, dim=-1)
            sync()
            runs.append(time.perf_counter() - t0)
        heads_s = min(runs[1:])
    return LatencyProfile(
        sizes=torch.tensor(list(sizes), dtype=torch.long),
        seconds=torch.tensor(seconds, dtype=torch.float64),
        heads_seconds=heads_s,
        key={},
    )


def load_or_measure(
    model,
    heads,
    device: str | torch.device = "cpu",
    sizes=DEFAULT_SIZES,
    cache_dir: str | None = None,
    force: bool = False,
    verbose: bool = True,
) -> LatencyProfile:
    """The cached profile for this (model, heads, dtype, device, threads), measuring it the first time."""
    key = profile_key(model, heads, device)
    cache_dir = cache_dir or os.path.join(cache_root(), "latency")
    path = _key_file(key, cache_dir)
    if not force and os.path.exists(path):
        with open(path) as f:
            prof = LatencyProfile.from_dict(json.load(f))
        if prof.key == key and prof.sizes.tolist() == list(sizes):
            return prof
    if verbose:
        print(
            f"measuring verify latency for {len(sizes)} tree sizes (once; cached in {path}) ...", flush=True
        )
    prof = measure_latency(model, heads, sizes)
    prof.key = key
    os.makedirs(cache_dir, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(prof.to_dict(), f, indent=1)
    os.replace(tmp, path)
    return prof
