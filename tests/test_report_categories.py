"""Per-category (GenEval layout) tables of the report, on hand-made per-image scores."""

from __future__ import annotations

import numpy as np
import pandas as pd

from alignzoo.prompts import get_prompts
from alignzoo.reports.categories import category_frame, category_markdown
from alignzoo.reports.results import Results
from alignzoo.tinyworld.compose import grammar as g


def _results(scores: dict, k: int) -> Results:
    return Results(run_dir=None, evals=pd.DataFrame(), logs=pd.DataFrame(), suite={"eval": {"images_per_prompt": k}}, scores=scores)


def test_category_means_follow_the_prompt_order_and_skip_soft_or_foreign_sets():
    k = 3
    prompts = get_prompts("geneval_unseen")
    rng = np.random.default_rng(0)
    strict = {s: rng.integers(0, 2, size=len(prompts) * k).astype(float) for s in (0, 1)}
    soft = rng.uniform(size=len(prompts) * k)
    scores = {
        f"ddpo__tiny_geneval__seed{s}": {
            "geneval_unseen|tiny_geneval_strict|4": strict[s],
            "geneval_unseen|tiny_geneval|4": soft,  # soft: not tabulated
            "seen|tiny_geneval_strict|4": np.ones(64 * k),
        }  # first world: no categories
        for s in (0, 1)
    }
    frame = category_frame(_results(scores, k))
    assert set(frame["eval_reward"]) == {"tiny_geneval_strict"} and set(frame["prompt_set"]) == {"geneval_unseen"}
    cats = [g.category_of(p) for p in prompts]
    for s in (0, 1):
        for c in set(cats):
            rows = [i * k + j for i, cc in enumerate(cats) if cc == c for j in range(k)]  # row = prompt·K + k
            got = frame[(frame["seed"] == s) & (frame["category"] == c)]["mean"].item()
            assert abs(got - strict[s][rows].mean()) < 1e-12
    md = category_markdown(frame)
    row = next(line for line in md.splitlines() if line.startswith("| ddpo |"))
    cells = [float(x) for x in row.strip("|").split("|")[4:]]
    expected = [np.mean([frame[(frame["seed"] == s) & (frame["category"] == c)]["mean"].item() for s in (0, 1)]) for c in g.CATEGORIES if c in set(cats)]
    assert np.allclose(cells[:-1], expected, atol=5e-4) and abs(cells[-1] - np.mean(expected)) < 5e-4
