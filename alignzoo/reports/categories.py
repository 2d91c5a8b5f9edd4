"""GenEval-style per-category scores (``categories_<set>.md / .csv``).

For prompt sets of the compositional tiny world (every prompt parses under its grammar, e.g.
``geneval_seen``), the final per-image scores (``scores.json``, row = prompt·K + k) are split
by the prompt's category (single object, two objects, counting, colours, position, colour
attribution) and averaged, first per run, then over seeds; ``overall`` is the mean over
categories, as GenEval reports it. Only evaluation rewards whose name ends in ``strict`` or
that are 0/1-valued are tabulated (GenEval's table is a strict pass rate).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from alignzoo.reports.results import PRETRAINED, Results, parse_cell_name, slug

NOTE = "Per-category strict pass rates of the final checkpoints (mean over seeds), GenEval's layout: overall = the mean over the six categories."


def prompt_categories(prompt_set: str, n_prompts: int) -> list[str] | None:
    """The categories of the first ``n_prompts`` prompts of a set, None unless every one parses
    under the compositional grammar."""
    from alignzoo.prompts import get_prompts
    from alignzoo.tinyworld.compose import grammar as g

    try:
        prompts = get_prompts(prompt_set)[:n_prompts]
        return [g.category_of(p) for p in prompts] if len(prompts) == n_prompts else None
    except (ValueError, KeyError):
        return None


def _is_binary(values: np.ndarray) -> bool:
    return bool(np.isin(values, (0.0, 1.0)).all())


def category_frame(results: Results) -> pd.DataFrame:
    """One row per (run, prompt set, eval reward, steps, category): the run's mean."""
    ev = results.suite.get("eval", {})
    k = int(ev.get("images_per_prompt", 2))
    rows, cats_of = [], {}
    for cell, by_key in results.scores.items():
        parsed = parse_cell_name(cell)
        algo, train_reward, seed = parsed if parsed else (PRETRAINED, None, None)
        for key, values in by_key.items():
            prompt_set, reward, steps = key.rsplit("|", 2)
            if len(values) % k or not (reward.endswith("strict") or _is_binary(values)):
                continue
            n = len(values) // k
            if (prompt_set, n) not in cats_of:
                cats_of[(prompt_set, n)] = prompt_categories(prompt_set, n)
            cats = cats_of[(prompt_set, n)]
            if cats is None:
                continue
            per_image = np.repeat(np.array(cats), k)
            for c in dict.fromkeys(cats):
                rows.append(
                    {
                        "algo": algo,
                        "train_reward": train_reward,
                        "seed": seed,
                        "prompt_set": prompt_set,
                        "eval_reward": reward,
                        "steps": int(steps),
                        "category": c,
                        "mean": float(values[per_image == c].mean()),
                    }
                )
    return pd.DataFrame(rows)


def category_markdown(frame: pd.DataFrame) -> str:
    from alignzoo.tinyworld.compose.grammar import CATEGORIES

    runs = frame.groupby(["algo", "train_reward", "eval_reward", "steps", "category"], dropna=False)["mean"].mean().reset_index()
    cols = [c for c in CATEGORIES if c in set(runs["category"])]
    lines = ["| algorithm | trained on | scored by | steps | " + " | ".join(cols) + " | overall |", "|---" * (len(cols) + 5) + "|"]
    for (algo, tr, er, steps), part in runs.groupby(["algo", "train_reward", "eval_reward", "steps"], dropna=False, sort=False):
        by_cat = dict(zip(part["category"], part["mean"]))
        vals = [by_cat.get(c, np.nan) for c in cols]
        tr_text = "-" if tr is None or (isinstance(tr, float) and np.isnan(tr)) else tr
        lines.append(f"| {algo} | {tr_text} | {er} | {steps} | " + " | ".join(f"{v:.3f}" for v in vals) + f" | {np.nanmean(vals):.3f} |")
    return "\n".join(lines)


def category_sections(results: Results, out: Path) -> list[str]:
    frame = category_frame(results)
    if frame.empty:
        return []
    md = ["## Per-category scores (GenEval layout)", "", NOTE, ""]
    for ps, part in frame.groupby("prompt_set", sort=False):
        order = {a: i for i, a in enumerate([PRETRAINED] + results.algorithms)}
        part = part.sort_values(["algo", "train_reward", "eval_reward", "steps"], key=lambda s: s.map(order) if s.name == "algo" else s)
        text = category_markdown(part)
        (out / f"categories_{slug(ps)}.md").write_text(text + "\n\n" + NOTE + "\n")
        part.to_csv(out / f"categories_{slug(ps)}.csv", index=False)
        md += [f"### {ps} prompts", "", text, ""]
    return md
