"""Per-category GenEval scores of the compositional tiny world (``alignzoo tinyworld geneval``).

    alignzoo tinyworld geneval [--per-prompt 4] [--degraded] [--seed 0] [--judges tiny_geneval,tiny_geneval_judge2]

Today it scores procedural renders of every prompt (the ground-truth world: the sanity check
is that clean renders score >= 0.95 strict in every category); image sources from generators
plug in through :func:`category_table` (any images with their prompts).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from alignzoo.tinyworld.compose import grammar as g
from alignzoo.tinyworld.compose.render import DEGRADATIONS, degrade, render_batch
from alignzoo.tinyworld.training.compose.train_geneval import DEGRADED_SEVERITY


def category_table(images: torch.Tensor, prompts: Sequence[str], judges: Sequence[str], batch: int = 500) -> dict:
    """{judge: {category: {"strict": mean, "soft": mean, "n": count}, "overall": ...}} where
    overall is the mean over categories (GenEval's overall score)."""
    from alignzoo.rewards import get_reward

    cats = np.array([g.category_of(p) for p in prompts])
    out = {}
    for name in judges:
        judge = get_reward(name)
        strict, soft = [], []
        for i in range(0, len(prompts), batch):
            d = judge.details(images[i : i + batch], list(prompts[i : i + batch]))
            strict.append(d["strict"])
            soft.append(d["soft"])
        s, so = torch.cat(strict).numpy(), torch.cat(soft).numpy()
        table = {
            c: {"strict": round(float(s[cats == c].mean()), 4), "soft": round(float(so[cats == c].mean()), 4), "n": int((cats == c).sum())}
            for c in g.CATEGORIES
            if (cats == c).any()
        }
        table["overall"] = {k: round(float(np.mean([v[k] for v in table.values()])), 4) for k in ("strict", "soft")}
        out[name] = table
    return out


def render_prompts(per_prompt: int, seed: int, split: str = "all", degraded: bool = False) -> tuple[torch.Tensor, list[str]]:
    """``per_prompt`` satisfying renders (random Style) of every prompt of ``split``
    (seen | unseen | all); ``degraded``: one random degradation each, severity U(DEGRADED_SEVERITY) as in the judges' evaluation."""
    prompts = {"seen": g.seen_prompts, "unseen": g.unseen_prompts, "all": lambda: g.seen_prompts() + g.unseen_prompts()}[split]()
    prompts = [p for p in prompts for _ in range(per_prompt)]
    rng = np.random.default_rng(seed)
    images = render_batch([g.sample_scene(p, rng) for p in prompts], seed=seed)
    if degraded:
        gen = torch.Generator().manual_seed(seed)
        kind = rng.integers(0, len(DEGRADATIONS), size=len(prompts))
        sev = rng.uniform(*DEGRADED_SEVERITY, size=len(prompts))
        for k, name in enumerate(DEGRADATIONS):
            images = degrade(images, name, torch.tensor(np.where(kind == k, sev, 0.0), dtype=torch.float32), gen)
    return images, prompts


def format_table(tables: dict) -> str:
    cols = list(g.CATEGORIES) + ["overall"]
    lines = ["| judge | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, t in tables.items():
        lines.append(f"| {name} | " + " | ".join(f"{t[c]['strict']:.3f}" if c in t else "-" for c in cols) + " |")
    return "\n".join(lines)


def main(
    per_prompt: int = 4, seed: int = 0, degraded: bool = False, split: str = "all", judges: Sequence[str] = ("tiny_geneval", "tiny_geneval_judge2")
) -> dict:
    images, prompts = render_prompts(per_prompt, seed, split, degraded)
    tables = category_table(images, prompts, list(judges))
    print(f"strict GenEval score of {'degraded ' if degraded else ''}renders, {split} prompts x {per_prompt} ({len(prompts)} images, seed {seed})")
    print(format_table(tables))
    return tables
