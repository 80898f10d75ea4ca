"""Train Medusa heads: one loop, top to bottom.

    accelerate launch [--config_file train/accelerate/<ddp|zero2|zero3>.yaml] train/medusa.py recipes/<name>.yaml \
        [key=value ...]        # also: python train/medusa.py ...  |  python -m train.medusa ...
    python train/medusa.py recipes/smollm2-135m.yaml --dry-run      # print the resolved recipe and exit

mode: medusa1  the base is frozen; only the heads train. loss = sum_k decay**k * CE(head_k(h_t), label_{t+k+2}),
               on assistant tokens only. train.cache_features runs the base once over the data and trains the heads
               on its stored last hidden states (post final norm) instead.
mode: medusa2  LoRA adapters on the base train together with the heads: loss = CE(lm_head(h_t), label_{t+1})
               + distill_weight * KL(base without adapters || with) + coef * heads_loss, with coef warmed up linearly.
heads.head_vocab_size: N > 0 restricts the heads' softmax to the N most frequent labelled tokens of the training data
               (chosen here, stored in the heads' config); other targets count as misses in the accuracy.

Outputs, in output.output_dir:
    checkpoint-{step}/  heads (config.json + model.safetensors, MedusaHeads.from_pretrained loads the folder),
                        adapter/ (medusa2, peft), recipe.yaml, metrics.json, trainer_state.json, state/
                        (accelerate: optimizer, RNG, trainable weights). Written to a .tmp folder, then renamed.
    final/              the same without state/: the heads to use.
    log.jsonl           one line per logged step and per evaluation.
Resuming (output.resume: auto) loads the newest complete checkpoint; the data order is a pure function of
(seed, epoch), so the resumed run replays exactly the batches the uninterrupted run would have seen. A checkpoint
written by a different recipe is refused. output.push_to_hub uploads final/ (train.push) when training ends.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import itertools
import json
import math
import os
import shlex
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field

if __package__ in (None, ""):  # run by path: make the repo root importable instead of train/
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
    sys.path.insert(0, os.path.dirname(_here))

import torch
from torch import nn

import train  # noqa: F401  (first: sets DS_ACCELERATOR on CPU-only machines before DeepSpeed loads)
from infer.cli import fail
from train.checkpoint import (
    CheckpointWriteError,
    checkpoint_damage,
    complete_checkpoints,
    gathered,
    is_deepspeed,
    is_zero3,
    read_state,
    recipe_changes,
    save_checkpoint,
)
from train.config import RecipeError, flatten, load_recipe
from train.features import cache_features, collate_features, to_device, tqdm_
from train.guards import lock_output, model_problem, output_problem
from train.trainee import IGNORE, Trainee, shifted_targets  # noqa: F401  (shifted_targets: the public API)

# process-group timeout while the distill stage runs (the default 10-30 min is too short)
DISTILL_TIMEOUT_H = 12


# ----------------------------------------------------------------------------- data order, eval
def micro_batches(n, batch_size, world, rank, seed, micro_per_epoch, start):
    """Yield this rank's example indices for micro-batch start, start+1, ...: epoch e is a permutation seeded by
    seed + e, cut into global batches of batch_size * world (rank r takes slice r). Pure function of the index."""
    for m in itertools.count(start):
        epoch, i = divmod(m, micro_per_epoch)
        if i == 0 or m == start:
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        g = (i * world + rank) * batch_size
        yield perm[g : g + batch_size]


@torch.no_grad()
def evaluate(accelerator, model, eval_ds, collate_fn, batch_size, mask_key):
    """Per-head loss / top-1 / top-5 over eval_ds (each rank a strided share, padded to equal batch counts)."""
    m = accelerator.unwrap_model(model)
    was_training = m.training
    m.eval()
    world, rank = accelerator.num_processes, accelerator.process_index
    share = list(range(rank, math.ceil(len(eval_ds) / world) * world, world))  # ids >= len are padding
    total = None
    for i in range(0, len(share), batch_size):
        ids = share[i : i + batch_size]
        batch = collate_fn([eval_ds[j if j < len(eval_ds) else 0] for j in ids])
        if mask_key == "labels":  # padding examples: no label counts
            batch["labels"][torch.tensor([j >= len(eval_ds) for j in ids])] = IGNORE
        elif any(j >= len(eval_ds) for j in ids):
            n_real = sum(len(eval_ds[j]["targets"]) for j in ids if j < len(eval_ds))
            batch["targets"][n_real:] = IGNORE  # padding ids come last
        stats = m(to_device(batch, accelerator.device))["stats"]
        total = stats if total is None else total + stats
    total = accelerator.reduce(total, reduction="sum").cpu()
    m.train(was_training)
    rows = []
    for loss_sum, top1, top5, n in total.tolist():
        rates = {"top1": top1, "top5": top5, "loss": loss_sum}
        rows.append({k: round(v / max(n, 1), 5) for k, v in rates.items()} | {"tokens": int(n)})
    K = m.heads.num_heads
    return {"heads": rows[:K], **({"lm": rows[K]} if len(rows) > K else {})}


def head_vocabulary(accelerator, cfg, tokenizer, train_ds, eval_ds):
    """The heads.head_vocab_size most frequent labelled tokens of the training data (+ EOS), sorted by id."""
    from collections import Counter

    from train.head_vocab import choose_vocab, coverage

    if is_zero3(accelerator):
        fail("heads.head_vocab_size slices the lm_head, which ZeRO-3 partitions: use zero2 or ddp")

    def counts(ds):
        return Counter(y for labels in ds["labels"] for y in labels if y != IGNORE)

    train_counts = counts(train_ds)
    vocab = choose_vocab(train_counts, cfg.heads.head_vocab_size, {tokenizer.eos_token_id} - {None})
    line = f"head vocabulary: {len(vocab)} of {len(train_counts)} distinct training tokens"
    line += f", coverage {100 * coverage(train_counts, vocab):.2f}% (train)"
    if eval_ds is not None:
        line += f", {100 * coverage(counts(eval_ds), vocab):.2f}% (eval)"
    accelerator.print(line)
    return vocab


# ----------------------------------------------------------------------------- main
@dataclass
class Run:
    """What one training run carries from stage to stage (:func:`setup` fills it, :func:`resume` and
    :func:`train_loop` advance it, :func:`finish` writes it out)."""

    cfg: object
    recipe: str
    accelerator: object
    release: object  # unlocks the output folder (main process), else None
    ckpt: str | None  # the checkpoint to resume from
    run_id: str
    train_ds: object
    eval_ds: object
    collate_fn: object
    heads: object
    model: object
    optimizer: object
    base_lrs: list
    lora: bool
    steps_per_epoch: int
    micro_per_epoch: int
    total_steps: int
    warmup: int
    start_step: int = 0
    train_time: float = 0.0
    metrics: dict = field(default_factory=dict)

    @property
    def out_dir(self) -> str:
        return self.cfg.output.output_dir

    @property
    def log_path(self) -> str:
        return os.path.join(self.out_dir, "log.jsonl")


def main(argv=None):
    cfg, recipe, dry_run = parse_recipe(argv)
    if dry_run:
        print(cfg.to_yaml(header=f"resolved from {recipe}"), end="")
        return None
    run = setup(cfg, recipe)
    resume(run)
    try:
        stopped = train_loop(run)
        return finish(run, stopped)
    except CheckpointWriteError as e:  # a full disk: said plainly, the heads rescued (final/ or a checkpoint)
        if run.release is not None:
            run.release()
        fail(e)


# ----------------------------------------------------------------------------- setup
def parse_recipe(argv=None):
    """Command line -> (recipe, its path, --dry-run), after every check that needs no model: data files, the model
    id, the output folder, the Hub repo id. A problem ends here with status 2: a recipe that cannot be read or does
    not fit the schema as one line ``error: ...``, the other checks as a usage error."""
    parser = argparse.ArgumentParser(description="Train Medusa heads from a YAML recipe.")
    parser.add_argument("recipe", help="recipes/<name>.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.lr=3e-4 max_steps=100")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved recipe and exit")
    args = parser.parse_args(argv)
    try:
        cfg = load_recipe(args.recipe, args.overrides)
    except RecipeError as e:  # the file (not UTF-8, not YAML, off the schema) or an override
        fail(e)  # one line "error: ...", status 2
    missing = [
        f"{key}: {path}"
        for key, path in (
            ("data.path", cfg.data.path),
            ("data.eval_data", cfg.data.eval_data),
            ("data.calib_data", cfg.data.calib_data),
        )  # fmt: skip
        if path and path.endswith((".json", ".jsonl")) and not os.path.exists(path)
    ]
    if missing:  # before any model is downloaded or loaded
        parser.error(
            f"data file not found: {'; '.join(missing)} (see the recipe's header for how to make it)"
        )
    problem = model_problem(cfg.model.name_or_path, cfg.model.revision) or output_problem(cfg.output)
    if problem:
        parser.error(problem)
    if cfg.output.push_to_hub and not args.dry_run:  # a typo in the repo id fails now, not after hours
        from train.push import PushError, check_repo_id

        try:
            check_repo_id(cfg.output.push_to_hub)
        except PushError as e:
            parser.error(f"output.push_to_hub: {e}")
    return cfg, args.recipe, args.dry_run


def setup(cfg, recipe: str) -> Run:
    """The accelerator, the output lock, the checkpoint to resume, then the base model, data, heads (+ LoRA) and
    optimizer, prepared."""
    from accelerate import Accelerator, InitProcessGroupKwargs
    from accelerate.utils import set_seed

    from infer.model.base import load_base_model

    t, out_dir = cfg.train, cfg.output.output_dir
    # Launched distributed without CUDA: the process group must be gloo (else accelerate sees one process and
    # gather crashes). A plain single process must not get a backend (accelerate would then expect a group).
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    kwargs = [InitProcessGroupKwargs(backend="gloo")] if distributed and not torch.cuda.is_available() else []
    if cfg.distill.enabled and distributed:  # processes wait for the slowest share of the distillation
        backend = {"backend": "gloo"} if kwargs else {}
        kwargs = [InitProcessGroupKwargs(timeout=datetime.timedelta(hours=DISTILL_TIMEOUT_H), **backend)]
    accelerator = Accelerator(
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        mixed_precision=t.mixed_precision,
        log_with=cfg.output.report_to or None,
        project_dir=out_dir,
        kwargs_handlers=kwargs,
    )
    release = None
    if accelerator.is_main_process:
        print(
            cfg.to_yaml(header=f"resolved recipe ({recipe}), {accelerator.num_processes} process(es)"),
            flush=True,
        )
        os.makedirs(out_dir, exist_ok=True)
        release = lock_output(out_dir)  # two runs in one folder would overwrite each other's checkpoints
    set_seed(t.seed)
    ckpt = pick_checkpoint(cfg, accelerator)  # checked before any expensive work
    # checkpoints of this run carry its id: starting over, the earlier run's are pruned at the first save
    run_id = ((read_state(ckpt) or {}).get("run_id") if ckpt else None) or uuid.uuid4().hex

    train_path = cfg.data.path
    if cfg.distill.enabled:  # the first stage: the base answers the conversations itself (cached, resumable)
        from train.distill_stage import distilled_data

        try:
            train_path = distilled_data(cfg, accelerator)
        except (ValueError, OSError) as e:  # data.distill's DistillError is a ValueError naming the problem
            fail(f"distill: {e}")
    m = cfg.model
    base, tokenizer = load_base_model(
        m.name_or_path, m.dtype, m.revision, m.trust_remote_code, accelerator.device, purpose="train"
    )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    collate_fn = functools.partial(_collate, pad_id=pad_id)
    train_ds, eval_ds = build_data(cfg, accelerator, tokenizer, train_path)
    heads, model, train_ds, eval_ds, collate_fn = build_trainee(
        cfg, accelerator, base, tokenizer, train_ds, eval_ds, collate_fn
    )
    lora = cfg.mode == "medusa2"

    # optimizer: torch AdamW; the lr is set by hand each step (cosine with linear warm-up, lr_factor)
    heads_lr = t.lr * (cfg.medusa2.heads_lr_multiplier if lora else 1.0)
    groups = [{"params": [p for p in heads.parameters() if p.requires_grad], "lr": heads_lr}]
    if lora:
        groups.append({"params": [p for p in model.base.parameters() if p.requires_grad], "lr": t.lr})
    optimizer = torch.optim.AdamW(groups, lr=t.lr, betas=tuple(t.adam_betas), weight_decay=t.weight_decay)
    base_lrs = [g["lr"] for g in optimizer.param_groups]

    world = accelerator.num_processes
    micro_per_epoch = len(train_ds) // (t.per_device_batch_size * world)
    steps_per_epoch = micro_per_epoch // t.gradient_accumulation_steps
    if steps_per_epoch < 1:
        fail(
            f"{len(train_ds)} training examples are fewer than one optimizer step needs "
            f"({t.per_device_batch_size} x {world} processes x {t.gradient_accumulation_steps} accumulation)"
        )
    micro_per_epoch = steps_per_epoch * t.gradient_accumulation_steps  # drop the incomplete last step
    total_steps = t.max_steps or max(1, math.ceil(t.num_epochs * steps_per_epoch))

    if is_deepspeed(accelerator):  # no dataloader is prepared: tell DeepSpeed directly
        ds_cfg = accelerator.state.deepspeed_plugin.deepspeed_config
        ds_cfg["train_micro_batch_size_per_gpu"] = t.per_device_batch_size
        if ds_cfg.get("gradient_clipping", "auto") == "auto":
            ds_cfg["gradient_clipping"] = t.max_grad_norm
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_save_state_pre_hook(keep_trainable)
    d = cfg.data
    metrics = {
        "heads": [],
        "train_data": d.path if train_path == d.path else f"{train_path} (distilled from {d.path})",
        "eval_data": d.eval_data or f"{d.eval_fraction:g} of the train data",
    }
    return Run(
        cfg, recipe, accelerator, release, ckpt, run_id, train_ds, eval_ds, collate_fn, heads, model, optimizer,
        base_lrs, lora, steps_per_epoch, micro_per_epoch, total_steps, math.ceil(t.warmup_ratio * total_steps),
        metrics=metrics,
    )  # fmt: skip


def _collate(items, pad_id):
    from data.chat import collate

    return collate(items, pad_id)


def pick_checkpoint(cfg, accelerator) -> str | None:
    """output.resume -> the checkpoint to resume from (auto: the newest intact one; a damaged one is skipped), or
    None; one written by a different recipe is refused."""
    resume_from = cfg.output.resume
    ckpt = None if resume_from in ("none", "auto") else resume_from
    if resume_from == "auto":
        for path in reversed(complete_checkpoints(cfg.output.output_dir)):
            damage = checkpoint_damage(path)
            if damage is None:
                ckpt = path
                break
            accelerator.print(f"warning: {path} is damaged ({damage}); trying the previous checkpoint")
    if ckpt is not None:
        damage = checkpoint_damage(ckpt)
        if damage is not None:
            fail(f"output.resume: {ckpt} is not a complete checkpoint ({damage})")
        changes = recipe_changes(ckpt, cfg.to_dict())
        if changes:
            fail(
                f"{ckpt} was written by a different recipe ({'; '.join(changes)}): resuming would mix two runs. "
                "Use a new output.output_dir, or output.resume=none to start over in this one (its checkpoints "
                "are deleted when the new run saves its first)."
            )
    return ckpt


def build_data(cfg, accelerator, tokenizer, path: str | None = None):
    """-> (train dataset, eval dataset or None): tokenized with the recipe's template; a seeded eval split of the
    training data when no eval file is named (the same on every process and every run); capped as asked.
    ``path``: the training conversations (default data.path; the distilled file after the distill stage)."""
    from data.chat import build_dataset

    d, t = cfg.data, cfg.train
    build = dict(max_length=d.max_length, template=d.template, skip_bad=d.skip_bad, pack=d.pack)
    build |= dict(cache_dir=d.cache_dir, num_proc=d.num_proc)
    with accelerator.main_process_first():
        train_ds = build_dataset(tokenizer, path or d.path, split=d.split, **build)
        eval_ds = build_dataset(tokenizer, d.eval_data, split=d.eval_split, **build) if d.eval_data else None
    if eval_ds is None and d.eval_fraction > 0:
        perm = torch.randperm(len(train_ds), generator=torch.Generator().manual_seed(t.seed)).tolist()
        n_eval = max(1, round(d.eval_fraction * len(train_ds)))
        eval_ds, train_ds = train_ds.select(sorted(perm[:n_eval])), train_ds.select(sorted(perm[n_eval:]))
    if d.max_train_examples:
        train_ds = train_ds.select(range(min(d.max_train_examples, len(train_ds))))
    if d.max_eval_examples and eval_ds is not None:
        eval_ds = eval_ds.select(range(min(d.max_eval_examples, len(eval_ds))))
    return train_ds, eval_ds


def build_trainee(cfg, accelerator, base, tokenizer, train_ds, eval_ds, collate_fn):
    """The heads (initialised from the base lm_head) in their Trainee: on cached features (the base run once), or
    on the base (+ LoRA for medusa2) -> (heads, trainee, train_ds, eval_ds, collate_fn), the datasets and the
    collate function replaced by the features' when cached."""
    from infer.draft.heads import MedusaConfig, MedusaHeads

    t = cfg.train
    lm_head = base.get_output_embeddings()
    hcfg = MedusaConfig(
        hidden_size=lm_head.in_features,  # not weight.shape: ZeRO-3 loads the base partitioned
        vocab_size=lm_head.out_features,
        medusa_num_heads=cfg.heads.medusa_num_heads,
        medusa_num_layers=cfg.heads.medusa_num_layers,
        layout=cfg.heads.layout,
        head_type=cfg.heads.head_type,
        base_model_name_or_path="" if os.path.isdir(cfg.model.name_or_path) else cfg.model.name_or_path,
        base_model_revision=cfg.model.revision,
    )
    if cfg.heads.head_vocab_size:
        hcfg.head_vocab = head_vocabulary(accelerator, cfg, tokenizer, train_ds, eval_ds)
    heads = MedusaHeads(hcfg)
    with gathered(accelerator, [lm_head.weight]):
        heads.init_from_lm_head(lm_head)
    lora = cfg.mode == "medusa2"
    tk = dict(decay=cfg.heads.decay, logits_dtype=t.logits_dtype, lora=lora)
    if t.cache_features:
        if is_zero3(accelerator):
            fail("train.cache_features runs the base outside DeepSpeed: use ddp.yaml or zero2.yaml")
        train_ds = cache_features(accelerator, cfg, base, train_ds, collate_fn, "train")
        eval_ds = cache_features(accelerator, cfg, base, eval_ds, collate_fn, "eval") if eval_ds else None
        frozen = nn.Linear(hcfg.hidden_size, hcfg.vocab_size, bias=False, dtype=lm_head.weight.dtype)
        frozen.weight.data.copy_(lm_head.weight.data)
        embed = None
        if heads.sequential:  # the path tokens' embeddings: a frozen copy of the base's input embeddings
            src = base.get_input_embeddings()
            embed = nn.Embedding.from_pretrained(src.weight.data.clone(), freeze=True)
        model = Trainee(heads, lm_head=frozen.requires_grad_(False), embed=embed, **tk)
        return heads, model, train_ds, eval_ds, collate_features
    if lora:
        from peft import LoraConfig, get_peft_model

        m2 = cfg.medusa2
        lcfg = dict(r=m2.lora_r, lora_alpha=m2.lora_alpha, lora_dropout=m2.lora_dropout)
        base = get_peft_model(
            base, LoraConfig(**lcfg, target_modules=m2.lora_target_modules, task_type="CAUSAL_LM")
        )
        if t.gradient_checkpointing:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return heads, Trainee(heads, base=base, **tk), train_ds, eval_ds, collate_fn


def keep_trainable(models, weights, _dir):
    """accelerate's save hook: state/ holds the trainable weights, not the frozen base (DeepSpeed saves its own,
    exclude_frozen_parameters: weights is empty then)."""
    for i in range(len(weights)):
        names = {n for n, p in models[i].named_parameters() if p.requires_grad}
        weights[i] = {k: v for k, v in weights[i].items() if k in names}


def lr_factor(step: int, warmup: int, total_steps: int) -> float:
    """Linear warm-up then cosine to 0; ``step`` is 0-based (the update about to happen)."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup)))


# ----------------------------------------------------------------------------- resume, the loop, finish
def resume(run: Run) -> None:
    """Load the checkpoint (if any) into the prepared model and optimizer; start the log and the trackers."""
    accelerator, ckpt = run.accelerator, run.ckpt
    if ckpt is not None:
        ds_kw = {"load_module_strict": False} if is_deepspeed(accelerator) else {"strict": False}
        try:
            accelerator.load_state(os.path.join(ckpt, "state"), **ds_kw)
        except Exception as e:  # damage the manifest cannot see (same size, bad bytes)
            fail(
                f"{ckpt}/state could not be loaded ({type(e).__name__}: {e}); move that checkpoint away to resume "
                "from the previous one, or start over with output.resume=none"
            )
        with open(os.path.join(ckpt, "trainer_state.json")) as f:
            state = json.load(f)
        run.start_step, run.train_time = state["step"], state["train_time_s"]
        if state.get("num_processes", accelerator.num_processes) != accelerator.num_processes:
            accelerator.print(
                f"warning: {ckpt} had {state['num_processes']} processes: the data order differs"
            )
        with open(os.path.join(ckpt, "metrics.json")) as f:
            run.metrics = json.load(f)
        accelerator.print(f"resumed from {ckpt} at step {run.start_step}")
    if run.cfg.output.report_to:
        accelerator.init_trackers(run.cfg.output.project_name, config=flatten(run.cfg.to_dict()))
    if (
        accelerator.is_main_process
    ):  # a fresh run starts a fresh log; half-written .tmp checkpoints are dropped
        if run.start_step == 0 and os.path.exists(run.log_path):
            os.remove(run.log_path)
        for name in (n for n in os.listdir(run.out_dir) if n.endswith(".tmp")):
            shutil.rmtree(os.path.join(run.out_dir, name), ignore_errors=True)


def log(run: Run, record: dict) -> None:
    if run.accelerator.is_main_process:
        with open(run.log_path, "a") as f:
            f.write(json.dumps(record) + "\n")
    if run.cfg.output.report_to:
        run.accelerator.log(flatten(record), step=record["step"])


def run_eval(run: Run, step: int) -> None:
    if run.eval_ds is None:
        return
    t = run.cfg.train
    mask_key = "targets" if t.cache_features else "labels"
    result = evaluate(run.accelerator, run.model, run.eval_ds, run.collate_fn, t.eval_batch_size, mask_key)
    run.metrics |= {
        "step": step,
        **result,
        "train_time_s": round(run.train_time, 1),
        "eval_examples": len(run.eval_ds),
    }
    line = " ".join(f"{h['top1']:.3f}/{h['top5']:.3f}" for h in result["heads"])
    run.accelerator.print(f"eval step {step}: per-head top1/top5 {line}")
    log(run, {"step": step, "eval": result})


def state_at(run: Run, step: int) -> dict:
    progress = {"step": step, "total_steps": run.total_steps, "epoch": step / run.steps_per_epoch}
    world = run.accelerator.num_processes
    return progress | {"train_time_s": round(run.train_time, 3), "num_processes": world, "run_id": run.run_id}


def train_loop(run: Run) -> bool:
    """The optimizer steps from run.start_step to the end -> True when train.stop_after_steps stopped it early."""
    cfg, accelerator, model, optimizer = run.cfg, run.accelerator, run.model, run.optimizer
    t, m2 = cfg.train, cfg.medusa2
    world, rank = accelerator.num_processes, accelerator.process_index
    accelerator.print(
        f"{len(run.train_ds)} train / {len(run.eval_ds) if run.eval_ds else 0} eval examples; {run.total_steps} "
        f"steps of {t.per_device_batch_size} x {world} x {t.gradient_accumulation_steps}; "
        f"{run.steps_per_epoch} steps/epoch"
    )
    start_micro = run.start_step * t.gradient_accumulation_steps  # resuming: skip what was consumed
    batches = micro_batches(
        len(run.train_ds), t.per_device_batch_size, world, rank, t.seed, run.micro_per_epoch, start_micro
    )
    model.train()
    bar = tqdm_(run.total_steps, "train", accelerator, initial=run.start_step)
    for step in range(run.start_step, run.total_steps):
        t0 = time.time()
        for g, lr0 in zip(optimizer.param_groups, run.base_lrs):
            g["lr"] = lr0 * lr_factor(step, run.warmup, run.total_steps)
        coef = (
            m2.heads_coefficient * min(1.0, (step + 1) / max(1, m2.heads_warmup_steps)) if run.lora else 1.0
        )
        loss_sum, heads_sum = 0.0, 0.0
        for _ in range(t.gradient_accumulation_steps):
            idx = next(batches)
            batch = to_device(run.collate_fn([run.train_ds[i] for i in idx]), accelerator.device)
            with accelerator.accumulate(model):
                out = model(
                    batch, heads_coefficient=coef, distill_weight=m2.distill_weight if run.lora else 0.0
                )
                accelerator.backward(out["loss"])
                grad_norm = None
                if accelerator.sync_gradients and t.max_grad_norm > 0:
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), t.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            loss_sum += out["loss"].detach() / t.gradient_accumulation_steps
            heads_sum += out["heads_loss"] / t.gradient_accumulation_steps
        if not bool(torch.isfinite(loss_sum)):  # one host sync per step: a diverged run must not be saved
            fail(
                f"training diverged at step {step + 1}: the loss is {float(loss_sum)} (train.lr={t.lr}); nothing of "
                f"this step was saved; the last good checkpoint (if any) is in {run.out_dir}. Lower train.lr."
            )
        run.train_time += time.time() - t0
        done = step + 1
        bar.update(1)
        if done % t.log_every == 0 or done == run.total_steps:
            vals = accelerator.reduce(torch.stack([loss_sum, *heads_sum]).float(), reduction="mean").tolist()
            record = {"step": done, "epoch": round(done / run.steps_per_epoch, 3), "loss": round(vals[0], 5)}
            record["heads_loss"] = [round(x, 4) for x in vals[1:]]
            record |= {"lr": optimizer.param_groups[0]["lr"], "coef": coef}  # group 0: the heads
            record["grad_norm"] = None if grad_norm is None else round(float(grad_norm), 4)
            bar.set_postfix(loss=f"{vals[0]:.4f}")
            log(run, record)
        if t.eval_every and done % t.eval_every == 0 and done != run.total_steps:
            run_eval(run, done)
        if cfg.output.save_every and done % cfg.output.save_every == 0:
            save_checkpoint(
                accelerator, model, cfg, f"checkpoint-{done}", state_at(run, done), run.metrics, True
            )
        if t.stop_after_steps and done >= t.stop_after_steps:
            accelerator.print(f"train.stop_after_steps={t.stop_after_steps}: stopping without a final save")
            bar.close()
            return True
    bar.close()
    return False


def finish(run: Run, stopped: bool):
    """The last evaluation, final/ (+ calibration on the calib split, exports, the Hub push), then the end of
    training and the output lock -> the metrics."""
    cfg, accelerator, out_dir = run.cfg, run.accelerator, run.out_dir
    final = os.path.join(out_dir, "final")
    is_main = accelerator.is_main_process
    if not stopped:
        run_eval(run, run.total_steps)
        run.metrics["train_time_s"] = round(run.train_time, 1)
        state = state_at(run, run.total_steps)
        hashes = save_checkpoint(accelerator, run.model, cfg, "final", state, run.metrics, False)
        accelerator.print(
            f"done: {final} ({run.train_time:.0f} s of training); params sha256 {hashes[0][:12]}"
        )
        d, m = cfg.data, cfg.model
        if d.calib_data and is_main:  # on the split the heads did not train on
            from infer.draft.heads import HeadsError
            from train.calibrate import CalibrationError, calibrate

            try:
                calibrate(
                    final, d.calib_data, split=d.calib_split, model_name=m.name_or_path, dtype=m.dtype,
                    max_examples=d.calib_max_examples or None,
                )  # fmt: skip
            except (CalibrationError, HeadsError, RecipeError, ValueError, OSError) as e:
                accelerator.print(f"calibration failed ({e}); the heads in final/ are usable uncalibrated")
    if not stopped and is_main:
        export(cfg, final)
    push_error = push(cfg, final) if not stopped and is_main else None
    accelerator.end_training()
    if run.release is not None:
        run.release()
    if push_error:
        fail(push_error)
    return run.metrics


def export(cfg, final):
    """output.export: final/ in each serving engine's layout, under output_dir/export/<format>. A failure is
    reported and training still succeeds (final/ is complete; ``python -m train.export`` can redo it)."""
    from train.export import ExportError, export_heads

    for fmt in cfg.output.export:
        out = os.path.join(cfg.output.output_dir, "export", fmt)
        try:
            export_heads(final, fmt, out, base_model=cfg.model.name_or_path, force=True)
            print(f"exported {final} for {fmt}: {out}")
        except (ExportError, ValueError, OSError) as e:
            print(
                f"export to {fmt} failed ({e}); retry: python -m train.export {final} --format {fmt} --out {out}"
            )


def push(cfg, final):
    """output.push_to_hub: upload final/ (heads, recipe, calibration, metrics, model card) -> an error or None."""
    o = cfg.output
    if not o.push_to_hub:
        return None
    from train.push import PushError, push_to_hub

    try:  # token: HF_TOKEN or `hf auth login`; endpoint: HF_ENDPOINT (huggingface_hub's defaults otherwise)
        kw = dict(private=o.hub_private, base_model=o.hub_base_model, endpoint=os.environ.get("HF_ENDPOINT"))
        result = push_to_hub(final, o.push_to_hub, **kw)
    except PushError as e:
        retry = f"python -m train.push {shlex.quote(final)} {o.push_to_hub}"
        retry += " --private" * bool(o.hub_private)
        retry += f" --base-model {shlex.quote(o.hub_base_model)}" if o.hub_base_model else ""
        return f"training finished, but {e}\nretry: {retry}"
    print(f"pushed {final} to {o.push_to_hub}: {result.commit_url}")
    return None


if __name__ == "__main__":
    main()
