"""``--stage vae``: the first world's ``AutoencoderKL`` (32x32x3 <-> 4x8x8), trained on fresh
renders with MSE + edge L1 + a tiny KL. Its config's ``scaling_factor`` is set to 1 / the latent
std of every scene's renders, so scaled latents are unit-std. -> ``weights/tiny-sd/vae/``
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from alignzoo.tinyworld.grammar import all_scenes, make_prompt
from alignzoo.tinyworld.training.common import log, log_every, optimizer_step, random_scenes, render_scenes, seed_all, warmup_cosine
from alignzoo.tinyworld.training.components import build_vae
from alignzoo.tinyworld.training.quality import load_alignment_reward


def _edges(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]


def vae_update(vae, x: torch.Tensor, opt, sched, kl_weight: float, pixel_l1: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """One VAE update on images ``x`` in [-1, 1]: MSE (or L1) + 0.5 x edge L1 + ``kl_weight`` x KL;
    returns (loss, MSE)."""
    post = vae.encode(x).latent_dist
    rec = vae.decode(post.sample()).sample
    (ex, ey), (rx, ry) = _edges(x), _edges(rec)
    mse = F.mse_loss(rec, x)
    pixel = (rec - x).abs().mean() if pixel_l1 else mse
    loss = pixel + 0.5 * ((rx - ex).abs().mean() + (ry - ey).abs().mean()) + kl_weight * post.kl().mean()
    optimizer_step(loss, opt, sched)
    return loss, mse


def fit_vae(
    vae, next_batch: Callable[[], torch.Tensor], steps: int, warmup: int, lr_floor: float, kl_weight: float, pixel_l1: bool = False, tag: str = "vae"
) -> None:
    """AdamW at 1e-3 (``warmup`` steps, cosine to ``lr_floor``) on ``next_batch()`` images in
    [0, 1]; leaves ``vae`` in eval mode."""
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(warmup, steps, lr_floor))
    t0 = time.perf_counter()
    vae.train()
    for step in range(steps):
        loss, mse = vae_update(vae, next_batch() * 2 - 1, opt, sched, kl_weight, pixel_l1)
        if (step + 1) % log_every(steps) == 0:
            log(f"{tag} step {step + 1}/{steps} loss {loss.item():.4f} mse {mse.item():.5f} ({time.perf_counter() - t0:.0f}s)")
    vae.eval()


def _calibrate(vae, out: Path) -> dict:
    """Sets ``scaling_factor`` from every scene rendered four times and judges their
    reconstructions with tiny_alignment (the weights under ``out``, else the committed ones)."""
    from alignzoo.rewards.tiny import evaluate_attribute_accuracy

    rng = np.random.default_rng(777)
    scenes = all_scenes() * 4
    x = render_scenes(scenes, rng)
    with torch.no_grad():
        z = torch.cat([vae.encode(x[i : i + 256] * 2 - 1).latent_dist.sample() for i in range(0, len(x), 256)])
        rec = torch.cat([vae.decode(z[i : i + 256]).sample for i in range(0, len(z), 256)])
    sf = float(1.0 / z.std())
    vae.register_to_config(scaling_factor=sf)
    rec01 = ((rec + 1) / 2).clamp(0, 1)
    acc = evaluate_attribute_accuracy(rec01, [make_prompt(s) for s in scenes], reward=load_alignment_reward(out))
    psnr = float(-10 * torch.log10(F.mse_loss(rec01, x)))
    log(
        f"vae: scaling_factor {sf:.4f} (latent mean {z.mean():.3f}); reconstruction PSNR {psnr:.2f} dB; "
        f"tiny_alignment on reconstructions {json.dumps({k: round(v, 4) for k, v in acc.items()})}"
    )
    return {"scaling_factor": sf, "psnr": psnr, "recon_accuracy": acc}


def train_vae(out: Path, seed: int = 0, steps: int = 1000, batch: int = 64, kl_weight: float = 1e-6) -> dict:
    rng = seed_all(seed + 2)
    vae = build_vae()
    log(f"vae: {sum(p.numel() for p in vae.parameters()) / 1e6:.3f}M parameters, latents 4x8x8")
    t0 = time.perf_counter()
    fit_vae(vae, lambda: render_scenes(random_scenes(rng, batch), rng), steps, 100, 0.05, kl_weight)
    figures = _calibrate(vae, out)
    vae.save_pretrained(out / "tiny-sd" / "vae", safe_serialization=True)
    return {"seconds": time.perf_counter() - t0, **figures}
