"""The step timer: median seconds of one forward step (+ the output projection) of T tokens after a prompt, for
each T. The dtype choice (:mod:`infer.model.hardware`) and the node budget's latency profiles
(:mod:`infer.draft.budget`) both time steps with it, and both check what they get with :func:`non_monotone`."""

from __future__ import annotations

import statistics
import time

import torch

from .backbone import forward_hidden, project, tree_attention_mask

MONOTONE_TOL = 0.3  # a bigger step may be at most 30 % faster than a smaller one (timer noise, kernel choice)


@torch.no_grad()
def time_steps(model, sizes, prefix_len: int = 256, reps: int = 3, batch: int = 1) -> list[float]:
    """-> median seconds of a step of T tokens for each T in ``sizes``, ``batch`` rows each: T tokens in a chain
    after a ``prefix_len``-token prompt (an eager step costs the same whatever its tree mask), the sizes interleaved
    within each repetition (a burst of load hits all sizes alike), the median of ``reps`` after a warm-up round."""
    from transformers import DynamicCache

    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    decoder, lm_head = model.get_decoder(), model.get_output_embeddings()
    vocab = lm_head.weight.shape[0]
    g = torch.Generator().manual_seed(0)
    prefix = torch.randint(0, vocab, (batch, prefix_len), generator=g).to(device)
    cache = DynamicCache(config=model.config)
    forward_hidden(decoder, prefix, cache, torch.arange(prefix_len, device=device).expand(batch, -1))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    steps = []
    for T in sizes:
        chain = torch.ones(T, T, dtype=torch.bool, device=device).tril()
        mask = tree_attention_mask(chain, prefix_len, dtype)
        pos = (torch.arange(T, device=device) + prefix_len)[None].expand(batch, -1)
        ids = torch.randint(0, vocab, (batch, T), generator=g).to(device)
        steps.append((ids, pos, mask))
    runs = [[] for _ in sizes]
    for rep in range(reps + 1):  # round 0 warms up
        for i, (ids, pos, mask) in enumerate(steps):
            sync()
            t0 = time.perf_counter()
            hidden = forward_hidden(decoder, ids, cache, pos, mask)
            project(model, lm_head, hidden).argmax(-1)
            sync()
            if rep:
                runs[i].append(time.perf_counter() - t0)
            for layer in cache.layers:  # drop the step's entries again
                layer.crop(-ids.shape[1])
    return [statistics.median(r) for r in runs]


def non_monotone(sizes, seconds, tol: float = MONOTONE_TOL) -> tuple[int, int] | None:
    """The first (smaller, bigger) pair of step sizes where the bigger one is faster beyond ``tol``, else None."""
    sec = [float(s) for s in seconds]
    for j in range(1, len(sec)):
        i = max(range(j), key=lambda a: sec[a])
        if sec[j] < sec[i] * (1.0 - tol):
            return int(sizes[i]), int(sizes[j])
    return None
