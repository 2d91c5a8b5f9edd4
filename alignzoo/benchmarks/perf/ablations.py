"""Option ablations (``--ablate``): one algorithm measured again with each option (channels_last,
gradient checkpointing, bf16 autocast, torch.compile) against a baseline, each in a fresh
``alignzoo perf`` process so that no option leaks into another's run (a compiled UNet, a memory
layout, the peak-memory mark); a failing option is reported with its last error line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from alignzoo.benchmarks.perf.config import ABLATION_FLAGS, overrides_for

if TYPE_CHECKING:
    from alignzoo.benchmarks.perf.measure import PerfRun


def baseline_command(runner: PerfRun) -> list[str]:
    """The ``alignzoo perf`` command line of the baseline: this run's settings, one algorithm, no budgets."""
    cfg = runner.cfg
    cmd = [
        sys.executable,
        "-m",
        "alignzoo",
        "perf",
        "--model",
        cfg.model,
        "--algos",
        cfg.ablate_algo,
        "--batch",
        str(cfg.batch),
        "--repeats",
        str(cfg.repeats),
        "--warmup",
        str(max(1, cfg.warmup)),
        "--no-budgets",
        "--seed",
        str(cfg.seed),
        "--reward",
        runner.reward_name,
        "--prompts",
        runner.prompts,
        "--device",
        cfg.device,
    ]
    if cfg.model_path:
        cmd += ["--model-path", cfg.model_path]
    if cfg.steps is not None:
        cmd += ["--steps", str(cfg.steps)]
    if cfg.resolution is not None:
        cmd += ["--resolution", str(cfg.resolution)]
    from alignzoo.algos.base import get_algorithm

    for key, value in overrides_for(get_algorithm(cfg.ablate_algo), cfg.overrides).items():
        cmd += ["--set", f"{key}={value}"]  # only what applies: the process refuses keys its algorithm lacks
    return cmd


def ablations(runner: PerfRun) -> dict:
    base = baseline_command(runner)
    variants = {"baseline": [], **{option: ABLATION_FLAGS[option] for option in runner.cfg.ablate}}
    results = {}
    for name, extra in variants.items():
        with tempfile.TemporaryDirectory(prefix="alignzoo_ablate_") as d:
            cmd = base + extra + ["--out", d]
            runner.log(f"  ablation {name}: {' '.join(cmd[2:])}")
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
            if proc.returncode != 0:
                results[name] = {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["failed"]}
                continue
            row = json.loads((Path(d) / "perf.json").read_text())["rows"][0]
            results[name] = {
                "flags": " ".join(extra) or "(none)",
                "epoch_seconds": row["epoch_seconds"],
                "rollout_traj_per_s": row["rollout_traj_per_s"],
                "train_transitions_per_s": row["train_transitions_per_s"],
                "sec_per_1k_total": row["sec_per_1k"]["total"],
                "peak_memory_mb": row["peak_memory_mb"],
                "wall_seconds_incl_startup": time.perf_counter() - t0,
            }
    return results
