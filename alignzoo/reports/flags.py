"""Health flags in the report: each run's (``health.json``, or :func:`alignzoo.health.run_flags`
on its ``log.jsonl``) and the report-level ones.

Report-level flags:

``gain_not_above_control``
    a run trained on R whose paired gain on R over the pretrained model is no larger than that of
    the random-reward control (control.py: the same algorithm trained on ``random``, evaluated on
    R): the difference of the two gains is below :data:`Z_CONTROL` standard errors. A gain the
    control matches is drift, not learning. Checked at the training trajectory length
    (``[train] num_steps``) when it was evaluated, else at every step count.
``heldout_fell``
    see :func:`alignzoo.reports.heldout.hacking_flags`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from tabulate import tabulate

from alignzoo.health import run_flags
from alignzoo.reports.results import Results

Z_CONTROL = 2.0


def _clip_range(results: Results, algo: str) -> float | None:
    """The suite's clip range for ``algo`` ([algo.<name>] or [train]); None when not set there."""
    for section in ((results.suite.get("algo") or {}).get(algo) or {}, results.suite.get("train") or {}):
        if isinstance(section.get("clip_range"), (int, float)):
            return float(section["clip_range"])
    return None


def cell_flags(results: Results) -> pd.DataFrame:
    """One row per flag of each run: cell, algo, train_reward, seed, flag, message, source."""
    rows = []
    cells = results.cells.sort_values(["algo", "train_reward", "seed"]) if not results.cells.empty else results.cells
    for c in cells.itertuples(index=False):
        if c.cell in results.health:
            flags, source = results.health[c.cell], "health.json"
        elif c.cell in results.log_records:
            flags, source = run_flags(results.log_records[c.cell], _clip_range(results, c.algo)), "log.jsonl"
        else:
            continue
        for f in flags:
            rows.append(
                {
                    "cell": c.cell,
                    "algo": c.algo,
                    "train_reward": c.train_reward,
                    "seed": int(c.seed),
                    "flag": f.get("flag"),
                    "message": f.get("message"),
                    "source": source,
                }
            )
    return pd.DataFrame(rows, columns=["cell", "algo", "train_reward", "seed", "flag", "message", "source"])


def control_flags(results: Results, frame: pd.DataFrame) -> list[dict]:
    """``gain_not_above_control`` flags (see the module docstring) from ``control.control_frame``;
    [] without control runs."""
    t = (results.suite.get("train") or {}).get("num_steps")
    if t is not None and int(t) in set(frame["steps"]):
        frame = frame[frame["steps"] == int(t)]
    flags = []
    for (algo, reward), sub in frame.groupby(["algo", "reward"], sort=False):
        found = [
            f"{r.prompt_set} prompts, {r.steps} step{'s' if r.steps != 1 else ''}: gain {r.gain:+.3g} vs the control's {r.control:+.3g} (difference {r.margin:+.3g} ± {r.se:.2g})"
            for r in sub.itertuples()
            if not (np.isfinite(r.se) and r.margin > Z_CONTROL * r.se)
        ]
        if found:
            flags.append(
                {
                    "scope": f"{algo} on {reward}",
                    "flag": "gain_not_above_control",
                    "message": f"gain no larger than the random-reward control's (within {Z_CONTROL:g} SE): " + "; ".join(found),
                }
            )
    return flags


def flags_markdown(cells: pd.DataFrame, report_flags: list[dict], checked: int) -> str:
    """The per-run flags table and the report-level flags as a list."""
    parts = []
    if cells.empty:
        parts.append(f"No run-level health flag in {checked} run(s) checked.")
    else:
        rows = [[r.cell, f"`{r.flag}`", r.message, r.source] for r in cells.itertuples(index=False)]
        parts.append(tabulate(rows, headers=["run", "flag", "message", "from"], tablefmt="pipe", disable_numparse=True))
    if report_flags:
        parts.append("Report-level flags:\n\n" + "\n".join(f"- **{f['scope']}** `{f['flag']}`: {f['message']}" for f in report_flags))
    else:
        parts.append("No report-level flag (random-reward control, held-out rewards and diversity).")
    return "\n\n".join(parts)


FLAGS_NOTE = (
    "Run flags come from each run's health.json or, without one, from its training log: importance ratio ≠ 1 at an "
    "epoch's first update, a ratio clip that never or always fires, a training reward more than 2 SE below its start, "
    "non-finite losses. Report-level flags: a gain no larger than the random-reward control's, and a trained reward that "
    "rose while a held-out reward or the diversity fell by more than 2 SE."
)
