"""Self-distillation as the first stage of a training run (``distill.enabled: true`` in the recipe).

``data.path`` names the conversations to learn from (a ShareGPT-format file, a dataset folder or a Hub dataset id);
before the heads train, the base model answers every user turn itself (:func:`data.distill.distill`, greedy by
default), and training reads those answers. Medusa heads must learn what the base says, not what another model once
wrote (the original Medusa recipe's self-distillation step), and with this stage the recipe's one launch command does
it all.

- Parallel: under accelerate each process answers its share (every ``world``-th conversation) into its own part file
  ``<output>.part-<rank>-of-<world>``; the main process then merges the parts in input order into ``<output>``.
- Resumable: a killed run starts again where its parts stopped (records are written whole, and a part refuses
  settings other than those it was begun with). Resuming with another number of processes starts new parts.
- Cached: once ``<output>`` holds every conversation, later runs (a resumed training, a second recipe on the same
  data) read it and load no model for it; one distilled with other settings is refused with the way out.
"""

from __future__ import annotations

import gc
import glob
import json
import os

import torch

PROVENANCE_KEYS = ("model", "revision", "temperature", "max_new_tokens")  # what a reused output must match


def distill_output(cfg) -> str:
    return cfg.distill.output or os.path.join(cfg.output.output_dir, "distilled.jsonl")


def _complete(path: str, ids: list[str], settings: dict) -> bool:
    """True when ``path`` holds every id, distilled with ``settings``; raises ValueError when its settings differ."""
    if not os.path.exists(path):
        return False
    with open(path, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    for r in records[:1]:
        theirs = {k: (r.get("provenance") or {}).get(k) for k in PROVENANCE_KEYS}
        if theirs != settings:
            raise ValueError(
                f"{path} was distilled with {theirs}, this recipe asks for {settings}: delete it, or set "
                "distill.output to a new file"
            )
    return set(ids) <= {r.get("id") for r in records}


def distilled_data(cfg, accelerator) -> str:
    """Run (or resume, or reuse) the distillation of ``cfg.data.path`` -> the distilled JSONL training reads."""
    from data.distill import distill, read_records

    d, m = cfg.distill, cfg.model
    out = distill_output(cfg)
    settings = {
        "model": m.name_or_path,
        "revision": m.revision,
        "temperature": d.temperature,
        "max_new_tokens": d.max_new_tokens,
    }
    records = read_records(cfg.data.path, limit=d.max_conversations or None, skip_bad=cfg.data.skip_bad)
    ids = [r["id"] for r in records]
    if _complete(out, ids, settings):
        if accelerator.is_main_process:
            print(f"distill: reusing {out} ({len(ids)} conversations answered by the base)", flush=True)
        return out
    rank, world = accelerator.process_index, accelerator.num_processes
    part = f"{out}.part-{rank}-of-{world}"
    if accelerator.is_main_process:
        print(
            f"distill: the base answers {len(records)} conversations of {cfg.data.path} "
            f"({world} process(es), resumable) into {out}",
            flush=True,
        )
    stats = distill(
        records[rank::world],
        part,
        model_name=m.name_or_path,
        revision=m.revision,
        batch_size=d.batch_size,
        max_new_tokens=d.max_new_tokens,
        temperature=d.temperature,
        dtype=m.dtype,
        device=str(accelerator.device),
        progress=accelerator.is_main_process,
    )
    gc.collect()  # the distilling copy of the base is gone before training loads its own
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _merge(out, ids, world)
        print(
            f"distill: done ({stats['written']} new on the main process, {stats['already_done']} resumed)",
            flush=True,
        )
    accelerator.wait_for_everyone()
    return out


def _merge(out: str, ids: list[str], world: int) -> None:
    """The parts of this world size -> ``out`` in input order (written beside it, then renamed into place)."""
    by_id = {}
    for part in sorted(glob.glob(f"{glob.escape(out)}.part-*-of-{world}")):
        with open(part, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    rec = json.loads(line)
                    by_id[rec["id"]] = line if line.endswith("\n") else line + "\n"
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise RuntimeError(
            f"distill: {len(missing)} conversations have no answer in the parts (first: {missing[0]})"
        )
    tmp = out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(by_id[i] for i in ids)
    os.replace(tmp, out)
