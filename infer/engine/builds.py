"""Building the compiled steps' packages side by side.

A package build (``torch.export`` + AOTInductor + the C++ compiler, :func:`infer.engine.single.build_step`) runs on
one core for a minute or so: on a 2-core CPU the one-row engine's two packages took 66 + 55 s one after the other,
with the other core idle. :func:`build_in_parallel` builds the missing packages of an engine in groups, one group here
and each other group in a child process (``python -m infer.engine.builds``) that loads the same weights from the
model's folder on disk, checks their fingerprint, builds its group into the same package folder and exits; the
engine then loads every package as usual (one a child could not build is built here, one by one, as before).

Only where nothing in a build is timed: with our bf16 kernels (:mod:`infer.engine.kernels`) no matmul is left to
autotune, so builds side by side cannot skew a measurement (autotuning under load would be cached wrong). Elsewhere,
for a model with no folder on disk (built in code, or a Hub id), with one core, or under ``MEDUSA_PARALLEL_BUILDS=0``:
one by one, in this process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import torch


def cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def model_folder(model) -> str | None:
    """The local folder ``model`` was loaded from (config + weights), if there is one and it needs no remote code."""
    path = getattr(model.config, "_name_or_path", "") or ""
    if not os.path.isfile(os.path.join(path, "config.json")) or getattr(model.config, "auto_map", None):
        return None
    return os.path.abspath(path)


def build_in_parallel(owner, jobs: list[tuple[int, int | None]]) -> None:
    """Build the packages of ``jobs`` ((tokens, rows) each; see :func:`infer.engine.single.step_package`) that
    ``owner`` (a compiled engine) lacks, in up to ``cores()`` groups at once: the first group here, the others each
    in a child process. Does nothing where it cannot (see the module docstring): the engine builds them one by one."""
    from .single import build_step, step_package, weights_fingerprint

    missing = [(t, r) for t, r in jobs if not os.path.exists(step_package(owner.folder, r, t, owner.kernel))]
    folder = model_folder(owner.model)
    n = min(len(missing), cores())
    if (
        n < 2
        or owner.kernel is None
        or folder is None
        or os.environ.get("MEDUSA_PARALLEL_BUILDS", "1") == "0"
    ):
        return
    groups = [missing[i::n] for i in range(n)]
    spec = {
        "model": folder,
        "dtype": str(owner.dtype).replace("torch.", ""),
        "fingerprint": weights_fingerprint(owner.model),
        "kernel": owner.kernel,
        "folder": owner.folder,
        "autotune": owner.autotune,
    }
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # where `infer` lives
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    env["HF_HUB_OFFLINE"] = "1"  # the weights are on disk
    t0 = time.perf_counter()
    children = []
    os.makedirs(owner.folder, exist_ok=True)
    for group in groups[1:]:
        arg = json.dumps(spec | {"jobs": group})
        log = open(os.path.join(owner.folder, f".build-{os.getpid()}-{len(children)}.log"), "w+")
        cmd = [sys.executable, "-m", "infer.engine.builds", arg]
        children.append((subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    if owner.verbose:
        shapes = ", ".join(f"{r or 'B'}x{t}" for g in groups[1:] for t, r in g)
        print(f"engine: building the steps {shapes} (rows x tokens) in {len(children)} more process(es) "
              "meanwhile", flush=True)  # fmt: skip
    try:
        for t, r in groups[0]:
            build_step(owner, t, r)
    except (
        BaseException
    ):  # this build failed (the engine falls back to eager) or was interrupted: stop theirs too
        for proc, log in children:
            proc.kill()
            proc.wait()
            log.close()
            os.unlink(log.name)
        raise
    for proc, log in children:
        proc.wait()
        log.seek(0)
        said = log.read().strip().splitlines()
        log.close()
        os.unlink(log.name)
        if proc.returncode != 0 and owner.verbose:
            last = said[-1][:200] if said else f"exit status {proc.returncode}"
            print(f"engine: a side build failed ({last}); building those steps here", flush=True)
    if owner.verbose:
        print(
            f"engine: {len(missing)} steps built side by side in {time.perf_counter() - t0:.0f} s", flush=True
        )


def main(argv: list[str] | None = None) -> int:
    """A child of :func:`build_in_parallel`: argv[0] is its JSON spec (model folder, dtype, weights fingerprint,
    kernel name, package folder, autotune, jobs)."""
    from types import SimpleNamespace

    from transformers import AutoModelForCausalLM

    from . import kernels
    from .single import StepModule, build_step, cache_shape, weights_fingerprint

    spec = json.loads((argv if argv is not None else sys.argv[1:])[0])
    # loaded as load_base_model loads it (float32, then the dtype): the same weights, bit for bit (checked next)
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    model.eval().requires_grad_(False).to(getattr(torch, spec["dtype"]))
    if weights_fingerprint(model) != spec["fingerprint"]:
        print("error: the weights on disk are not the engine's (fingerprints differ)", file=sys.stderr)
        return 2
    if kernels.wanted(model) != spec["kernel"]:
        print("error: this process would build other kernels than the engine's", file=sys.stderr)
        return 2
    layers, kv_heads, head_dim = cache_shape(model)
    p = next(model.parameters())
    owner = SimpleNamespace(model=model, module=StepModule(model).eval(), folder=spec["folder"], backend="aoti",
                            autotune=spec["autotune"], verbose=False, kernel=spec["kernel"], device=p.device,
                            dtype=p.dtype, layers=layers, kv_heads=kv_heads, head_dim=head_dim)  # fmt: skip
    for t, r in spec["jobs"]:
        build_step(owner, t, r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
