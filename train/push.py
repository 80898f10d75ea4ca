"""Push trained Medusa heads to the Hugging Face Hub, in one commit.

    python -m train.push CHECKPOINT REPO_ID [--private] [--revision BRANCH] [--commit-message MSG]
                         [--base-model HUB_ID] [--license ID] [--dry-run OUT_DIR] [--token TOKEN]

What is uploaded: the heads (``config.json``, ``model.safetensors``), the resolved ``recipe.yaml``,
``calibration.json`` and ``metrics.json`` when the checkpoint has them, and a generated ``README.md`` model card
(see :mod:`train.model_card`). Nothing else: optimizer / scheduler / RNG state stays local.

Safety:

- The checkpoint folder is only read. The upload is staged in a temporary folder (the config is rewritten there when
  ``--base-model`` replaces the recorded base model), so a failed push (network error, 401, 500) leaves the
  checkpoint untouched and the same command can simply be run again.
- All files go in a single commit: the repo has either all of them or none.
- The base model must be a Hub id. A config that records a local path (``/data/llama``, ``./base``, ``~/m``, or any
  path that exists on disk) is refused until ``--base-model HUB_ID`` names the Hub id.
- The token is resolved by huggingface_hub (``--token``, else ``HF_TOKEN``, else ``hf auth login``). It is never
  printed or logged, and it is scrubbed from error messages.

``--dry-run OUT_DIR`` writes the exact folder that would be uploaded and prints its listing; nothing is sent.
From Python, at the end of training: ``push_to_hub(checkpoint_dir, "me/my-heads")``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field

from infer.draft.heads import CONFIG_NAME, WEIGHTS_NAME, HeadsError, MedusaConfig, MedusaHeads
from train.config import Recipe, RecipeError, read_saved_recipe
from train.model_card import build_model_card

RECIPE_NAME = "recipe.yaml"
CALIBRATION_NAME = "calibration.json"
METRICS_NAME = "metrics.json"
CARD_NAME = "README.md"
REQUIRED_FILES = (CONFIG_NAME, WEIGHTS_NAME, RECIPE_NAME)
OPTIONAL_FILES = (CALIBRATION_NAME, METRICS_NAME)
# Everything a push manages in the repo. An optional file that an earlier push uploaded but this checkpoint lacks is
# deleted in the same commit, so stale calibration or metrics never sit next to new heads.
MANAGED_FILES = (CARD_NAME, *REQUIRED_FILES, *OPTIONAL_FILES)


# Top-level packages whose exceptions mean the Hub could not be reached (huggingface_hub's HTTP stack, any version).
_NETWORK_MODULES = ("httpx", "httpcore", "requests", "urllib3")


class PushError(RuntimeError):
    """A push that cannot be done (bad checkpoint, local base model path) or that the Hub refused."""


@dataclass
class PushResult:
    repo_id: str
    revision: str
    commit_url: str
    commit_oid: str
    files: list[str] = field(default_factory=list)
    changed: bool = True  # False: the repo already had exactly these files, no commit was made


@dataclass
class Checkpoint:
    """What a training checkpoint folder holds, read and checked once."""

    path: str
    config: dict
    recipe: Recipe  # recipe.yaml read back through the schema
    metrics: dict | None
    files: list[str]  # names to upload from the folder, in upload order


# ---------------------------------------------------------------------- checkpoint + base model
def read_checkpoint(path: str) -> Checkpoint:
    """Read and check a checkpoint folder; raise PushError with what is missing or broken."""
    if not os.path.isdir(path):
        raise PushError(f"checkpoint folder not found: {path!r}")
    for name in REQUIRED_FILES:
        if not os.path.isfile(os.path.join(path, name)):
            raise PushError(f"{path}: no {name} (a training checkpoint has {', '.join(REQUIRED_FILES)})")
    config = _read_json(os.path.join(path, CONFIG_NAME))
    try:
        cfg = MedusaConfig.from_dict(config)
    except (HeadsError, TypeError) as e:
        raise PushError(f"{path}/{CONFIG_NAME} is not a Medusa heads config: {e}") from e
    _check_weights(os.path.join(path, WEIGHTS_NAME), cfg)
    try:
        recipe = read_saved_recipe(path)
    except RecipeError as e:
        raise PushError(f"{e} (the checkpoint's recipe is read back through the training schema)") from None
    files = list(REQUIRED_FILES)
    metrics = None
    for name in OPTIONAL_FILES:
        file = os.path.join(path, name)
        if os.path.isfile(file):
            data = _read_json(file)
            if name == METRICS_NAME:
                metrics = data if isinstance(data, dict) else None
            files.append(name)
    return Checkpoint(path=path, config=config, recipe=recipe, metrics=metrics, files=files)


def _read_json(file: str):
    try:
        with open(file) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise PushError(f"cannot read {file}: {e}") from e


def _check_weights(file: str, cfg: MedusaConfig) -> None:
    """The safetensors file holds exactly the tensors the config describes (shapes read from the header only)."""
    import torch
    from safetensors import safe_open

    with torch.device("meta"):  # no memory: only names and shapes are needed
        expected = {k: tuple(v.shape) for k, v in MedusaHeads(cfg).state_dict().items()}
    try:
        with safe_open(file, framework="pt") as f:
            found = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise PushError(f"cannot read {file}: {e}") from e
    if found != expected:
        missing = sorted(set(expected) - set(found))
        extra = sorted(set(found) - set(expected))
        shapes = sorted(k for k in set(found) & set(expected) if found[k] != expected[k])
        raise PushError(
            f"{file} does not match {CONFIG_NAME}: missing {missing[:5]}, unexpected {extra[:5]}, "
            f"wrong shapes {shapes[:5]}"
        )


def is_local_path(name: str) -> bool:
    """A base model recorded as a filesystem path rather than a Hub id."""
    return (
        name.startswith(("/", ".", "~", "\\"))
        or os.path.exists(name)
        or os.path.exists(os.path.expanduser(name))
    )


def resolve_base_model(recorded: str, override: str | None = None) -> str:
    """The Hub id to publish as ``base_model``: ``override`` when given, else the config's, never a local path."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    hint = "pass --base-model HUB_ID (e.g. --base-model HuggingFaceTB/SmolLM2-135M-Instruct)"
    if override is not None:
        name, source = override, "--base-model"
        if override.startswith(("/", ".", "~", "\\")):
            raise PushError(f"--base-model must be a Hub id (owner/name), not a local path: {override!r}")
    else:
        name, source = recorded, f"{CONFIG_NAME} base_model_name_or_path"
        if not recorded:
            raise PushError(f"the heads config does not name its base model; {hint}")
        if is_local_path(recorded):
            raise PushError(
                f"the heads were trained from a local base model path ({recorded!r}); the Hub card and config "
                f"need the base model's Hub id: {hint}"
            )
    try:
        validate_repo_id(name)
    except HFValidationError as e:
        raise PushError(f"{source} {name!r} is not a valid Hub id: {e}") from e
    return name


def check_repo_id(repo_id: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise PushError(f"invalid repo id {repo_id!r}: {e}") from e
    if repo_id.count("/") != 1:
        raise PushError(f"repo id must be owner/name (heads are loaded by that id), got {repo_id!r}")


# ---------------------------------------------------------------------- staging
def stage(
    checkpoint: str | Checkpoint,
    out_dir: str,
    repo_id: str,
    *,
    base_model: str | None = None,
    license: str | None = None,
    revision: str | None = None,
) -> list[str]:
    """Write the exact upload into ``out_dir`` (which must exist and be empty); return the file names, sorted."""
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else read_checkpoint(checkpoint)
    check_repo_id(repo_id)
    base = resolve_base_model(ckpt.config.get("base_model_name_or_path", ""), base_model)
    for name in ckpt.files:
        if name == CONFIG_NAME and ckpt.config.get("base_model_name_or_path") != base:
            config = {**ckpt.config, "base_model_name_or_path": base}
            with open(os.path.join(out_dir, CONFIG_NAME), "w") as f:
                json.dump(config, f, indent=2)
        else:
            shutil.copyfile(os.path.join(ckpt.path, name), os.path.join(out_dir, name))
    card = build_model_card(
        config={**ckpt.config, "base_model_name_or_path": base},
        repo_id=repo_id,
        base_model=base,
        recipe=ckpt.recipe,
        metrics=ckpt.metrics,
        license=license,
        files=[CARD_NAME, *ckpt.files],
        revision=revision,
    )
    with open(os.path.join(out_dir, CARD_NAME), "w") as f:
        f.write(card)
    return sorted([CARD_NAME, *ckpt.files])


def dry_run(
    checkpoint: str,
    out_dir: str,
    repo_id: str,
    *,
    base_model: str | None = None,
    license: str | None = None,
    revision: str | None = None,
) -> list[str]:
    """``stage`` into a new (or empty) ``out_dir`` outside the checkpoint; nothing touches the network."""
    ckpt_abs = os.path.realpath(checkpoint)
    out_abs = os.path.realpath(out_dir)
    if out_abs == ckpt_abs or out_abs.startswith(ckpt_abs + os.sep):
        raise PushError(f"--dry-run folder {out_dir!r} must be outside the checkpoint folder")
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise PushError(f"--dry-run folder {out_dir!r} exists and is not empty")
    ckpt = read_checkpoint(checkpoint)  # check everything before creating anything
    check_repo_id(repo_id)
    resolve_base_model(ckpt.config.get("base_model_name_or_path", ""), base_model)
    os.makedirs(out_dir, exist_ok=True)
    return stage(ckpt, out_dir, repo_id, base_model=base_model, license=license, revision=revision)


# ---------------------------------------------------------------------- push
def push_to_hub(
    checkpoint: str,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
    base_model: str | None = None,
    license: str | None = None,
    endpoint: str | None = None,
) -> PushResult:
    """Create ``repo_id`` if needed and upload the checkpoint's heads, recipe, calibration, metrics and card.

    ``token=None`` lets huggingface_hub find one (``HF_TOKEN``, ``hf auth login``); ``endpoint=None`` uses
    ``HF_ENDPOINT`` (default https://huggingface.co). ``revision`` is a branch, created from main when missing.
    Raises PushError (never containing the token) when the checkpoint is not pushable or the Hub refuses.
    """
    ckpt = read_checkpoint(checkpoint)
    branch = revision or "main"
    with tempfile.TemporaryDirectory(prefix="medusa-push-") as tmp:
        files = stage(ckpt, tmp, repo_id, base_model=base_model, license=license, revision=branch)
        message = commit_message or _default_message(ckpt.config, base_model)
        try:
            info, changed = _commit(tmp, files, repo_id, branch, message, private, token, endpoint)
        except Exception as e:  # network errors, HTTP errors: one clear message, no token
            reason = _scrub(_explain(e, repo_id), token)
            raise PushError(
                f"push to {repo_id} failed: {reason}\nThe checkpoint {checkpoint} was not modified and the files go "
                f"in a single commit, so the repo has all of them or none: fix the cause and run the same push again."
            ) from e
    return PushResult(
        repo_id=repo_id,
        revision=branch,
        commit_url=info.commit_url,
        commit_oid=info.oid,
        files=files,
        changed=changed,
    )


def _commit(folder, files, repo_id, branch, message, private, token, endpoint) -> tuple[object, bool]:
    """Create the repo (and branch) if needed, then one commit; return (CommitInfo, whether anything changed)."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
    from huggingface_hub.errors import RevisionNotFoundError
    from huggingface_hub.hf_api import RepoFile

    api = HfApi(endpoint=endpoint, token=token, library_name="medusa-toolkit")
    api.create_repo(repo_id, private=True if private else None, exist_ok=True)
    if branch != "main":
        api.create_branch(repo_id, branch=branch, exist_ok=True)
    try:
        tree = api.list_repo_tree(repo_id, revision=branch, recursive=True)
        remote = {f.path: f for f in tree if isinstance(f, RepoFile)}
    except RevisionNotFoundError:
        remote = {}
    ops = [CommitOperationAdd(path_in_repo=n, path_or_fileobj=os.path.join(folder, n)) for n in files]
    deletes = [n for n in MANAGED_FILES if n in remote and n not in files]
    ops += [CommitOperationDelete(path_in_repo=n) for n in deletes]
    changed = bool(deletes) or not all(_same_as_remote(os.path.join(folder, n), remote.get(n)) for n in files)
    # With nothing changed huggingface_hub makes no commit and returns the branch head.
    return api.create_commit(repo_id, operations=ops, commit_message=message, revision=branch), changed


def _same_as_remote(path: str, entry) -> bool:
    """Whether a local file equals the repo's copy: sha256 for LFS files, the git blob id for regular ones."""
    if entry is None or entry.size is None:
        return False
    lfs = getattr(entry, "lfs", None)
    if os.path.getsize(path) != (lfs.size if lfs else entry.size):
        return False
    if lfs:
        digest = hashlib.sha256()
    else:
        digest = hashlib.sha1(b"blob %d\0" % os.path.getsize(path))
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest() == (lfs.sha256 if lfs else entry.blob_id)


def _default_message(config: dict, base_model: str | None) -> str:
    base = base_model or config.get("base_model_name_or_path")
    return f"Upload {config.get('medusa_num_heads')} Medusa heads for {base}"


def _explain(error: Exception, repo_id: str) -> str:
    """A one-paragraph reason for a failed Hub call."""
    response = getattr(error, "response", None)
    status = getattr(response, "status_code", None)
    server = getattr(error, "server_message", None)
    detail = f" ({server.strip()})" if server and server.strip() else ""
    if status == 401:
        return (
            f"authentication failed (HTTP 401){detail}: log in with `hf auth login` or set HF_TOKEN to a token "
            "with write access"
        )
    if status == 403:
        return f"permission denied (HTTP 403){detail}: the token cannot create or write to {repo_id}"
    if status == 404:
        return f"repository {repo_id} not found or not writable with this token (HTTP 404){detail}"
    if status is not None and status >= 500:
        return f"the Hub answered HTTP {status} (server error){detail}; this is usually temporary"
    if status is not None:
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return f"the Hub answered HTTP {status}: {first}{detail}"
    if isinstance(error, OSError) or type(error).__module__.split(".")[0].startswith(_NETWORK_MODULES):
        return f"could not reach the Hub ({type(error).__name__}: {error})"
    return f"unexpected error while pushing ({type(error).__name__}: {error})"


def _scrub(text: str, token: str | None) -> str:
    """Remove the explicit token and the one huggingface_hub would resolve from a message."""
    secrets = [token] if token else []
    try:
        from huggingface_hub import get_token

        implicit = get_token()
        if implicit:
            secrets.append(implicit)
    except Exception:  # resolving the token is best effort here
        pass
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


# ---------------------------------------------------------------------- CLI
def _listing(folder: str, files: list[str]) -> str:
    width = max(len(n) for n in files)
    return "\n".join(f"  {n:<{width}}  {_size(os.path.getsize(os.path.join(folder, n)))}" for n in files)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.push", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "checkpoint", help="training checkpoint folder (config.json, model.safetensors, recipe.yaml, ...)"
    )
    p.add_argument("repo_id", help="Hub repo to push to, owner/name (created when missing)")
    p.add_argument(
        "--private",
        action="store_true",
        help="create the repo private (an existing repo keeps its visibility)",
    )
    p.add_argument(
        "--revision", "--branch", dest="revision", metavar="BRANCH", help="branch to commit to (default main)"
    )
    p.add_argument("--commit-message", help="commit message (default: 'Upload K Medusa heads for BASE')")
    p.add_argument("--base-model", help="Hub id of the base model, when the config records a local path")
    p.add_argument(
        "--license", help="license id for the card metadata (default: the recipe's output.license, else none)"
    )
    p.add_argument(
        "--dry-run", metavar="OUT_DIR", help="write the exact upload to OUT_DIR and list it; send nothing"
    )
    p.add_argument("--token", help="Hub token (default: HF_TOKEN or `hf auth login`; prefer those)")
    p.add_argument("--endpoint", help="Hub endpoint (default: HF_ENDPOINT or https://huggingface.co)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    common = dict(base_model=args.base_model, license=args.license)
    try:
        if args.dry_run:
            files = dry_run(args.checkpoint, args.dry_run, args.repo_id, revision=args.revision, **common)
            ckpt_config = _read_json(os.path.join(args.dry_run, CONFIG_NAME))
            message = args.commit_message or _default_message(ckpt_config, None)
            print(
                f"dry run: would push {len(files)} files to {args.repo_id} (branch {args.revision or 'main'}) "
                f"in one commit {message!r}:"
            )
            print(_listing(args.dry_run, files))
            print(f"staged in {args.dry_run}; nothing was sent")
            return 0
        result = push_to_hub(
            args.checkpoint,
            args.repo_id,
            private=args.private,
            revision=args.revision,
            commit_message=args.commit_message,
            token=args.token,
            endpoint=args.endpoint,
            **common,
        )
    except PushError as e:
        print(f"error: {_scrub(str(e), args.token)}", file=sys.stderr)
        return 2  # the CLI convention (infer/cli.py): error line, status 2
    if not result.changed:
        print(f"{result.repo_id} (branch {result.revision}) already has these files; no commit was made")
        print(f"head commit: {result.commit_url}")
        return 0
    print(f"pushed {len(result.files)} files to {result.repo_id} (branch {result.revision}) in one commit:")
    print("  " + "\n  ".join(result.files))
    print(f"commit: {result.commit_url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
