"""``report.md`` and its files, from a benchmark folder's stored results alone (no model loading).

:func:`write_report` writes into ``out_dir`` (default: the results folder itself):

=================================  ==========================================================
``table_<set>.md / .tex / .csv``   Table-1 style rewards per prompt set (SDPO Table 1)
``gain_<set>.md / .csv``           paired gain over the pretrained model, ± standard error
``learning_curves.png``            training reward vs images / UNet evaluations / seconds (Fig. 3)
``stepgen_<reward>_<set>.png``     eval reward vs training progress, a panel per step count (Figs. 4, 8–11)
``final_vs_steps_<set>.png``       final reward vs sampling steps, one panel per reward
``grid_<reward>.png`` (or .jpg)    image grid, rows = pretrained + algorithms, columns = steps (Fig. 1)
``cost.md / cost.csv``             wall clock, UNet evaluations, VAE decodes, reward queries
(sections.py)                      pairwise, held-out/diversity, compute, provenance, health flags
``report.md``                      all of the above, with observations computed from the numbers
=================================  ==========================================================

Means are over seeds, ± the standard error across seeds; rankings are stated only where a
pairwise bootstrap interval excludes zero (:mod:`alignzoo.reports.pairwise`).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from alignzoo.reports import categories, compute, control, pairwise, plots, sections, tables
from alignzoo.reports import cost as cost_table
from alignzoo.reports.results import PRETRAINED, Results, load_results, slug


# ------------------------------------------------------------------------------- observations
def _runs(items: list[tuple[int, str]]) -> str:
    """[(1, a), (2, b), (4, b)] → "1s: a; 2s–4s: b" (consecutive step counts with the same winner merged)."""
    parts, i = [], 0
    while i < len(items):
        j = i
        while j + 1 < len(items) and items[j + 1][1] == items[i][1]:
            j += 1
        span = f"{items[i][0]}s" if i == j else f"{items[i][0]}s–{items[j][0]}s"
        parts.append(f"{span}: {items[i][1]}")
        i = j + 1
    return "; ".join(parts)


def _steps(n) -> str:
    return f"{int(n)} step" + ("" if int(n) == 1 else "s")


def _pm(d: float, se: float) -> str:
    z = d / se if se > 0 else math.inf
    return f"{d:+.3f} ± {se:.3f} (z = {z:+.1f})" if np.isfinite(z) else f"{d:+.3f}"


def observations(
    results: Results,
    table_frames: dict[str, pd.DataFrame],
    gain_frames: dict[str, pd.DataFrame],
    cost: pd.DataFrame,
    pairwise_frames: dict[str, pd.DataFrame],
    control_frame: pd.DataFrame,
) -> list[str]:
    """Short statements computed from the tables (nothing hard-coded): rankings where a pairwise
    interval excludes zero ("not separated" elsewhere), significant gains and losses, where gains
    peak across step counts, training and cost."""
    lines: list[str] = []
    # coverage
    cells = results.cells
    if not cells.empty:
        unfinished = cells[~cells["done"]]["cell"].tolist()
        lines.append(
            f"{len(cells)} training runs found, {len(cells) - len(unfinished)} finished"
            + (f"; still running or interrupted (their latest evaluation is used): {', '.join(unfinished)}." if unfinished else ".")
        )
    # rankings: only where the pairwise interval excludes zero
    for frame in pairwise_frames.values():
        lines += pairwise.ranking_lines(frame)
    lines += _gain_lines(results, gain_frames)
    t_train = (results.suite.get("train") or {}).get("num_steps")
    lines += control.control_lines(control_frame, t_train)
    lines += _training_cost_lines(results, cost)
    return [f"- {line}" for line in lines]


def _gain_lines(results: Results, gain_frames: dict[str, pd.DataFrame]) -> list[str]:
    """Significance counts and extremes of the paired gains over pretrained; where gains peak."""
    algos = results.algorithms
    lines: list[str] = []
    # significance counts and extremes of the paired gains
    nonempty = [g for g in gain_frames.values() if not g.empty]
    gains = pd.concat(nonempty, ignore_index=True) if nonempty else pd.DataFrame()
    if gains.empty:
        return lines
    z = tables.Z_MARK
    for algo in algos:
        g = gains[gains["method"] == algo]
        if g.empty:
            continue
        up, down = int((g["z"] > z).sum()), int((g["z"] < -z).sum())
        lines.append(
            f"**{algo}** vs pretrained (paired, all rewards, step counts and prompt sets): above by more than {z:g} SE in "
            f"{up} of {len(g)} cells, below in {down}."
        )

    def where(r) -> str:
        return f"{r['method']} on {r['reward']} at {_steps(r['steps'])}, {r['prompt_set']} prompts: {_pm(r['diff_mean'], r['diff_se'])}"

    best = gains.loc[gains["diff_mean"].idxmax()]
    lines.append(f"Largest gain over pretrained: {where(best)}.")
    sig = gains[gains["z"] > z]
    if sig.empty:
        lines.append(f"No algorithm beats the pretrained model by more than {z:g} standard errors anywhere.")
    elif sig["diff_mean"].idxmax() != gains["diff_mean"].idxmax():
        lines.append(f"Largest gain above {z:g} standard errors: {where(sig.loc[sig['diff_mean'].idxmax()])}.")
    worst = gains.loc[gains["diff_mean"].idxmin()]
    if worst["diff_mean"] < 0:
        lines.append(f"Largest loss against pretrained: {where(worst)}.")
    # step generalization: where each algorithm's gain peaks (averaged over rewards and prompt sets)
    t_train = (results.suite.get("train") or {}).get("num_steps")
    for algo in algos:
        g = gains[gains["method"] == algo].groupby("steps")["diff_mean"].mean()
        if len(g) < 2:
            continue
        text = (
            f"Step generalization of **{algo}** (gain averaged over rewards and prompt sets): largest at {_steps(g.idxmax())} "
            f"({g.max():+.3f}), smallest at {_steps(g.idxmin())} ({g.min():+.3f})"
        )
        if t_train is not None and int(t_train) in g.index and int(t_train) != int(g.idxmax()):
            text += f"; at the training trajectory length ({_steps(t_train)}): {g[int(t_train)]:+.3f}"
        lines.append(text + ".")
    return lines


def _training_cost_lines(results: Results, cost: pd.DataFrame) -> list[str]:
    """The final training reward (listed, not ranked) and the cost per 1,000 samples."""
    lines: list[str] = []
    # training curves
    logs = results.logs
    if not logs.empty and "reward_mean" in logs.columns:
        last = logs.loc[logs.groupby("cell")["epoch"].idxmax()]
        for reward in results.rewards:
            f = last[last["train_reward"] == reward].groupby("algo")["reward_mean"].mean().dropna()
            if len(f) > 1:  # the sampled batches' reward: no interval, so listed without a ranking claim
                lines.append(
                    f"Final training reward on {reward} (last epoch's batch, mean over seeds; not a ranking): "
                    + ", ".join(f"{a} {v:.3f}" for a, v in f.items())
                    + "."
                )
    # cost
    if not cost.empty and cost["seconds_total_per_1k"].notna().any():
        per = cost.groupby("method", sort=False)[["seconds_total_per_1k", "reward_queries_per_1k"]].mean()
        per = per.dropna(subset=["seconds_total_per_1k"])
        if len(per) > 1:
            lines.append(
                f"Training cost per 1,000 samples: fastest {per['seconds_total_per_1k'].idxmin()} "
                f"({per['seconds_total_per_1k'].min():,.1f} s), slowest {per['seconds_total_per_1k'].idxmax()} "
                f"({per['seconds_total_per_1k'].max():,.1f} s); reward queries per 1,000 samples range from "
                f"{per['reward_queries_per_1k'].min():,.0f} to {per['reward_queries_per_1k'].max():,.0f}."
            )
    return lines


# ------------------------------------------------------------------------------- the report
def _setup_lines(results: Results) -> list[str]:
    s = results.suite
    ev = s.get("eval") or {}
    tr = s.get("train") or {}
    facts = [
        ("model", f"`{results.model}`" if results.model else None),
        ("algorithms", ", ".join(results.algorithms) or None),
        ("trained rewards", ", ".join(results.rewards) or None),
        ("seeds", ", ".join(str(x) for x in results.seeds) or None),
        ("training samples per run", f"{s['samples']:,}" if isinstance(s.get("samples"), int) else None),
        ("training trajectory length", tr.get("num_steps")),
        ("evaluation step counts", ", ".join(str(n) for n in results.steps)),
        ("prompt sets", ", ".join(results.prompt_sets)),
        ("evaluation eta", ev.get("eta")),
        ("evaluation images per set", _images_per_set(results)),
    ]
    out = [f"- {k}: {v}" for k, v in facts if v is not None and v != ""]
    return out + ["- every model is evaluated on the same prompts with the same initial noise, so differences to the pretrained model are paired"]


def _images_per_set(results: Results) -> str | None:
    n = results.evals["n"].dropna()
    if n.empty:
        return None
    lo, hi = int(n.min()), int(n.max())
    return str(lo) if lo == hi else f"{lo}–{hi}"


def _table_sections(results: Results, out: Path, pairwise_frames: dict) -> tuple[dict, dict, list[str]]:
    """Table 1 and the gain table of every prompt set: (table frames, gain frames, Markdown)."""
    algos, rewards, methods = results.algorithms, results.rewards, [PRETRAINED] + results.algorithms
    table_frames, gain_frames, body = {}, {}, []
    for ps in results.prompt_sets:
        frame = tables.table1_frame(results.evals, ps, algos, rewards)
        if frame.empty:
            continue
        # bold only a top algorithm the pairwise intervals separate from every other (none without them)
        frame["best"] = pairwise.separated_best(frame, pairwise_frames.get(ps, pairwise.empty_frame()))
        frame.attrs["best_source"] = "pairwise"
        table_frames[ps] = frame
        name = slug(ps)
        mk = tables.table1_markdown(frame, methods, rewards)
        note = tables.table1_note(frame)
        (out / f"table_{name}.md").write_text(mk + "\n\n" + note + "\n")
        caption = f"{results.name}: {ps} prompts. {note}"
        (out / f"table_{name}.tex").write_text(tables.table1_latex(frame, methods, rewards, caption=caption) + "\n")
        tables.table1_csv_frame(frame).to_csv(out / f"table_{name}.csv", index=False)
        gain = tables.gain_frame(results.evals, ps, algos, rewards)
        gain_frames[ps] = gain
        gmk = tables.gain_markdown(gain, algos, rewards)
        (out / f"gain_{name}.md").write_text(gmk + "\n\n" + tables.GAIN_NOTE + "\n")
        gain.to_csv(out / f"gain_{name}.csv", index=False)
        body += [
            f"## Reward at each sampling step count: {ps} prompts",
            "",
            mk,
            "",
            note,
            f"([Markdown](table_{name}.md), [LaTeX](table_{name}.tex), [CSV](table_{name}.csv))",
            "",
            "Gain over the pretrained model:",
            "",
            gmk,
            "",
            tables.GAIN_NOTE,
            "",
        ]
    return table_frames, gain_frames, body


def _figure_sections(results: Results, out: Path, x: str) -> list[str]:
    """Learning curves and step-generalization figures against ``x`` (images, unet or seconds)."""
    algos, rewards, md = results.algorithms, results.rewards, []
    if plots.plot_learning_curves(results.logs, algos, rewards, out / "learning_curves.png", x=x):
        md += [
            "## Learning curves",
            "",
            f"Training reward of the sampled batches vs {compute.X_AXES[x]} (SDPO Fig. 3 style); mean over seeds, band = ± the standard error across seeds.",
            "",
            "![learning curves](learning_curves.png)",
            "",
        ]
    step_md = []
    for ps in results.prompt_sets:
        f = f"final_vs_steps_{slug(ps)}.png"
        if plots.plot_final_vs_steps(results.evals, algos, rewards, ps, out / f):
            step_md += [f"### Final reward vs sampling steps, {ps} prompts", "", f"![final reward vs steps, {ps}]({f})", ""]
    for reward in rewards:
        for ps in results.prompt_sets:
            f = f"stepgen_{slug(reward)}_{slug(ps)}.png"
            if plots.plot_step_curves(results.evals, algos, reward, ps, out / f, logs=results.logs, x=x):
                step_md += [f"### {reward} during training at each step count, {ps} prompts", "", f"![{reward}, {ps}]({f})", ""]
    if step_md:
        md += [
            "## Step generalization",
            "",
            "Evaluation reward of checkpoints sampled with each step count (SDPO Figs. 4, 8–11), "
            f"against {compute.X_AXES[x]}; mean over seeds, band = ± the standard error across seeds; the dashed line is the "
            "pretrained model.",
            "",
        ] + step_md
    return md


def _grid_section(results: Results, out: Path, grid_images: int) -> list[str]:
    grids = []
    for reward in results.rewards:
        g = plots.reward_grid(results, reward, results.algorithms, out, grid_images=grid_images)
        if g is not None:
            grids.append((reward, g.name))
    if not grids:
        return []
    return [
        "## Images",
        "",
        "Final checkpoints (first seed) and the pretrained model, with the same prompts and initial noise in every row (SDPO Fig. 1 style).",
        "",
    ] + [f"### Trained on {r}\n\n![grid {r}]({f})\n" for r, f in grids]


def write_report(run_dir: str | Path, out_dir: str | Path | None = None, grid_images: int = 4, x: str = "images") -> Path:
    """Write every table, figure and grid of ``run_dir`` and ``report.md`` into ``out_dir``
    (default ``run_dir``); returns the path of ``report.md``. ``x``: the curves' axis (images,
    unet or seconds). Raises ProvenanceError (a ValueError) when a table column mixes settings."""
    results = load_results(run_dir)
    out = Path(out_dir) if out_dir is not None else results.run_dir
    algos, rewards = results.algorithms, results.rewards
    if x != "images":  # a bad --x, or counters the logs lack, fail before anything is written
        compute.logs_with_x(results.logs, x)
    out.mkdir(parents=True, exist_ok=True)
    prov_md = sections.provenance_section(results, out)  # refuses mixed settings before any table
    pairwise_frames, pairwise_md = sections.pairwise_sections(results, out, algos, rewards)
    md = [f"# Benchmark report: {results.name}", ""]
    if results.suite.get("description"):
        md += [f"{results.suite['description']}", ""]
    md += _setup_lines(results) + [""]
    table_frames, gain_frames, body = _table_sections(results, out, pairwise_frames)

    cost = cost_table.cost_frame(results.logs, algos, rewards)
    cost_md = cost_table.cost_markdown(cost)
    (out / "cost.md").write_text(cost_md + "\n\n" + cost_table.COST_NOTE + "\n")
    cost.to_csv(out / "cost.csv", index=False)

    control_frame = control.control_frame(results, algos, rewards)  # one frame: observations, its section, flags
    heldout_flags, heldout_md = sections.heldout_sections(results, out, algos, rewards)
    _cell_flags, flags_md = sections.flags_section(results, out, control_frame, heldout_flags)
    md += ["## Observations", "", "Computed from the tables and logs below.", ""]
    md += observations(results, table_frames, gain_frames, cost, pairwise_frames, control_frame) + [""]
    md += body + categories.category_sections(results, out) + sections.control_section(control_frame, out) + pairwise_md + heldout_md + flags_md
    md += _figure_sections(results, out, x) + _grid_section(results, out, grid_images)
    md += sections.compute_section(results, out, algos, rewards)
    md += ["## Cost", "", cost_md, "", cost_table.COST_NOTE, ""] + prov_md
    path = out / "report.md"
    path.write_text("\n".join(md).rstrip() + "\n")
    return path
