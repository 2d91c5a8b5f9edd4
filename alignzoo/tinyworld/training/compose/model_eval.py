"""Per-category GenEval scores of the compositional world's models (``alignzoo tinyworld eval``).

Samples the category-balanced evaluation lists (``geneval_seen`` + ``geneval_unseen``: 24 seen and
12 unseen entries per category, 216 in all, see ``grammar.balanced_prompts``) ``per_prompt`` times with
diffusers' own pipelines (DDIM trailing eta 0 for tiny-sd-v2 and tiny-turbo, LCMScheduler for
tiny-lcm-v2; guidance from each model's alignzoo.json), and reports per step count:
strict ``tiny_geneval`` per category and overall (the mean over categories, GenEval's rule),
the second judge's overall, the two judges' agreement on the strict verdict, and the fraction
of prompts with at least one strictly correct image among their ``per_prompt`` samples (what
group-based RL needs to have something to reinforce).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from alignzoo.tinyworld.compose import grammar as g

MODELS = {"tiny-sd-v2": ("compose-sd", "sd"), "tiny-turbo": ("compose-turbo", "sd"), "tiny-lcm-v2": ("compose-lcm", "lcm")}
JUDGES = ("tiny_geneval", "tiny_geneval_judge2")


def load_pipeline(folder: Path, kind: str):
    from diffusers import LatentConsistencyModelPipeline, StableDiffusionPipeline

    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(f"{folder} holds no diffusers pipeline; train it with `alignzoo tinyworld train --stage compose-models`")
    cls = LatentConsistencyModelPipeline if kind == "lcm" else StableDiffusionPipeline
    pipe = cls.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def guidance_of(folder: Path) -> float:
    meta = folder / "alignzoo.json"
    return float(json.loads(meta.read_text()).get("guidance_scale", 1.0)) if meta.is_file() else 1.0


@torch.no_grad()
def sample(pipe, prompts: Sequence[str], steps: int, guidance: float, seed: int, batch: int = 360) -> torch.Tensor:
    out = []
    gen = torch.Generator().manual_seed(seed)
    kw = {} if type(pipe).__name__.startswith("LatentConsistency") else {"eta": 0.0}
    for i in range(0, len(prompts), batch):
        res = pipe(list(prompts[i : i + batch]), num_inference_steps=steps, guidance_scale=guidance, generator=gen, output_type="pt", height=32, width=32, **kw)
        out.append(res.images.float())
    return torch.cat(out)


def score_images(images: torch.Tensor, prompts: Sequence[str], per_prompt: int, judges: Sequence[str] = JUDGES) -> dict:
    """Per-category strict scores, judges' agreement and the >= 1 correct fraction; ``prompts``
    holds each prompt ``per_prompt`` times in a row."""
    from alignzoo.rewards import get_reward

    cats = np.array([g.category_of(p) for p in prompts])
    strict = {}
    for name in judges:
        judge = get_reward(name)
        strict[name] = (
            torch.cat([judge.details(images[i : i + 500], list(prompts[i : i + 500]))["strict"] for i in range(0, len(prompts), 500)]).numpy().astype(float)
        )
    s = strict[judges[0]]
    row = {c: round(float(s[cats == c].mean()), 3) for c in g.CATEGORIES}
    row["overall"] = round(float(np.mean([row[c] for c in g.CATEGORIES])), 3)
    for name in judges[1:]:
        s2 = strict[name]
        row[f"overall_{name}"] = round(float(np.mean([s2[cats == c].mean() for c in g.CATEGORIES])), 3)
        row[f"agreement_{name}"] = round(float((s2 == s).mean()), 3)
    any_ok = s.reshape(-1, per_prompt).max(1)
    row[f"any_of_{per_prompt}"] = round(float(any_ok.mean()), 3)
    return row


def evaluation_prompts(per_prompt: int) -> list[str]:
    """Each entry of the balanced seen + unseen lists ``per_prompt`` times in a row."""
    return [p for p in g.balanced_prompts("seen", 24) + g.balanced_prompts("unseen", 12) for _ in range(per_prompt)]


def evaluate_model(name: str, weights: Path, steps: Sequence[int], per_prompt: int = 4, seed: int = 0) -> dict:
    sub, kind = MODELS[name]
    folder = weights / sub
    pipe = load_pipeline(folder, kind)
    guidance = guidance_of(folder)
    prompts = evaluation_prompts(per_prompt)
    return {str(n): score_images(sample(pipe, prompts, n, guidance, seed + n), prompts, per_prompt) for n in steps}


def format_rows(results: dict, per_prompt: int) -> str:
    cols = list(g.CATEGORIES) + ["overall", f"overall_{JUDGES[1]}", f"agreement_{JUDGES[1]}", f"any_of_{per_prompt}"]
    heads = list(g.CATEGORIES) + ["overall", "judge2 overall", "judges agree", f">=1 of {per_prompt}"]
    lines = ["| model | steps | " + " | ".join(heads) + " |", "|---" * (len(heads) + 2) + "|"]
    for model, by_steps in results.items():
        for n, row in by_steps.items():
            lines.append(f"| {model} | {n} | " + " | ".join(f"{row[c]:.3f}" for c in cols) + " |")
    return "\n".join(lines)


# Issue 13's bands for the base models (item 4): a teacher like SD-class models (good at single
# objects, weak at position and colour attribution, mid-range overall at 4-16 steps) and a
# distilled turbo model whose 1-step sample keeps most of its 4-step score.
TEACHER_STEPS = (4, 8, 16)
TEACHER_OVERALL = (0.35, 0.60)
TEACHER_SINGLE_MIN = 0.75
TEACHER_WEAK_MAX = 0.40  # position and colour attribution
TURBO_ONE_STEP_RATIO = 0.8


def band_checks(results: dict) -> list[tuple[str, float, str, bool]]:
    """(what, measured, band, inside) for every band the evaluated models and steps allow."""
    checks = []
    sd = {int(n): row for n, row in results.get("tiny-sd-v2", {}).items()}
    lo, hi = TEACHER_OVERALL
    for n in sorted(set(sd) & set(TEACHER_STEPS)):
        row = sd[n]
        checks.append((f"tiny-sd-v2 overall, {n} steps", row["overall"], f"[{lo}, {hi}]", lo <= row["overall"] <= hi))
        checks.append((f"tiny-sd-v2 single_object, {n} steps", row["single_object"], f">= {TEACHER_SINGLE_MIN}", row["single_object"] >= TEACHER_SINGLE_MIN))
        for cat in ("position", "color_attr"):
            checks.append((f"tiny-sd-v2 {cat}, {n} steps", row[cat], f"<= {TEACHER_WEAK_MAX}", row[cat] <= TEACHER_WEAK_MAX))
    turbo = {int(n): row for n, row in results.get("tiny-turbo", {}).items()}
    if 1 in turbo and 4 in turbo:
        ratio = turbo[1]["overall"] / max(turbo[4]["overall"], 1e-9)
        checks.append(("tiny-turbo overall, 1 step / 4 steps", round(ratio, 3), f">= {TURBO_ONE_STEP_RATIO}", ratio >= TURBO_ONE_STEP_RATIO))
    return checks


def format_bands(checks: list[tuple[str, float, str, bool]]) -> str:
    if not checks:
        return "(no band applies to the models and step counts evaluated: tiny-sd-v2 at 4/8/16 steps, tiny-turbo at 1 and 4)"
    lines = ["| band (issue 13) | measured | band | inside |", "|---|---|---|---|"]
    lines += [f"| {what} | {value:.3f} | {band} | {'yes' if ok else 'NO'} |" for what, value, band, ok in checks]
    return "\n".join(lines)


def main(weights: Path, models: Sequence[str] = tuple(MODELS), steps: Sequence[int] = (1, 2, 4, 8, 16), per_prompt: int = 4, seed: int = 0) -> dict:
    results = {m: evaluate_model(m, weights, steps, per_prompt, seed) for m in models}
    print(
        f"strict tiny_geneval of generated images: 216 category-balanced prompt entries (36 per category) x {per_prompt} "
        f"(seed {seed}); overall = mean over categories"
    )
    print(format_rows(results, per_prompt))
    checks = band_checks(results)
    print(f"\n{format_bands(checks)}\n{sum(ok for *_, ok in checks)} of {len(checks)} bands hold")
    return results
