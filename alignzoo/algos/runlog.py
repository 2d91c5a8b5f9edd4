"""A training run's records: the compute counters, the log.jsonl lines and the health flags.

Counters (CONTRACT.md, "Training log counters"): cumulative, global over processes, one value per
name in every epoch record. The trainer adds each process's counts of an epoch with
:func:`add_counts` and sums them over processes at the epoch's end.
"""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

FRESH_TOTALS = {
    "samples": 0,  # images generated for training, every one (LaSRO's own rollouts and stage 1 too)
    "reward_queries": 0,  # reward-model calls on images, training and logging
    "log_reward_queries": 0,  # of which only for logging (the 1-step reward)
    "vae_decodes": 0,
    "unet_evals_sampling": 0, "unet_evals_training": 0,  # the older split of unet_forward (CFG counts 2)
    "unet_forward": 0,  # every UNet evaluation: sampling, recomputation, reference (CFG counts 2)
    "unet_backward": 0,  # UNet evaluations whose graph was back-propagated
    "updates": 0,  # optimiser steps of the policy
    "nonfinite_losses": 0,  # updates whose loss was NaN/inf (the run stops after the epoch of the first)
    "seconds_sampling": 0.0, "seconds_decoding": 0.0, "seconds_reward": 0.0, "seconds_update": 0.0, "seconds_total": 0.0,
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


def append_record(path: Path, record: dict) -> None:
    """One JSON line, flushed to disk (a kill leaves at most a cut last line, which resume drops)."""
    with open(path, "a") as f:
        f.write(json.dumps(json_safe(record)) + "\n")
        f.flush()
        os.fsync(f.fileno())


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def read_log(out: str | Path) -> list[dict]:
    path = Path(out) / "log.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def report_health(out: str | Path, clip_range: float | None = None) -> list[dict]:
    """``alignzoo.algos.health.run_flags`` over the run's whole log: each flag printed as a warning
    and all written to ``health.json``. Without the health module (not merged yet): no flags."""
    try:
        from alignzoo.algos.health import run_flags
    except ImportError:
        return []
    flags = run_flags(read_log(out), clip_range)
    for f in flags:
        print(f"alignzoo: warning: {f['flag']}: {f['message']}", file=sys.stderr)
    atomic_write_text(Path(out) / "health.json", json.dumps({"flags": flags}, indent=1))
    return flags
