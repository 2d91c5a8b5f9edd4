"""The run-folder contract: cell names, JSON-lines files, compute counters and health flags.

Everything that writes or reads ``runs/`` (the trainer, the benchmark runner, the reports) goes
through this module, so it sits on the bottom floor of the package graph (docs/architecture.md).
A cell folder is ``<algo>__<reward>__seed<S>/`` holding ``log.jsonl`` (one line per epoch),
``eval.jsonl`` (one line per evaluation), ``health.json`` and ``DONE``.

Counters (docs/architecture.md, "The run folder"): cumulative, global over processes, one value per
name in every epoch record. The trainer adds each process's counts of an epoch with
:func:`add_counts` and sums them over processes at the epoch's end.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import warnings
from pathlib import Path

CONTROL = "random"  # the reward name of random-reward control cells (<algo>__random__<seed>), whatever twin they train on
CELL_RE = re.compile(r"^(?P<algo>.+?)__(?P<reward>.+)__seed(?P<seed>-?\d+)$")


def cell_name(algo: str, reward: str, seed: int) -> str:
    return f"{algo}__{reward}__seed{seed}"


def parse_cell_name(name: str) -> tuple[str, str, int] | None:
    """``"sdpo__tiny_alignment__seed0"`` → ``("sdpo", "tiny_alignment", 0)``; None for other names."""
    m = CELL_RE.match(name)
    return (m["algo"], m["reward"], int(m["seed"])) if m else None


FRESH_TOTALS = {
    "samples": 0,  # images generated for training, every one (LaSRO's own rollouts and stage 1 too)
    "reward_queries": 0,  # reward-model calls on images, training and logging
    "log_reward_queries": 0,  # of which only for logging (the 1-step reward)
    "vae_decodes": 0,
    "unet_evals_sampling": 0,
    "unet_evals_training": 0,  # the older split of unet_forward (CFG counts 2)
    "unet_forward": 0,  # every UNet evaluation: sampling, recomputation, reference (CFG counts 2)
    "unet_backward": 0,  # UNet evaluations whose graph was back-propagated
    "updates": 0,  # optimiser steps of the policy
    "nonfinite_losses": 0,  # updates whose loss was NaN/inf (the run stops after the epoch of the first)
    "seconds_sampling": 0.0,
    "seconds_decoding": 0.0,
    "seconds_reward": 0.0,
    "seconds_update": 0.0,
    "seconds_total": 0.0,
}


def add_counts(pending: dict, unet: int = 0, grad: bool = False, cfg: bool = False, phase: str = "training", **counts) -> None:
    """Adds counts to ``pending``: ``unet`` UNet rows (×2 under classifier-free guidance), each a
    forward (also counted as unet_evals_<phase>) and, when ``grad``, a backward too; and any named
    counter (samples, vae_decodes, ...)."""
    if unet:
        evals = int(unet) * (2 if cfg else 1)
        counts["unet_forward"] = counts.get("unet_forward", 0) + evals
        counts[f"unet_evals_{phase}"] = counts.get(f"unet_evals_{phase}", 0) + evals
        if grad:
            counts["unet_backward"] = counts.get("unet_backward", 0) + evals
    for k, v in counts.items():
        pending[k] = pending.get(k, 0) + int(v)


def json_safe(record: dict) -> dict:
    """NaN/±inf floats as the JSON strings "nan"/"inf"/"-inf" (json.dumps would write invalid NaN)."""
    return {k: (str(v) if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}


def append_lines(path: Path, records: list[dict]) -> None:
    """Appends JSON lines in one write, flushed to disk (a kill leaves at most a cut last line,
    which the readers drop)."""
    with open(path, "a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records))
        f.flush()
        os.fsync(f.fileno())


def append_record(path: Path, record: dict) -> None:
    """One log line, non-finite floats written as strings (:func:`json_safe`)."""
    append_lines(path, [json_safe(record)])


def atomic_write_text(path: Path, text: str) -> None:
    """A kill leaves the old file or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, data) -> None:
    atomic_write_text(path, json.dumps(data))


def rewrite_lines(path: Path, records: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def read_lines(path: Path) -> list[dict]:
    """The records of a JSON-lines file the runner is resuming; a cut line (a kill) is dropped."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def read_jsonl(path: str | Path) -> list[dict]:
    """The JSON objects of a JSONL file for reading results; blank lines are ignored, malformed
    ones skipped with a warning naming the file and line."""
    path = Path(path)
    rows = []
    for i, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            warnings.warn(f"{path}:{i}: skipped a malformed line ({line[:60]!r})", UserWarning, stacklevel=2)
            continue
        if not isinstance(obj, dict):
            warnings.warn(f"{path}:{i}: skipped a malformed line (not a JSON object)", UserWarning, stacklevel=2)
            continue
        rows.append(obj)
    return rows


def read_log(out: str | Path) -> list[dict]:
    path = Path(out) / "log.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def report_health(out: str | Path, clip_range: float | None = None) -> list[dict]:
    """:func:`alignzoo.health.run_flags` over the run's whole log: each flag printed as a warning
    and all written to ``health.json``."""
    from alignzoo.health import run_flags

    flags = run_flags(read_log(out), clip_range)
    for f in flags:
        print(f"alignzoo: warning: {f['flag']}: {f['message']}", file=sys.stderr)
    atomic_write_text(Path(out) / "health.json", json.dumps({"flags": flags}, indent=1))
    return flags
