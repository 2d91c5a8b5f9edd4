"""Gain over the random-reward control: does an algorithm learn, or only drift?

A suite that lists the reward ``random`` trains every algorithm on it too (cells
``<algo>__random__<seed>``; reward-backprop algorithms train on its differentiable twin
``random_direction``, :func:`alignzoo.rewards.control.control_reward`). Fine-tuning on a reward with
nothing to learn still moves every other reward (drift: TINYWORLD_NOTES), so "A learns R" is
measured against that run, with the same algorithm, settings, budget and seeds:

    gain     g = mean over seeds of (run's mean R − pretrained mean R), SE_g across seeds
    control  c = the same for the runs trained on ``random``, evaluated on R
    margin   g − c,  SE = √(SE_g² + SE_c²),  z = (g − c) / SE

SEs add in quadrature (conservative: both gains share the pretrained baseline). With one seed a
gain's SE is the evaluation's paired ``diff_se``. The report's ``gain_not_above_control`` flag
(flags.py) is z ≤ 2 at the training trajectory length; the table shows every step count.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from tabulate import tabulate

from alignzoo.reports.results import PRETRAINED, Results
from alignzoo.runlog import CONTROL

COLUMNS = ["algo", "reward", "prompt_set", "steps", "seeds", "gain", "gain_se", "control", "control_se", "margin", "se", "z"]


def seed_gain(lines: pd.DataFrame, pre_mean: float) -> tuple[float, float]:
    """(mean over seeds of the run's mean − the pretrained mean, its SE across seeds)."""
    diffs = lines["mean"].to_numpy(float) - pre_mean
    if len(diffs) > 1:
        return float(diffs.mean()), float(diffs.std(ddof=1) / math.sqrt(len(diffs)))
    return (float(diffs[0]), float(lines["diff_se"].iloc[0])) if len(diffs) else (np.nan, np.nan)


def control_frame(results: Results, algos: list[str], rewards: list[str]) -> pd.DataFrame:
    """One row per (algorithm, trained reward, prompt set, step count) that has both the runs
    trained on the reward and the algorithm's control runs; empty without control runs."""
    fin = results.final()
    if fin.empty or not (fin["train_reward"] == CONTROL).any():
        return pd.DataFrame(columns=COLUMNS)
    rows = []
    for algo in algos:
        for reward in [r for r in rewards if r != CONTROL]:
            for (ps, n), col in fin[fin["eval_reward"] == reward].groupby(["prompt_set", "steps"], sort=False):
                pre = col[col["algo"] == PRETRAINED]
                run = col[(col["algo"] == algo) & (col["train_reward"] == reward)].drop_duplicates("cell")
                ctl = col[(col["algo"] == algo) & (col["train_reward"] == CONTROL)].drop_duplicates("cell")
                if pre.empty or run.empty or ctl.empty:
                    continue
                base = float(pre["mean"].iloc[-1])
                (g, se_g), (c, se_c) = seed_gain(run, base), seed_gain(ctl, base)
                se = math.sqrt(se_g**2 + se_c**2) if np.isfinite(se_g) and np.isfinite(se_c) else np.nan
                z = (g - c) / se if np.isfinite(se) and se > 0 else np.nan
                rows.append([algo, reward, ps, int(n), f"{len(run)}/{len(ctl)}", g, se_g, c, se_c, g - c, se, z])
    return pd.DataFrame(rows, columns=COLUMNS)


def control_markdown(frame: pd.DataFrame) -> str:
    """One table per (trained reward, prompt set): algorithms × step counts, 'margin ± SE (z)'."""
    parts = []
    for (reward, ps), sub in frame.groupby(["reward", "prompt_set"], sort=False):
        steps = sorted(sub["steps"].unique())
        rows = []
        for algo, per in sub.groupby("algo", sort=False):
            cells = {int(r.steps): f"{r.margin:+.3f} ± {r.se:.3f} ({r.z:+.1f})" + (" ✓" if r.z > 3 else "") for r in per.itertuples()}
            rows.append([algo, per["seeds"].iloc[0]] + [cells.get(n, "–") for n in steps])
        headers = ["algorithm", "seeds (run/control)"] + [f"{n} step{'s' if n != 1 else ''}" for n in steps]
        parts.append(f"### Trained on {reward}, {ps} prompts\n\n" + tabulate(rows, headers=headers, tablefmt="pipe", disable_numparse=True))
    return "\n\n".join(parts)


def control_lines(frame: pd.DataFrame, train_steps: int | None, z_mark: float = 3.0) -> list[str]:
    """Observations: per prompt set, which (algorithm, reward) gains exceed the control's by more
    than ``z_mark`` SE at the training trajectory length (every step count when not evaluated)."""
    if frame.empty:
        return []
    if train_steps is not None and int(train_steps) in set(frame["steps"]):
        frame = frame[frame["steps"] == int(train_steps)]
    lines = []
    for ps, sub in frame.groupby("prompt_set", sort=False):
        above = sub[sub["z"] > z_mark]
        below = sub[~(sub["z"] > z_mark)]
        at = f"{int(train_steps)} steps" if train_steps is not None and int(train_steps) in set(sub["steps"]) else "each step count"
        text = (
            f"Gain over the random-reward control ({ps} prompts, {at}): above by more than {z_mark:g} SE for "
            f"{len(above)} of {len(sub)} (algorithm, reward, step count) cells"
        )
        if not below.empty:
            text += "; not: " + ", ".join(f"{r.algo} on {r.reward} at {r.steps} ({r.margin:+.3f}, z {r.z:+.1f})" for r in below.itertuples())
        lines.append(text + ".")
    return lines


CONTROL_NOTE = (
    "Each cell: the gain over the pretrained model of the runs trained on the reward minus that of the same algorithm's "
    "runs trained on `random` (reward-backprop algorithms: `random_direction`), both evaluated on the trained reward; "
    "± the SE (seeds' SEs in quadrature) and, in brackets, the difference in SEs (z). ✓ = more than 3 SE above the "
    "control: the algorithm learns the reward rather than drifting."
)
