"""Training the first tiny world's models: reward CNNs, VAE, text-to-image model and its LCM.

Stages (run in this order by ``alignzoo tinyworld train --stage first-world``; each reads what the
earlier ones wrote), one module each:

rewards  ``tiny_alignment`` (four softmax heads) and ``tiny_aesthetic`` (1 - severity of a
         degradation) on fresh renders.                       -> weights/rewards/
vae      ``AutoencoderKL`` 32x32x3 <-> 4x8x8 (two downsamples), MSE + edge L1 + tiny KL; the
         config's ``scaling_factor`` makes scaled latents unit-std. -> weights/tiny-sd/vae/
sd       ``UNet2DConditionModel`` + ``CLIPTextModel`` trained jointly on the VAE's latents
         (epsilon, SD's scaled-linear betas, 10% prompt dropout, min-SNR-5 weights, EMA),
         saved as a ``StableDiffusionPipeline`` with a trailing DDIM scheduler. -> weights/tiny-sd/
lcm      latent consistency distillation (LCM paper, Alg. 1) of tiny-sd: DDIM solver with skip
         20 over 50 steps, guidance w ~ U[1, 3] fed through the w-embedding
         (``time_cond_proj_dim``), EMA target, LCMScheduler boundary scalings, 150 steps: a short
         distillation on purpose (see LCM_STEPS).                      -> weights/tiny-lcm/

Everything is seeded; the machine's two cores are the budget (see TRAINING.md for timings). The
compositional world's stages (``compose/``, this package's subpackage) reuse the components and
loops here.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from alignzoo.hf import quiet_from_now
from alignzoo.tinyworld import weights_dir
from alignzoo.tinyworld.training.common import log
from alignzoo.tinyworld.training.lcm import LCM_STEPS, train_lcm
from alignzoo.tinyworld.training.rewards import train_rewards
from alignzoo.tinyworld.training.sd import train_sd
from alignzoo.tinyworld.training.vae import train_vae

STAGES = ("rewards", "vae", "sd", "lcm")


def train(stage: str = "all", out: str | os.PathLike | None = None, seed: int = 0, threads: int = 2, scale: float = 1.0) -> dict:
    """Runs one stage or all of them; ``scale`` multiplies every step count (for quick trials)."""
    torch.set_num_threads(threads)
    quiet_from_now()
    out = Path(out) if out is not None else weights_dir()
    out.mkdir(parents=True, exist_ok=True)
    stages = STAGES if stage == "all" else (stage,)
    if any(s not in STAGES for s in stages):
        raise ValueError(f"unknown stage {stage!r}; known: {', '.join(STAGES)}, all")

    def n(steps: int) -> int:
        return max(1, int(round(steps * scale)))

    results = {}
    for s in stages:
        t0 = time.perf_counter()
        log(f"=== stage {s} -> {out}")
        if s == "rewards":
            results[s] = train_rewards(out, seed, align_steps=n(600), aes_steps=n(1000))
        elif s == "vae":
            results[s] = train_vae(out, seed, steps=n(1000))
        elif s == "sd":
            results[s] = train_sd(out, seed, steps=n(2000))
        elif s == "lcm":
            results[s] = train_lcm(out, seed, steps=n(LCM_STEPS))
        results[s]["wall_seconds"] = time.perf_counter() - t0
        log(f"=== stage {s} done in {results[s]['wall_seconds']:.1f}s")
    return results
