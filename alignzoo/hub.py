"""Resolving model weights: a local folder/file, the Hugging Face cache, or a clear error.

The zoo runs on machines without hub access (the tiny world) and on GPU machines with it.
Offline loads can hang for minutes in DNS retries or silently return empty tokenizers, so
every loader goes through :func:`resolve_snapshot` / :func:`resolve_file`, which fail with one
message naming the model id, the files expected, where to put them and the option/env var.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence


class MissingWeightsError(FileNotFoundError):
    """Weights are not available locally and cannot be downloaded."""

    def __str__(self) -> str:
        return str(self.args[0])


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def _missing(what: str, model_id: str, files: Sequence[str], option: str, env_var: str | None, err: Exception | None):
    env = f" or set {env_var}=/path" if env_var else ""
    listed = "\n".join(f"    {f}" for f in files)
    mode = "HF_HUB_OFFLINE=1 is set, so nothing is downloaded" if offline() else f"the download failed ({err})"
    return MissingWeightsError(
        f"{what} weights for {model_id!r} are not available: {mode}.\n"
        f"  Files expected:\n{listed}\n"
        f"  Fix: download them on a machine with hub access (e.g. `huggingface-cli download {model_id}`),\n"
        f"  copy the folder here and pass {option} /path/to/folder{env}; "
        "or unset HF_HUB_OFFLINE on a machine that can reach the hub."
    )


def resolve_snapshot(
    model_id: str,
    files: Sequence[str],
    *,
    what: str = "model",
    option: str = "--model-path",
    env_var: str | None = None,
    local_path: str | os.PathLike | None = None,
    allow_patterns: Sequence[str] | None = None,
) -> Path:
    """Returns a local folder holding ``files`` for ``model_id``.

    Order: ``local_path`` (or ``env_var``), then a local folder named ``model_id``, then the hub
    (its cache first). ``files`` are relative paths that must exist in the folder.
    """
    local_path = local_path or (os.environ.get(env_var) if env_var else None)
    candidates = [Path(local_path)] if local_path else []
    candidates.append(Path(model_id))
    for c in candidates:
        if c.is_dir():
            missing = [f for f in files if not (c / f).exists()]
            if missing and local_path and c == Path(local_path):
                raise MissingWeightsError(
                    f"{what} folder {str(c)!r} given for {model_id!r} lacks: {', '.join(missing)}. Put the files of {model_id!r} there in its hub layout."
                )
            if not missing:
                return c
    if local_path and not Path(local_path).exists():
        raise MissingWeightsError(f"{what} path {local_path!r} for {model_id!r} does not exist; pass a folder with: {', '.join(files)}")
    try:
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(model_id, allow_patterns=list(allow_patterns) if allow_patterns else None, local_files_only=offline()))
    except Exception as err:  # hub errors come in many classes; the message is what matters
        raise _missing(what, model_id, files, option, env_var, err) from None
    missing = [f for f in files if not (path / f).exists()]
    if missing:
        raise _missing(what, model_id, missing, option, env_var, None)
    return path


def resolve_file(
    repo_id: str, filename: str, *, what: str = "model", option: str = "--weights", env_var: str | None = None, local_path: str | os.PathLike | None = None
) -> Path:
    """Returns a local file: ``local_path`` (a file, or a folder holding ``filename``), else the hub."""
    local_path = local_path or (os.environ.get(env_var) if env_var else None)
    if local_path:
        p = Path(local_path)
        if p.is_dir():
            p = p / filename
        if p.is_file():
            return p
        raise MissingWeightsError(
            f"{what} weights file {str(p)!r} does not exist. Expected {filename!r} from {repo_id!r}; "
            f"pass its path with {option}" + (f" or {env_var}" if env_var else "")
        )
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo_id, filename, local_files_only=offline()))
    except Exception as err:
        raise _missing(what, repo_id, [filename], option, env_var, err) from None
