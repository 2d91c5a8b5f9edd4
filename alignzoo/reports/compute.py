"""Compute per cell from the training logs' cumulative counters, and the x axes of the curves.

The trainer writes cumulative, global counters in every epoch record (``samples``,
``reward_queries``, ``unet_forward``, ``unet_backward``, ``vae_decodes``, ``updates``,
``seconds_total``). The compute table reads each run's last record and averages over seeds.
Logs written before those counters existed are read with what they have: ``unet_forward`` =
``unet_evals_sampling + unet_evals_training`` (both were forward evaluations) and
``reward_queries`` = training + logging queries; backward evaluations and updates stay "–".

``--x images|unet|seconds`` draws the curves against ``samples``, UNet evaluations (forward +
backward) or ``seconds_total``; an evaluation point is joined to the log record of the same cell
with the same cumulative ``samples`` (the model evaluated is the one after that epoch).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from tabulate import tabulate

from alignzoo.reports.results import PRETRAINED

DASH = "–"
COUNTERS = ["samples", "reward_queries", "unet_forward", "unet_backward", "vae_decodes", "updates", "seconds_total"]
HEADERS = [
    "method",
    "reward",
    "seeds",
    "epochs",
    "images",
    "reward queries",
    "UNet forward",
    "UNet backward",
    "VAE decodes",
    "updates",
    "updates / epoch",
    "wall s",
]
X_AXES = {"images": "training images generated", "unet": "UNet evaluations (forward + backward)", "seconds": "training wall time (s)"}


def _num(frame: pd.DataFrame, col: str) -> pd.Series:
    return pd.to_numeric(frame[col], errors="coerce").astype(float) if col in frame.columns else pd.Series(np.nan, index=frame.index)


def with_counters(logs: pd.DataFrame) -> pd.DataFrame:
    """The logs with every counter of :data:`COUNTERS` as a float column (old-log fallbacks
    filled in) and ``unet_evals`` = forward + backward."""
    logs = logs.copy()
    fwd = _num(logs, "unet_forward")
    old_fwd = _num(logs, "unet_evals_sampling").add(_num(logs, "unet_evals_training"), fill_value=0)
    logs["unet_forward"] = fwd.fillna(old_fwd)
    queries = _num(logs, "reward_queries")
    if "unet_forward" not in logs.columns or fwd.isna().all():  # an old log: training and logging queries were separate
        queries = queries.add(_num(logs, "log_reward_queries"), fill_value=0)
    logs["reward_queries"] = queries
    for col in COUNTERS:
        logs[col] = _num(logs, col)
    logs["unet_evals"] = logs["unet_forward"] + logs["unet_backward"]
    return logs


def compute_frame(logs: pd.DataFrame, algos: list[str], rewards: list[str]) -> pd.DataFrame:
    """One row per (algorithm, trained reward): each run's last record, mean over seeds."""
    cols = ["method", "reward", "seeds", "epochs"] + COUNTERS + ["updates_per_epoch"]
    if logs is None or logs.empty:
        return pd.DataFrame(columns=cols)
    last = with_counters(logs.loc[logs.groupby("cell")["epoch"].idxmax()])
    last["updates_per_epoch"] = last["updates"] / last["epoch"].where(last["epoch"] > 0)
    records = []
    for algo in algos:
        for reward in dict.fromkeys(list(rewards) + sorted(set(last["train_reward"]) - set(rewards))):
            g = last[(last["algo"] == algo) & (last["train_reward"] == reward)]
            if g.empty:
                continue
            rec = {"method": algo, "reward": reward, "seeds": int(len(g)), "epochs": float(g["epoch"].mean())}
            for c in COUNTERS + ["updates_per_epoch"]:
                rec[c] = float(g[c].mean()) if g[c].notna().any() else np.nan
            records.append(rec)
    return pd.DataFrame(records, columns=cols)


def _fmt(x: float, fmt: str = ",.0f") -> str:
    return DASH if x is None or not np.isfinite(x) else format(x, fmt)


def compute_markdown(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "(no training logs)"
    rows = [
        [
            r.method,
            r.reward,
            str(r.seeds),
            _fmt(r.epochs, ",.1f"),
            _fmt(r.samples),
            _fmt(r.reward_queries),
            _fmt(r.unet_forward),
            _fmt(r.unet_backward),
            _fmt(r.vae_decodes),
            _fmt(r.updates),
            _fmt(r.updates_per_epoch, ",.1f"),
            _fmt(r.seconds_total, ",.1f"),
        ]
        for r in frame.itertuples(index=False)
    ]
    return tabulate(rows, headers=HEADERS, tablefmt="pipe", disable_numparse=True, colalign=["left", "left"] + ["right"] * (len(HEADERS) - 2))


def updates_note(frame: pd.DataFrame) -> str | None:
    """Names the algorithms whose optimiser updates per epoch differ from the most common count
    (equal compute is the default; SDPO's one update per shuffled step column is a named exception)."""
    per = frame.dropna(subset=["updates_per_epoch"]).groupby("method", sort=False)["updates_per_epoch"].mean()
    if per.nunique() < 2:
        return None
    common = per.round(6).mode().iloc[0]
    odd = [f"{m} ({v:,.1f})" for m, v in per.items() if not np.isclose(v, common)]
    return (
        f"Optimiser updates per epoch differ between algorithms: most make {common:,.1f}, while "
        + ", ".join(odd)
        + " (a deliberate exception such as SDPO's one update per shuffled step column shows here as more updates)."
    )


def images_note(frame: pd.DataFrame) -> str | None:
    """Names the algorithms that generated more or fewer training images than the most common
    count: equal images is the default, so a difference is stated where a reader sees the table
    (e.g. LaSRO's stage-1 samples and generator rollouts, which count, can exceed a small budget)."""
    per = frame.dropna(subset=["samples"]).groupby("method", sort=False)["samples"].mean()
    if per.nunique() < 2:
        return None
    common = per.round(6).mode().iloc[0]
    odd = [f"{m} ({v:,.0f})" for m, v in per.items() if not np.isclose(v, common)]
    return (
        f"Training images differ between algorithms: most generated {common:,.0f}, while "
        + ", ".join(odd)
        + ": compare their rewards with that in mind (every generated image counts towards a run's budget; an epoch that "
        "alone exceeds the budget still runs once)."
    )


COMPUTE_NOTE = (
    "Each run's last training-log record (cumulative, all processes together), mean over seeds: images generated for "
    "training, reward-model calls, UNet forward evaluations (sampling, recomputation and reference; guidance counts 2), "
    "UNet evaluations whose graph was backpropagated, VAE decodes, optimiser updates and training wall time. "
    "Logs without these counters show the old ones (forward = sampling + training evaluations) and – for the rest."
)


def x_column(x: str) -> str:
    if x not in X_AXES:
        raise ValueError(f"--x must be one of {', '.join(X_AXES)}, not {x!r}")
    return {"images": "samples", "unet": "unet_evals", "seconds": "seconds_total"}[x]


def logs_with_x(logs: pd.DataFrame, x: str) -> pd.DataFrame:
    """The logs with an ``x`` column for the chosen axis; a clear error when the logs lack it."""
    col = x_column(x)
    if logs is None or logs.empty:
        raise ValueError(f"--x {x} needs the training logs (log.jsonl), and this folder has none; use --x images")
    logs = with_counters(logs)
    if logs[col].isna().all():
        need = "unet_forward and unet_backward" if x == "unet" else col
        raise ValueError(f"--x {x} needs the training-log counter(s) {need}, which these logs do not have (older run?); use --x images")
    logs["x"] = logs[col]
    return logs


def evals_with_x(evals: pd.DataFrame, logs: pd.DataFrame, x: str) -> pd.DataFrame:
    """Evaluation lines with ``x``: the value of the log record of the same cell and ``samples``
    (0 for the pretrained model and for evaluations before training); NaN where no record matches."""
    if x == "images":
        return evals.assign(x=evals["samples"].astype(float))
    lx = logs_with_x(logs, x)[["cell", "samples", "x"]].drop_duplicates(["cell", "samples"], keep="last")
    out = evals.merge(lx, on=["cell", "samples"], how="left")
    out.loc[(out["algo"] == PRETRAINED) | (out["samples"] == 0), "x"] = 0.0
    return out
