"""All evaluated rewards, diversity and drift of the runs trained on one reward, and the hacking flag.

A run trained on R is evaluated on every reward of the suite, so reward hacking shows as a gain on
R with a loss elsewhere, and on a diversity measure (``diversity``: mean pairwise distance
between the images of one prompt in a fixed feature space), so collapse shows. The table per
(prompt set, trained reward R) has rows pretrained + each algorithm trained on R, column groups
R, then every held-out reward (marked), then diversity and drift (each image's distance to the
pretrained image from the same noise), each at every step count; cells are the
mean over seeds ± the standard error across seeds (one seed: the evaluation's standard error;
diversity has none).

The report-level flag (:func:`hacking_flags`): at a step count, the trained reward rose over the
pretrained model (mean paired difference > 0) while a held-out reward or the diversity fell by
more than :data:`Z_FALL` standard errors. The SE of a reward difference is paired: from the
per-image differences to the pretrained model, averaged over seeds (the runs' and the pretrained
model's ``scores.json``) when they exist, else the standard error across seeds of the runs'
``diff_mean`` (several seeds) or the line's ``diff_se`` (one seed). Diversity is one number per
run, so its SE is across seeds; with one seed it is sqrt(se_run² + se_pretrained²) from the lines'
``diversity_se`` (the evaluation's SE over prompts), and without that it is not flagged.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from tabulate import tabulate

from alignzoo.reports.results import PRETRAINED, Results, score_key
from alignzoo.reports.tables import DASH, decimals_for, format_pm, seed_summary, step_label

Z_FALL = 2.0
DIVERSITY = "diversity"
DRIFT = "drift"
IMAGE_STATS = (DIVERSITY, DRIFT)  # one number per run and step count, not a reward
COLUMNS = ["prompt_set", "train_reward", "method", "column", "heldout", "steps", "mean", "err", "seeds"]


def _final(results: Results, prompt_set: str) -> pd.DataFrame:
    fin = results.final()
    return fin[fin["prompt_set"] == prompt_set]


def eval_rewards(results: Results) -> list[str]:
    """Evaluated rewards: the suite's reward order first, then the rest."""
    from alignzoo.reports.results import _ordered

    return _ordered(results.suite.get("rewards"), results.evals["eval_reward"])


def _rows_of(fin: pd.DataFrame, method: str, reward: str) -> pd.DataFrame:
    if method == PRETRAINED:
        return fin[fin["algo"] == PRETRAINED]
    return fin[(fin["algo"] == method) & (fin["train_reward"] == reward)]


def heldout_frame(results: Results, prompt_set: str, reward: str, algos: list[str]) -> pd.DataFrame:
    """Long frame: one row per (method, column = evaluated reward or "diversity", steps)."""
    fin = _final(results, prompt_set)
    order = [reward] + [r for r in eval_rewards(results) if r != reward]
    records = []
    for method in [PRETRAINED] + list(algos):
        rows = _rows_of(fin, method, reward)
        if rows.empty:
            continue
        for col in order:
            for n, g in rows[rows["eval_reward"] == col].groupby("steps"):
                mean, err, _kind, k = seed_summary(g)
                records.append(
                    {
                        "prompt_set": prompt_set,
                        "train_reward": reward,
                        "method": method,
                        "column": col,
                        "heldout": col != reward,
                        "steps": int(n),
                        "mean": mean,
                        "err": err,
                        "seeds": k,
                    }
                )
        for stat in IMAGE_STATS:
            if stat not in rows.columns or not rows[stat].notna().any():
                continue
            for n, g in rows.dropna(subset=[stat]).groupby("steps"):
                mean, err, _kind, k = seed_summary(g.drop_duplicates("cell"), stat)
                if k == 1:  # one seed: the evaluation's own standard error, when recorded
                    err = _stat_se(g.iloc[0], stat)
                records.append(
                    {
                        "prompt_set": prompt_set,
                        "train_reward": reward,
                        "method": method,
                        "column": stat,
                        "heldout": False,
                        "steps": int(n),
                        "mean": mean,
                        "err": err,
                        "seeds": k,
                    }
                )
    frame = pd.DataFrame(records, columns=COLUMNS)
    return frame if (frame["method"] != PRETRAINED).any() else frame.iloc[0:0]


def heldout_markdown(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "(no runs)"
    cols = list(dict.fromkeys(frame["column"]))
    steps = sorted(int(s) for s in frame["steps"].unique())
    cells = {(r.method, r.column, int(r.steps)): r for r in frame.itertuples(index=False)}
    dec = {c: decimals_for(frame.loc[frame["column"] == c, "mean"]) for c in cols}
    heldout = set(frame.loc[frame["heldout"], "column"])
    rows = []
    for m in dict.fromkeys(frame["method"]):
        row = [m]
        for c in cols:
            for n in steps:
                x = cells.get((m, c, n))
                row.append(DASH if x is None else format_pm(x.mean, x.err, dec[c]))
        rows.append(row)
    label = {c: f"{c} (held-out)" if c in heldout else c for c in cols}
    headers = ["method"] + [f"{label[c]} {step_label(n)}" for c in cols for n in steps]
    return tabulate(rows, headers=headers, tablefmt="pipe", disable_numparse=True, colalign=["left"] + ["right"] * (len(headers) - 1))


def heldout_note(frame: pd.DataFrame, space: str | None) -> str:
    where = f"the {space}" if space else "a fixed"
    div = (
        f" Diversity: mean pairwise distance between the images of one prompt in {where} feature space (higher = more varied; "
        f"one seed: ± the evaluation's diversity_se when recorded)."
        if DIVERSITY in set(frame["column"])
        else " No diversity was recorded."
    )
    if DRIFT in set(frame["column"]):
        div += (
            " Drift: RMS pixel distance (in [0, 1], thumbnails of 32×32) between a method's image and the pretrained model's image "
            "from the same noise (0 = unchanged; ± the SE over images with one seed, across seeds otherwise)."
        )
    return (
        "Runs trained on the first reward, evaluated on every reward (held-out rewards marked): mean over seeds ± the standard "
        "error across seeds (one seed: ± the evaluation's standard error)." + div
    )


def diversity_space(results: Results) -> str | None:
    col = results.evals.get("diversity_space")
    vals = [] if col is None else [v for v in col.dropna().unique() if isinstance(v, str)]
    return ", ".join(vals) if vals else None


def paired_diff(results: Results, lines: pd.DataFrame, pre: pd.DataFrame) -> tuple[float, float]:
    """(difference to the pretrained model, its SE) of one column's final lines (one per seed);
    see the module docstring for which SE."""
    if lines.empty or pre.empty:
        return np.nan, np.nan
    r0 = lines.iloc[0]
    key = score_key(r0["prompt_set"], r0["eval_reward"], r0["steps"])
    base = results.scores.get(PRETRAINED, {}).get(key)
    runs = [results.scores.get(c, {}).get(key) for c in lines["cell"]]
    if base is not None and all(s is not None and len(s) == len(base) for s in runs) and len(base) > 1:
        d = np.mean([s - base for s in runs], axis=0)  # per-image difference, averaged over seeds
        return float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d)))
    diffs = lines["mean"].to_numpy(float) - float(pre["mean"].iloc[-1])
    if len(diffs) > 1:
        return float(diffs.mean()), float(diffs.std(ddof=1) / math.sqrt(len(diffs)))
    se = lines["diff_se"].iloc[0]
    return float(diffs[0]), float(se) if np.isfinite(se) else np.nan


def _stat_se(line, stat: str = DIVERSITY) -> float:
    """A line's ``<stat>_se`` (the evaluation's SE of its diversity over prompts, or of its drift
    over images), NaN when absent."""
    v = pd.to_numeric(pd.Series([line.get(f"{stat}_se")]), errors="coerce").iloc[0]
    return float(v) if np.isfinite(v) else np.nan


def _diversity_diff(lines: pd.DataFrame, pre: pd.DataFrame) -> tuple[float, float]:
    """(diversity − pretrained's, SE): across seeds; one seed: sqrt(se_run² + se_pretrained²) from
    the lines' ``diversity_se`` (NaN without it, so no flag)."""
    if DIVERSITY not in lines.columns or pre.empty or not np.isfinite(pre[DIVERSITY].iloc[-1]):
        return np.nan, np.nan
    runs = lines.drop_duplicates("cell").dropna(subset=[DIVERSITY])
    vals = runs[DIVERSITY].to_numpy(float) - float(pre[DIVERSITY].iloc[-1])
    if len(vals) == 1:
        return float(vals[0]), math.hypot(_stat_se(runs.iloc[0]), _stat_se(pre.iloc[-1]))
    if len(vals) == 0:
        return np.nan, np.nan
    return float(vals.mean()), float(vals.std(ddof=1) / math.sqrt(len(vals)))


def hacking_flags(results: Results, prompt_set: str, reward: str, algos: list[str]) -> list[dict]:
    """``heldout_fell`` flags: per algorithm trained on ``reward``, the step counts where the
    trained reward rose while a held-out reward or the diversity fell by more than 2 SE."""
    fin = _final(results, prompt_set)
    pre_all = fin[fin["algo"] == PRETRAINED]
    others = [r for r in eval_rewards(results) if r != reward]
    flags = []
    for algo in algos:
        runs = _rows_of(fin, algo, reward)
        found = []
        for n in sorted(int(s) for s in runs["steps"].unique()):
            at, pre = runs[runs["steps"] == n], pre_all[pre_all["steps"] == n]
            d_r, _ = paired_diff(results, at[at["eval_reward"] == reward], pre[pre["eval_reward"] == reward])
            if not (np.isfinite(d_r) and d_r > 0):
                continue
            fell = []
            for col in others + [DIVERSITY]:
                if col == DIVERSITY:
                    d, se = _diversity_diff(at.drop_duplicates("cell"), pre)
                else:
                    d, se = paired_diff(results, at[at["eval_reward"] == col], pre[pre["eval_reward"] == col])
                if np.isfinite(d) and np.isfinite(se) and se > 0 and d < -Z_FALL * se:
                    fell.append(f"{col} {d:+.3g} ({d / se:.1f} SE)")
            if fell:
                found.append(f"at {n} step{'s' if n != 1 else ''} ({reward} {d_r:+.3g}): " + ", ".join(fell))
        if found:
            flags.append(
                {
                    "scope": f"{algo} on {reward}",
                    "flag": "heldout_fell",
                    "message": f"{prompt_set} prompts, trained reward rose while a held-out reward or diversity fell by > {Z_FALL:g} SE " + "; ".join(found),
                }
            )
    return flags
