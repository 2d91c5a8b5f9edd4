"""Step-generalization evaluation: score a model sampled with 1, 2, 4, 8, 16, 50 steps.

Every method is evaluated on the same prompts with the same initial noise: the noise of image k
of prompt p depends only on (seed, prompt set, p, k) and the latent shape, never on the model,
so per-image differences to the pretrained model are paired (TINYWORLD_NOTES: the paired
standard error is far smaller than that of two independent means).

Diversity (:func:`pairwise_diversity`) is measured on the same images, once per (prompt set,
step count), in one feature space per suite (:func:`feature_space`), so collapse shows beside
the rewards. Drift (:func:`image_drift`) is each image's RMS pixel distance to the pretrained
model's image from the same noise (both area-averaged to 32×32), so methods that blur or move far
from the (distilled) model show it beside the rewards they gained.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

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
    diversity: np.ndarray | None = None  # (n_prompts,) per-prompt mean pairwise distance; None: < 2 images per prompt
    diversity_space: str | None = None
    drift: np.ndarray | None = None  # (n_images,) RMS pixel distance to the pretrained image from the same noise
    thumbnails: torch.Tensor | None = None  # (n_images, 3, 32, 32) uint8: what drift compares (not in the summary)

    def summary(self, baseline: np.ndarray | None = None) -> dict:
        n = len(self.scores)
        out = {
            "prompt_set": self.prompt_set,
            "eval_reward": self.reward,
            "steps": self.steps,
            "mean": float(self.scores.mean()),
            "std": float(self.scores.std(ddof=1)) if n > 1 else 0.0,
            "n": n,
            "diff_mean": None,
            "diff_se": None,
            "diversity": None,
            "diversity_se": None,
            "diversity_space": self.diversity_space,
            "drift": None,
            "drift_se": None,
        }
        if self.diversity is not None:
            d = self.diversity
            out["diversity"] = float(d.mean())
            out["diversity_se"] = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else 0.0
        if self.drift is not None:
            out["drift"] = float(self.drift.mean())
            out["drift_se"] = float(self.drift.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0
        if baseline is not None:
            d = self.scores - baseline
            out["diff_mean"] = float(d.mean())
            out["diff_se"] = float(d.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0
        return out


PIXEL_SPACE = "pixels-16x16"


def pixel_features(images: torch.Tensor) -> torch.Tensor:
    """The fallback feature space: images area-averaged to 16×16, in [-1, 1], flattened (N, 768).
    Centred at 0 so that the cosine compares deviations from mid-grey, not the (always
    positive) pixel values themselves."""
    return (F.adaptive_avg_pool2d(images.float(), 16) * 2 - 1).flatten(1)


def feature_space(rewards: Mapping[str, torch.nn.Module]) -> tuple[str, Callable[[torch.Tensor], torch.Tensor]]:
    """The suite's diversity space: the first reward (in the suite's order) with a feature
    backbone (``feature_space`` set), else :func:`pixel_features`. Chosen from the suite's reward
    list alone, so every cell and the pretrained model are measured in the same space."""
    for reward in rewards.values():
        if getattr(reward, "feature_space", None):
            return reward.feature_space, lambda x, r=reward: r.features(x.to(r.device)).float().cpu()
    return PIXEL_SPACE, lambda x: pixel_features(x).cpu()


def pairwise_diversity(features: torch.Tensor, images_per_prompt: int) -> np.ndarray | None:
    """Per-prompt diversity: the mean over the K(K-1)/2 pairs of images of one prompt of
    ``1 - cos(f_i, f_j)`` (cosine of the features, i.e. the dot product after L2 normalisation).

    ``features``: (P·K, D), rows prompt-major (row = p·K + k, the evaluation's order). Returns
    (P,) values in [0, 2] (0: identical images, also when their features are all zero, where the
    cosine is undefined); None when K < 2. The reported diversity is
    their mean over prompts, and its standard error is over prompts.
    """
    k = int(images_per_prompt)
    if k < 2:
        return None
    if features.ndim != 2 or features.shape[0] % k:
        raise ValueError(f"features must be (n_prompts * {k}, D), got shape {tuple(features.shape)}")
    raw = features.double().reshape(-1, k, features.shape[1])
    f = F.normalize(raw, dim=-1)
    dist = 1.0 - f @ f.transpose(1, 2)  # (P, K, K)
    dist[torch.cdist(raw, raw) == 0] = 0.0  # identical features are at distance 0, zero vectors included
    return (dist.sum((1, 2)) / (k * (k - 1))).numpy()  # the diagonal is 0: the mean over ordered pairs i != j


DRIFT_SIZE = 32


def thumbnails(images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] (N, 3, H, W) → (N, 3, 32, 32) uint8, area-averaged: what drift compares
    (small enough to keep the pretrained model's for a whole suite)."""
    small = F.adaptive_avg_pool2d(images.float().cpu(), DRIFT_SIZE)
    return (small.clamp(0, 1) * 255).round().to(torch.uint8)


def image_drift(thumbs: torch.Tensor, reference: torch.Tensor) -> np.ndarray:
    """Per-image drift: the RMS difference, in [0, 1] pixel units, between each image's
    thumbnail and the pretrained model's from the same noise (row i of both); 0 = the same image."""
    if thumbs.shape != reference.shape:
        raise ValueError(
            f"drift needs the pretrained images of the same evaluation: got {tuple(thumbs.shape)} and {tuple(reference.shape)}; "
            "re-run the pretrained evaluation (delete <suite>/pretrained) with the suite's current evaluation settings"
        )
    diff = (thumbs.double() - reference.double()) / 255.0
    return diff.pow(2).flatten(1).mean(1).sqrt().numpy()


def _image_stats(features, images: torch.Tensor, images_per_prompt: int, batch_size: int, reference: torch.Tensor | None):
    """(diversity, thumbnails, drift) of one (prompt set, steps)'s images: diversity in the
    suite's feature space (None without one or with one image per prompt), drift against the
    pretrained thumbnails (None without them)."""
    diversity = None
    if features is not None and images_per_prompt >= 2:
        feats = torch.cat([features[1](images[i : i + batch_size]) for i in range(0, len(images), batch_size)])
        diversity = pairwise_diversity(feats, images_per_prompt)
    thumbs = thumbnails(images)
    drift = image_drift(thumbs, torch.as_tensor(reference)) if reference is not None else None
    return diversity, thumbs, drift


@torch.no_grad()
def evaluate(
    model,
    rewards: dict,
    prompt_sets: dict[str, list[str]],
    steps: Sequence[int],
    images_per_prompt: int = 2,
    eta: float = 0.0,
    seed: int = 1234,
    batch_size: int = 64,
    keep_images: int = 0,
    image_prompt_set: str | None = None,
    features: tuple[str, Callable] | None = None,
    reference_thumbnails: Mapping[str, torch.Tensor] | None = None,
):
    """Returns (results, strips): EvalResults for every (prompt set, reward, steps), and for the
    first ``keep_images`` images of ``image_prompt_set`` the images at each step count (S, K, 3, H, W).

    ``features`` = (space name, images -> (N, D)) adds the per-prompt diversity of each (prompt
    set, steps) to its results (:func:`pairwise_diversity`; ``feature_space`` picks the suite's).
    Every result carries its images' thumbnails; ``reference_thumbnails`` (``{"<prompt set>|<steps>":
    (N, 3, 32, 32)}``, the pretrained model's) adds the per-image drift (:func:`image_drift`)."""
    results: list[EvalResult] = []
    strips = {}
    for set_name, prompts in prompt_sets.items():
        expanded = [p for p in prompts for _ in range(images_per_prompt)]
        noise = evaluation_noise(model.latent_shape, len(prompts), images_per_prompt, seed, set_name)
        for n in steps:
            images = []
            for start in range(0, len(expanded), batch_size):
                part = expanded[start : start + batch_size]
                gen = torch.Generator().manual_seed(int(seed) + start)  # only used when eta > 0
                traj = sample(model, part, n, eta=eta, generator=gen, init_noise=noise[start : start + batch_size])
                images.append(decode_steps(model, traj, [-1])[:, 0])
            images = torch.cat(images)
            space = features[0] if features is not None else None
            reference = (reference_thumbnails or {}).get(f"{set_name}|{n}")
            diversity, thumbs, drift = _image_stats(features, images, images_per_prompt, batch_size, reference)
            for rname, reward in rewards.items():
                scores = torch.cat(
                    [reward(images[i : i + batch_size].to(reward.device), expanded[i : i + batch_size]) for i in range(0, len(expanded), batch_size)]
                )
                results.append(EvalResult(set_name, rname, int(n), scores.cpu().numpy().astype(np.float64), diversity, space, drift, thumbs))
            if keep_images and set_name == (image_prompt_set or next(iter(prompt_sets))):
                strips[int(n)] = images[:keep_images].cpu()
    return results, strips


def pretrained_scores(
    model, rewards: Mapping[str, torch.nn.Module], prompts: list[str], steps: int, images_per_prompt: int = 2, seed: int = 4321, batch_size: int = 64
) -> dict[str, np.ndarray]:
    """Per-image scores of the pretrained model (the same UNet, LoRA disabled) for each reward:
    the paired baseline of :func:`paired_gains`, which runs that share it can compute once."""
    with model.reference():
        results, _ = evaluate(model, dict(rewards), {"eval": list(prompts)}, [steps], images_per_prompt, 0.0, seed, batch_size)
    return {r.reward: r.scores for r in results}


def paired_gains(
    model,
    rewards: Mapping[str, torch.nn.Module],
    prompts: list[str],
    steps: int,
    images_per_prompt: int = 2,
    seed: int = 4321,
    batch_size: int = 64,
    base: Mapping[str, np.ndarray] | None = None,
) -> dict[str, dict]:
    """Reward gains of the fine-tuned model over the pretrained one, on the same prompts and
    held-out noise (images sampled once, scored by every reward): per reward, the mean and
    standard error of per-image differences. ``base``: :func:`pretrained_scores` computed before."""
    if base is None:
        base = pretrained_scores(model, rewards, prompts, steps, images_per_prompt, seed, batch_size)
    tuned, _ = evaluate(model, dict(rewards), {"eval": list(prompts)}, [steps], images_per_prompt, 0.0, seed, batch_size)
    out = {}
    for r in tuned:
        b = base[r.reward]
        d = r.scores - b
        out[r.reward] = {
            "before": float(b.mean()),
            "after": float(r.scores.mean()),
            "gain": float(d.mean()),
            "se": float(d.std(ddof=1) / np.sqrt(len(d))),
            "n": int(len(d)),
        }
    return out


def paired_gain(model, reward, prompts: list[str], steps: int, images_per_prompt: int = 2, seed: int = 4321, batch_size: int = 64) -> dict:
    """Reward gain of the fine-tuned model over the pretrained one (same UNet, LoRA disabled),
    on the same prompts and held-out noise: mean and standard error of per-image differences."""
    return paired_gains(model, {"r": reward}, prompts, steps, images_per_prompt, seed, batch_size)["r"]
