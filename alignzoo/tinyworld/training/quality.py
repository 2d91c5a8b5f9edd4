"""The first world's quality check: samples with diffusers' own pipelines, judged by
tiny_alignment (colour, shape, count and position accuracy), and tiny-lcm's guidance choice.

tiny-sd: DDIM (trailing, eta 0) at 16 and 1 steps, guidance 1.0; tiny-lcm: 4 and 1 steps at the
guidance its training run chose (a sweep over 1-3 at 4 steps, best colour+shape accuracy).
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import torch

from alignzoo.tinyworld.grammar import all_scenes, make_prompt, seen_prompts
from alignzoo.tinyworld.training.common import log


def load_alignment_reward(weights: Path):
    """tiny_alignment from ``weights/rewards/`` when a run wrote one there, else the committed one."""
    from alignzoo.rewards.tiny import TinyAlignmentReward

    path = weights / "rewards" / "tiny_alignment.safetensors"
    return TinyAlignmentReward(weights=path) if path.exists() else TinyAlignmentReward()


def _sample(pipe, prompts: list[str], steps: int, guidance: float, seed: int, batch: int = 270) -> torch.Tensor:
    out = []
    gen = torch.Generator().manual_seed(seed)
    for i in range(0, len(prompts), batch):
        kw = {"eta": 0.0} if "eta" in inspect.signature(pipe.__call__).parameters else {}
        res = pipe(prompts[i : i + batch], num_inference_steps=steps, guidance_scale=guidance, generator=gen, output_type="pt", height=32, width=32, **kw)
        out.append(res.images.float())
    return torch.cat(out)


def _load_pipes(sd_dir, lcm_dir):
    from diffusers import LatentConsistencyModelPipeline, StableDiffusionPipeline

    sd = StableDiffusionPipeline.from_pretrained(sd_dir, safety_checker=None, requires_safety_checker=False) if sd_dir else None
    lcm = LatentConsistencyModelPipeline.from_pretrained(lcm_dir, safety_checker=None, requires_safety_checker=False) if lcm_dir else None
    for p in (sd, lcm):
        if p is not None:
            p.set_progress_bar_config(disable=True)
    return sd, lcm


def choose_lcm_guidance(lcm_dir: Path, seed: int = 0, grid=(1.0, 1.5, 2.0, 2.5, 3.0)) -> tuple[float, dict]:
    from alignzoo.rewards.tiny import evaluate_attribute_accuracy

    _, lcm = _load_pipes(None, lcm_dir)
    prompts = [make_prompt(s) for s in all_scenes()]
    sweep = {}
    for g in grid:
        imgs = _sample(lcm, prompts, 4, g, seed + 100)
        acc = evaluate_attribute_accuracy(imgs, prompts, reward=load_alignment_reward(lcm_dir.parent))
        sweep[str(g)] = {k: round(v, 4) for k, v in acc.items() if k != "n"}
        log(f"lcm guidance {g}: {json.dumps(sweep[str(g)])}")
    best = max(grid, key=lambda g: (sweep[str(g)]["colour_and_shape"], sweep[str(g)]["all"], sweep[str(g)]["score"]))
    return float(best), sweep


def _accuracy_by_steps(pipe, label: str, step_counts: tuple, guidance: float, prompts: list[str], seed: int, reward) -> dict:
    from alignzoo.rewards.tiny import evaluate_attribute_accuracy

    res = {}
    for steps in step_counts:
        acc = evaluate_attribute_accuracy(_sample(pipe, prompts, steps, guidance, seed), prompts, reward=reward)
        res[f"{steps}_steps"] = {k: round(v, 4) for k, v in acc.items()}
        log(f"quality {label} {steps} steps (guidance {guidance}): {json.dumps(res[f'{steps}_steps'])}")
    return res


def quality_check(sd_dir, lcm_dir=None, seed: int = 0, per_prompt: int = 4, lcm_guidance: float | None = None) -> dict:
    """Samples the seen prompts ``per_prompt`` times with each given pipeline folder and judges
    them; returns accuracies per model and step count."""
    sd, lcm = _load_pipes(sd_dir, lcm_dir)
    reward = load_alignment_reward(Path(sd_dir).parent if sd_dir else Path(lcm_dir).parent)
    prompts = seen_prompts() * per_prompt
    res: dict = {}
    if sd is not None:
        res["sd"] = _accuracy_by_steps(sd, "tiny-sd", (16, 1), 1.0, prompts, seed + 7, reward)
    if lcm is not None:
        if lcm_guidance is None:
            lcm_guidance = json.loads((Path(lcm_dir) / "alignzoo.json").read_text())["guidance_scale"]
        res["lcm"] = {"guidance_scale": lcm_guidance, **_accuracy_by_steps(lcm, "tiny-lcm", (4, 1), lcm_guidance, prompts, seed + 7, reward)}
    return res
