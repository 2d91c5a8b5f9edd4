"""The cost table of a report: per (algorithm, trained reward), the final training-log counters
averaged over seeds, in totals and per 1,000 training samples."""

from __future__ import annotations

import numpy as np
import pandas as pd
from tabulate import tabulate

from alignzoo.reports.results import LOG_COUNTS
from alignzoo.reports.tables import DASH

COST_TOTALS = [
    "seconds_total",
    "seconds_sampling",
    "seconds_decoding",
    "seconds_reward",
    "seconds_update",
    "unet_evals",
    "vae_decodes",
    "reward_queries",
    "log_reward_queries",
]
PER_1K = ["seconds_total", "unet_evals", "vae_decodes", "reward_queries", "log_reward_queries"]


def cost_frame(logs: pd.DataFrame, algos: list[str], rewards: list[str]) -> pd.DataFrame:
    """One row per (algorithm, trained reward): the final log line of each seed, averaged over seeds.
    ``unet_evals`` = sampling + training forwards; ``*_per_1k`` = per 1,000 training samples
    (computed per seed, then averaged)."""
    cols = ["method", "reward", "seeds", "epochs", "samples"] + COST_TOTALS + [f"{c}_per_1k" for c in PER_1K]
    if logs is None or logs.empty:
        return pd.DataFrame(columns=cols)
    last = logs.loc[logs.groupby("cell")["epoch"].idxmax()].copy()
    for c in LOG_COUNTS:  # a run that predates a counter: NaN
        if c not in last.columns:
            last[c] = np.nan
        last[c] = pd.to_numeric(last[c], errors="coerce").astype(float)
    last["unet_evals"] = last["unet_evals_sampling"].fillna(0) + last["unet_evals_training"].fillna(0)
    last.loc[last["unet_evals_sampling"].isna() & last["unet_evals_training"].isna(), "unet_evals"] = np.nan
    for c in PER_1K:
        last[f"{c}_per_1k"] = last[c] / last["samples"].where(last["samples"] > 0) * 1000.0
    records = []
    for algo in algos:
        for reward in rewards:
            g = last[(last["algo"] == algo) & (last["train_reward"] == reward)]
            if g.empty:
                continue
            rec = {"method": algo, "reward": reward, "seeds": int(len(g)), "epochs": float(g["epoch"].mean())}
            for c in ["samples"] + COST_TOTALS + [f"{c}_per_1k" for c in PER_1K]:
                rec[c] = float(g[c].mean()) if g[c].notna().any() else np.nan
            records.append(rec)
    return pd.DataFrame(records, columns=cols)


def _n(x: float, fmt: str) -> str:
    return DASH if x is None or not np.isfinite(x) else format(x, fmt)


def cost_markdown(frame: pd.DataFrame) -> str:
    """Two pipe tables: totals (final log line, mean over seeds) and per 1,000 training samples."""
    if frame.empty:
        return "(no training logs)"
    tot, per = [], []
    for r in frame.itertuples(index=False):
        tot.append(
            [
                r.method,
                r.reward,
                str(r.seeds),
                _n(r.samples, ",.0f"),
                _n(r.seconds_total, ",.1f"),
                _n(r.seconds_sampling, ",.1f"),
                _n(r.seconds_decoding, ",.1f"),
                _n(r.seconds_reward, ",.1f"),
                _n(r.seconds_update, ",.1f"),
                _n(r.unet_evals, ",.0f"),
                _n(r.vae_decodes, ",.0f"),
                _n(r.reward_queries, ",.0f"),
                _n(r.log_reward_queries, ",.0f"),
            ]
        )
        per.append(
            [
                r.method,
                r.reward,
                _n(r.seconds_total_per_1k, ",.1f"),
                _n(r.unet_evals_per_1k, ",.0f"),
                _n(r.vae_decodes_per_1k, ",.0f"),
                _n(r.reward_queries_per_1k, ",.0f"),
                _n(r.log_reward_queries_per_1k, ",.0f"),
            ]
        )
    h_tot = [
        "method",
        "reward",
        "seeds",
        "samples",
        "wall s",
        "sampling s",
        "decoding s",
        "reward s",
        "update s",
        "UNet evals",
        "VAE decodes",
        "reward queries",
        "logging queries",
    ]
    h_per = ["method", "reward", "wall s / 1k", "UNet evals / 1k", "VAE decodes / 1k", "reward queries / 1k", "logging queries / 1k"]
    right = lambda h: ["left", "left"] + ["right"] * (len(h) - 2)  # noqa: E731
    return (
        "Totals (final log line of each run, mean over seeds):\n\n"
        + tabulate(tot, headers=h_tot, tablefmt="pipe", disable_numparse=True, colalign=right(h_tot))
        + "\n\nPer 1,000 training samples:\n\n"
        + tabulate(per, headers=h_per, tablefmt="pipe", disable_numparse=True, colalign=right(h_per))
    )


COST_NOTE = (
    "Wall-clock seconds of the training epochs on the machine that ran the suite (evaluation and checkpointing "
    "not included); UNet evaluations count sampling "
    "and training forwards; reward queries are those the algorithm trains on, logging queries the extra ones made only "
    "to log the first-step reward."
)
