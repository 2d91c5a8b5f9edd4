"""Step-generalization evaluation: score a model sampled with 1, 2, 4, 8, 16, 50 steps.

Every method is evaluated on the same prompts with the same initial noise: the noise of image k
of prompt p depends only on (seed, prompt set, p, k) and the latent shape, never on the model,
so per-image differences to the pretrained model are paired (TINYWORLD_NOTES: the paired
standard error is far smaller than that of two independent means).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from alignzoo.models.sampling import decode_steps, sample


def evaluation_noise(latent_shape: Sequence[int], n_prompts: int, images_per_prompt: int, seed: int, prompt_set: str) -> torch.Tensor:
    """(n_prompts × images_per_prompt, C, h, w) fixed noise; row = p·images_per_prompt + k."""
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + zlib.crc32(prompt_set.encode()))
    return torch.randn((n_prompts * images_per_prompt, *latent_shape), generator=g)


@dataclass
class EvalResult:
    prompt_set: str
    reward: str
    steps: int
    scores: np.ndarray  # (n_images,) per-image scores, row order of evaluation_noise

    def summary(self, baseline: np.ndarray | None = None) -> dict:
        n = len(self.scores)
        out = {"prompt_set": self.prompt_set, "eval_reward": self.reward, "steps": self.steps, "mean": float(self.scores.mean()),
               "std": float(self.scores.std(ddof=1)) if n > 1 else 0.0, "n": n, "diff_mean": None, "diff_se": None}
        if baseline is not None:
            d = self.scores - baseline
            out["diff_mean"] = float(d.mean())
            out["diff_se"] = float(d.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0
        return out


@torch.no_grad()
def evaluate(model, rewards: dict, prompt_sets: dict[str, list[str]], steps: Sequence[int], images_per_prompt: int = 2, eta: float = 0.0,
             seed: int = 1234, batch_size: int = 64, keep_images: int = 0, image_prompt_set: str | None = None):
    """Returns (results, strips): EvalResults for every (prompt set, reward, steps), and for the
    first ``keep_images`` images of ``image_prompt_set`` the images at each step count (S, K, 3, H, W)."""
    results: list[EvalResult] = []
    strips = {}
    for set_name, prompts in prompt_sets.items():
        expanded = [p for p in prompts for _ in range(images_per_prompt)]
        noise = evaluation_noise(model.latent_shape, len(prompts), images_per_prompt, seed, set_name)
        for n in steps:
            images = []
            for start in range(0, len(expanded), batch_size):
                part = expanded[start:start + batch_size]
                gen = torch.Generator().manual_seed(int(seed) + start)  # only used when eta > 0
                traj = sample(model, part, n, eta=eta, generator=gen, init_noise=noise[start:start + batch_size])
                images.append(decode_steps(model, traj, [-1])[:, 0])
            images = torch.cat(images)
            for rname, reward in rewards.items():
                scores = torch.cat([reward(images[i:i + batch_size].to(reward.device), expanded[i:i + batch_size]) for i in range(0, len(expanded), batch_size)])
                results.append(EvalResult(set_name, rname, int(n), scores.cpu().numpy().astype(np.float64)))
            if keep_images and set_name == (image_prompt_set or next(iter(prompt_sets))):
                strips[int(n)] = images[:keep_images].cpu()
    return results, strips


def paired_gain(model, reward, prompts: list[str], steps: int, images_per_prompt: int = 2, seed: int = 4321, batch_size: int = 64) -> dict:
    """Reward gain of the fine-tuned model over the pretrained one (same UNet, LoRA disabled),
    on the same prompts and held-out noise: mean and standard error of per-image differences."""
    sets = {"eval": list(prompts)}
    rewards = {"r": reward}
    with model.reference():
        (base,), _ = evaluate(model, rewards, sets, [steps], images_per_prompt, 0.0, seed, batch_size)
    (tuned,), _ = evaluate(model, rewards, sets, [steps], images_per_prompt, 0.0, seed, batch_size)
    d = tuned.scores - base.scores
    return {"before": float(base.scores.mean()), "after": float(tuned.scores.mean()), "gain": float(d.mean()),
            "se": float(d.std(ddof=1) / np.sqrt(len(d))), "n": int(len(d))}
