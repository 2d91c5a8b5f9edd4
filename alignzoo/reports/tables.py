"""Tables from stored results: Table-1 style reward tables, paired gains and costs.

Table 1 (SDPO paper): rows = the pretrained model, then each algorithm; column groups = the
evaluated rewards, each algorithm row of reward R using the runs trained on R; columns = the
sampling step counts. A cell is the mean over seeds of the final evaluation's mean, ± the standard
error across seeds (run-to-run: std over seeds / √seeds; one seed: ± the evaluation's standard
error std/√n, which leaves out run-to-run drift). The report bolds a column's top algorithm only
where the pairwise bootstrap separates it from every other (:mod:`alignzoo.reports.pairwise`). Frames here are long ("tidy"); the renderers turn them into Markdown (tabulate, pipe),
LaTeX (booktabs) and CSV.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from tabulate import tabulate

from alignzoo.reports.results import PRETRAINED, final_evals

ERR_SEEDS = "standard error across seeds"
ERR_SE = "standard error"
DASH = "–"
Z_MARK = 2.0  # |gain| > 2 standard errors gets a mark


# ------------------------------------------------------------------------------- formatting
def decimals_for(values) -> int:
    """3 decimals for rewards of magnitude < 10 (aesthetic, ImageReward), 2 above (HPSv2 ×100, PickScore)."""
    vals = np.abs(np.asarray([v for v in values if v is not None and np.isfinite(v)], float))
    return 2 if vals.size and vals.max() >= 10 else 3


def format_pm(mean: float, err: float, decimals: int = 3, bold: bool = False, latex: bool = False) -> str:
    """``"0.612 ± 0.020"``; bold as ``**…**`` (Markdown) or ``\\textbf{…}`` (LaTeX); NaN error → mean alone."""
    if mean is None or not np.isfinite(mean):
        return "--" if latex else DASH
    pm = " $\\pm$ " if latex else " ± "
    text = f"{mean:.{decimals}f}" + (f"{pm}{err:.{decimals}f}" if err is not None and np.isfinite(err) else "")
    if bold:
        return f"\\textbf{{{text}}}" if latex else f"**{text}**"
    return text


def latex_escape(text: str) -> str:
    table = {
        "\\": r"\textbackslash{}",
        "&": r"\&",
        "%": r"\%",
        "$": r"\$",
        "#": r"\#",
        "_": r"\_",
        "{": r"\{",
        "}": r"\}",
        "~": r"\textasciitilde{}",
        "^": r"\textasciicircum{}",
    }
    return "".join(table.get(c, c) for c in str(text))


def step_label(n: int) -> str:
    return f"{int(n)}s"


# ------------------------------------------------------------------------------- Table 1
TABLE1_COLUMNS = ["prompt_set", "method", "reward", "steps", "mean", "std", "error", "seeds", "n"]


def table1_frame(evals: pd.DataFrame, prompt_set: str, algos: list[str], rewards: list[str]) -> pd.DataFrame:
    """Long frame: one row per (method, reward, steps) with mean, std (the ± value), error (what
    the ± is), seeds and n (images per evaluation). Methods = pretrained + ``algos``."""
    fin = final_evals(evals)
    fin = fin[fin["prompt_set"] == prompt_set]
    records = []
    for method in [PRETRAINED] + list(algos):
        if method == PRETRAINED:
            sub = fin[fin["algo"] == PRETRAINED]
        else:
            sub = fin[(fin["algo"] == method) & (fin["train_reward"] == fin["eval_reward"])]
        for reward in rewards:
            for n, g in sub[sub["eval_reward"] == reward].groupby("steps"):
                mean, err, kind, k = seed_summary(g)
                records.append(
                    {
                        "prompt_set": prompt_set,
                        "method": method,
                        "reward": reward,
                        "steps": int(n),
                        "mean": mean,
                        "std": err,
                        "error": kind,
                        "seeds": k,
                        "n": float(g["n"].mean()),
                    }
                )
    frame = pd.DataFrame(records, columns=TABLE1_COLUMNS)
    frame["best"] = best_mask(frame)
    return frame


def seed_summary(g: pd.DataFrame, value: str = "mean") -> tuple[float, float, str, int]:
    """(mean over seeds, ± value, what the ± is, seeds) of one column's final lines (one per cell).
    Several seeds: the standard error across seeds, std(ddof=1)/√seeds (run-to-run); one seed:
    the evaluation's standard error std/√n over its images."""
    g = g.drop_duplicates("cell", keep="last")  # one final line per seed
    vals = g[value].to_numpy(float)
    vals = vals[np.isfinite(vals)]
    if len(vals) == 0:
        return np.nan, np.nan, ERR_SE, 0
    if len(vals) > 1:
        return float(vals.mean()), float(np.std(vals, ddof=1) / math.sqrt(len(vals))), ERR_SEEDS, int(len(vals))
    row = g.iloc[0]
    if value != "mean":
        return float(vals[0]), np.nan, ERR_SE, 1
    nimg = row["n"] if np.isfinite(row["n"]) and row["n"] > 0 else np.nan
    return float(vals[0]), float(row["std"] / math.sqrt(nimg)) if np.isfinite(nimg) else np.nan, ERR_SE, 1


def best_mask(frame: pd.DataFrame, value: str = "mean") -> pd.Series:
    """True where ``value`` is the column's (reward, steps) maximum (ties all true)."""
    if frame.empty:
        return pd.Series([], dtype=bool)
    top = frame.groupby(["reward", "steps"])[value].transform("max")
    return pd.Series(np.isclose(frame[value].to_numpy(float), top.to_numpy(float), rtol=0, atol=1e-12), index=frame.index)


def _grid(frame: pd.DataFrame) -> dict:
    return {(r.method, r.reward, int(r.steps)): r for r in frame.itertuples(index=False)}


def _columns(frame: pd.DataFrame, rewards: list[str]) -> tuple[list[str], list[int]]:
    rewards = [r for r in rewards if (frame["reward"] == r).any()]
    steps = sorted(int(s) for s in frame["steps"].unique())
    return rewards, steps


def table1_markdown(frame: pd.DataFrame, methods: list[str], rewards: list[str]) -> str:
    """Pipe table: ``method | <reward> 1s | <reward> 2s | …``; best per column in ``**bold**``."""
    rewards, steps = _columns(frame, rewards)
    cells = _grid(frame)
    dec = {r: decimals_for(frame.loc[frame["reward"] == r, "mean"]) for r in rewards}
    mixed = _mixed(frame)
    rows = []
    for m in methods:
        if not (frame["method"] == m).any():
            continue
        row = [m]
        for r in rewards:
            for n in steps:
                c = cells.get((m, r, n))
                dagger = " †" if mixed and c is not None and c.error == ERR_SE and m != PRETRAINED else ""
                row.append(DASH if c is None else format_pm(c.mean, c.std, dec[r], bool(c.best)) + dagger)
        rows.append(row)
    headers = ["method"] + [f"{r} {step_label(n)}" for r in rewards for n in steps]
    return tabulate(rows, headers=headers, tablefmt="pipe", disable_numparse=True, colalign=["left"] + ["right"] * (len(headers) - 1))


def _mixed(frame: pd.DataFrame) -> bool:
    algo = frame[frame["method"] != PRETRAINED]
    return algo["error"].nunique() > 1


def table1_note(frame: pd.DataFrame) -> str:
    """What the ± means, for the line under the table."""
    algo = frame[frame["method"] != PRETRAINED]
    seeds = sorted(set(int(s) for s in algo["seeds"]))
    pre = "pretrained: ± the evaluation's standard error (std/√n, one evaluation)"
    if algo.empty:
        return f"Mean of the evaluation; {pre}."
    if seeds == [1]:
        body = "Final checkpoints, one seed: mean ± the evaluation's standard error (std/√n over the evaluation images)"
    elif 1 not in seeds:
        s = f"{seeds[0]}" if len(seeds) == 1 else f"{seeds[0]}–{seeds[-1]}"
        body = f"Final checkpoints: mean over {s} seeds ± the standard error across seeds (run-to-run: std over seeds / √seeds); {pre}"
    else:
        body = (
            f"Final checkpoints: mean over seeds ± the standard error across seeds (std over seeds / √seeds); cells marked † have "
            f"results from one seed only and show ± the evaluation's standard error; {pre}"
        )
    bold = (
        "bold: the column's highest algorithm mean, where the pairwise 95% bootstrap interval separates it from every other algorithm"
        if "best_source" in frame.attrs
        else "the best mean of each column is in bold"
    )
    return body + f". Each algorithm row of a reward uses the runs trained on that reward; {bold}."


def table1_latex(frame: pd.DataFrame, methods: list[str], rewards: list[str], caption: str | None = None) -> str:
    """booktabs tabular, one ``\\multicolumn`` group per reward; best per column in ``\\textbf``."""
    rewards, steps = _columns(frame, rewards)
    cells = _grid(frame)
    dec = {r: decimals_for(frame.loc[frame["reward"] == r, "mean"]) for r in rewards}
    k = len(steps)
    lines = []
    if caption:
        lines += [f"% {line}" for line in caption.splitlines()]
    lines += [
        "\\begin{tabular}{l" + ("c" * k) * len(rewards) + "}",
        "\\toprule",
        "Method & " + " & ".join(f"\\multicolumn{{{k}}}{{c}}{{{latex_escape(r)}}}" for r in rewards) + " \\\\",
        " ".join(f"\\cmidrule(lr){{{2 + i * k}-{1 + (i + 1) * k}}}" for i in range(len(rewards))),
        " & " + " & ".join(step_label(n) for _ in rewards for n in steps) + " \\\\",
        "\\midrule",
    ]
    mixed = _mixed(frame)
    present = [m for m in methods if (frame["method"] == m).any()]
    for i, m in enumerate(present):
        row = [latex_escape(m)]
        for r in rewards:
            for n in steps:
                c = cells.get((m, r, n))
                dagger = "$^\\dagger$" if mixed and c is not None and c.error == ERR_SE and m != PRETRAINED else ""
                row.append("--" if c is None else format_pm(c.mean, c.std, dec[r], bool(c.best), latex=True) + dagger)
        lines.append(" & ".join(row) + " \\\\")
        if m == PRETRAINED and i < len(present) - 1:
            lines.append("\\midrule")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines)


def table1_csv_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The numbers only (no formatting, no bold): prompt_set, method, reward, steps, mean, std, error, seeds, n, best."""
    return frame[TABLE1_COLUMNS + ["best"]].reset_index(drop=True)


# ------------------------------------------------------------------------------- paired gains
GAIN_COLUMNS = ["prompt_set", "method", "reward", "steps", "diff_mean", "diff_se", "z", "seeds"]


def gain_frame(evals: pd.DataFrame, prompt_set: str, algos: list[str], rewards: list[str]) -> pd.DataFrame:
    """Paired gain over the pretrained model (same prompts and noise) of each algorithm's final
    checkpoints on its trained reward: diff_mean averaged over seeds ± the standard error across
    seeds (several seeds) or the evaluation's paired standard error diff_se (one seed),
    z = diff_mean / diff_se."""
    fin = final_evals(evals)
    fin = fin[(fin["prompt_set"] == prompt_set) & (fin["algo"] != PRETRAINED) & (fin["train_reward"] == fin["eval_reward"])]
    fin = fin[fin["diff_mean"].notna()]
    records = []
    for algo in algos:
        sub = fin[fin["algo"] == algo]
        for reward in rewards:
            for n, g in sub[sub["eval_reward"] == reward].groupby("steps"):
                d, se, _kind, _k = seed_summary(g, "diff_mean")
                if _k == 1:
                    se = float(g["diff_se"].iloc[-1])
                if not np.isfinite(se):
                    z = np.nan  # no standard error recorded: no significance claim
                else:
                    z = d / se if se > 0 else (math.copysign(math.inf, d) if d != 0 else 0.0)
                records.append(
                    {
                        "prompt_set": prompt_set,
                        "method": algo,
                        "reward": reward,
                        "steps": int(n),
                        "diff_mean": d,
                        "diff_se": se,
                        "z": z,
                        "seeds": int(g["cell"].nunique()),
                    }
                )
    return pd.DataFrame(records, columns=GAIN_COLUMNS)


def gain_markdown(frame: pd.DataFrame, methods: list[str], rewards: list[str]) -> str:
    """``+0.051 ± 0.012 *`` per cell; ``*`` marks |gain| > 2 standard errors."""
    if frame.empty:
        return "(no paired differences were recorded)"
    rewards, steps = _columns(frame, rewards)
    dec = {r: decimals_for(frame.loc[frame["reward"] == r, "diff_mean"].abs().tolist() + [0.0]) for r in rewards}
    cells = {(r.method, r.reward, int(r.steps)): r for r in frame.itertuples(index=False)}
    rows = []
    for m in methods:
        if not (frame["method"] == m).any():
            continue
        row = [m]
        for r in rewards:
            for n in steps:
                c = cells.get((m, r, n))
                if c is None:
                    row.append(DASH)
                else:
                    se = f" ± {c.diff_se:.{dec[r]}f}" if np.isfinite(c.diff_se) else ""
                    row.append(f"{c.diff_mean:+.{dec[r]}f}{se}" + (" *" if abs(c.z) > Z_MARK else ""))
        rows.append(row)
    headers = ["method"] + [f"{r} {step_label(n)}" for r in rewards for n in steps]
    return tabulate(rows, headers=headers, tablefmt="pipe", disable_numparse=True, colalign=["left"] + ["right"] * (len(headers) - 1))


GAIN_NOTE = (
    f"Paired gain over the pretrained model on the same prompts and initial noise (final checkpoint minus pretrained), "
    f"mean over seeds ± the standard error across seeds (one seed: ± the evaluation's paired standard error); "
    f"* = |gain| > {Z_MARK:g} standard errors."
)
