"""The compositional tiny world's VAE and multi-step teacher (``--stage vae2`` and ``sd2``).

vae2  ``AutoencoderKL`` 32x32x3 <-> 8x8x8 (two downsamples, 8 latent channels: 4 channels lost
      the hue of small shapes on these renders), trained on pretraining scenes and prompt-free
      scenes; MSE + edge L1 + a tiny KL; ``scaling_factor`` = 1 / latent std.
      -> weights/compose-sd/vae/
sd2   ``UNet2DConditionModel`` (8 latent channels, the tiny-sd layout) + ``CLIPTextModel``
      trained jointly on web-captioned scenes (:mod:`pretrain_data`): epsilon prediction, SD's
      scaled-linear betas, 10% caption dropout, min-SNR-5 weights, EMA 0.999, in the three runs
      of :data:`SD_PHASES` (constant lr, then two cosine decays, each from the previous EMA).
      Saved as a ``StableDiffusionPipeline`` with a trailing DDIM scheduler.
      -> weights/compose-sd/
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from alignzoo.tinyworld.compose import pretrain_data as pdata
from alignzoo.tinyworld.compose.render import render_batch
from alignzoo.tinyworld.compose.sampling import random_scene
from alignzoo.tinyworld.training.common import EMA, log, log_every, tokenize, warmup_cosine, write_alignzoo_json
from alignzoo.tinyworld.training.components import alphas_cumprod, build_text_encoder, build_unet, build_vae, sd_pipeline
from alignzoo.tinyworld.training.sd import denoising_update
from alignzoo.tinyworld.training.vae import fit_vae

LATENT_CHANNELS = 8
SD_DIR, TURBO_DIR, LCM_DIR = "compose-sd", "compose-turbo", "compose-lcm"
VAE_STEPS = 2400
# the teacher's runs: (steps, lr, schedule); "constant" warms up over 200 steps, "cosine" decays
# to 0.1x. Measured (strict tiny_geneval, 4 / 16 steps): after the first 0.13 / 0.12, the second
# 0.25 / 0.22, the third 0.35 / 0.37 (docs/tinyworld.md).
SD_PHASES = ((1600, 1e-3, "constant"), (2000, 1e-3, "cosine"), (2000, 5e-4, "cosine"))
VAE_PIXEL_LOSS = "mse"  # or "l1" (ALIGNZOO_VAE2_PIXEL)


def _vae_batch(rng: np.random.Generator, n: int) -> torch.Tensor:
    """70% pretraining scenes (what the teacher learns), 30% prompt-free scenes (0-4 objects)."""
    k = int(round(n * 0.7))
    scenes, _ = pdata.pretraining_scenes(k, rng)
    scenes += [random_scene(rng) for _ in range(n - k)]
    return render_batch(scenes, seed=int(rng.integers(1 << 31)))


def reconstruction_check(vae, seed: int = 777, per_prompt: int = 2) -> dict:
    """PSNR and tiny_geneval's strict score (overall, per category) of reconstructions against
    the clean renders they came from (every prompt x ``per_prompt``)."""
    from alignzoo.tinyworld.training.compose.evaluate import category_table, render_prompts

    x, prompts = render_prompts(per_prompt, seed)
    with torch.no_grad():
        z = torch.cat([vae.encode(x[i : i + 256] * 2 - 1).latent_dist.mean for i in range(0, len(x), 256)])
        rec = torch.cat([vae.decode(z[i : i + 256]).sample for i in range(0, len(z), 256)])
    rec01 = ((rec + 1) / 2).clamp(0, 1)
    psnr = float(-10 * torch.log10(F.mse_loss(rec01, x)))
    clean = category_table(x, prompts, ["tiny_geneval"])["tiny_geneval"]
    recon = category_table(rec01, prompts, ["tiny_geneval"])["tiny_geneval"]
    return {
        "psnr": round(psnr, 2),
        "strict_clean": {c: v["strict"] for c, v in clean.items()},
        "strict_reconstructed": {c: v["strict"] for c, v in recon.items()},
    }


def train_vae2(out: Path, seed: int = 0, scale: float = 1.0, batch: int = 64, kl_weight: float = 1e-6) -> dict:
    steps = max(1, round(VAE_STEPS * scale))
    pixel_l1 = os.environ.get("ALIGNZOO_VAE2_PIXEL", VAE_PIXEL_LOSS) == "l1"
    rng = np.random.default_rng(seed + 20)
    torch.manual_seed(seed + 20)
    vae = build_vae(LATENT_CHANNELS)
    log(f"vae2: {sum(p.numel() for p in vae.parameters()) / 1e6:.3f}M parameters, latents {LATENT_CHANNELS}x8x8")
    t0 = time.perf_counter()
    fit_vae(vae, lambda: _vae_batch(rng, batch), steps, 50, 0.2, kl_weight, pixel_l1, tag="vae2")
    with torch.no_grad():
        z = torch.cat([vae.encode(_vae_batch(np.random.default_rng(778), 256) * 2 - 1).latent_dist.sample() for _ in range(4)])
    sf = float(1.0 / z.std())
    vae.register_to_config(scaling_factor=sf)
    check = reconstruction_check(vae)
    log(f"vae2: scaling_factor {sf:.4f} (latent mean {z.mean():.3f}); {check}")
    vae.save_pretrained(out / SD_DIR / "vae", safe_serialization=True)
    return {"seconds": time.perf_counter() - t0, "steps": steps, "scaling_factor": sf, **check}


def compose_tokenizer(folder: str | Path | None = None):
    from alignzoo.tinyworld.tokenizer import build_tokenizer

    if folder is None:
        with tempfile.TemporaryDirectory() as tmp:
            return build_tokenizer(tmp, words=pdata.caption_vocabulary())
    return build_tokenizer(folder, words=pdata.caption_vocabulary())


def encode_pretraining_set(vae, n: int, rng: np.random.Generator):
    """``n`` pretraining scenes rendered once and encoded: scaled latent means and stds, specs, scenes."""
    scenes, specs = pdata.pretraining_scenes(n, rng)
    means, stds = [], []
    sf = vae.config.scaling_factor
    with torch.no_grad():
        for i in range(0, n, 512):
            d = vae.encode(render_batch(scenes[i : i + 512], seed=i) * 2 - 1).latent_dist
            means.append(d.mean * sf)
            stds.append(d.std * sf)
    return torch.cat(means), torch.cat(stds), specs, scenes


def _phase(tokenizer, data, weights, steps: int, lr: float, cosine: bool, seed: int, batch: int):
    """One pretraining run: models built from ``seed`` (then given ``weights``, the previous
    run's EMA, if any), a fresh AdamW and EMA, the data's RNG from where encoding left it."""
    means, stds, specs, scenes, rng_state = data
    rng = np.random.default_rng(seed + 30)
    rng.bit_generator.state = rng_state
    torch.manual_seed(seed + 30)
    text_encoder = build_text_encoder(tokenizer)
    unet = build_unet(latent_channels=LATENT_CHANNELS)
    if weights is not None:
        unet.load_state_dict(weights[0].state_dict())
        text_encoder.load_state_dict(weights[1].state_dict())
    ac = alphas_cumprod()
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    schedule = warmup_cosine(0, steps, 0.1) if cosine else (lambda s: min(1.0, (s + 1) / 200))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    ema_unet, ema_te = EMA(unet, 0.999), EMA(text_encoder, 0.999)
    unet.train()
    text_encoder.train()
    t0 = time.perf_counter()
    for step in range(steps):
        idx = rng.integers(0, len(specs), size=batch)
        captions = pdata.caption_batch(specs, scenes, idx, rng)
        captions = ["" if u < 0.1 else c for u, c in zip(rng.random(batch), captions)]
        idx = torch.from_numpy(idx)
        z0 = means[idx] + stds[idx] * torch.randn_like(means[idx])
        loss = denoising_update(unet, text_encoder, z0, tokenize(tokenizer, captions), ac, opt, sched, step, (ema_unet, ema_te))
        if (step + 1) % log_every(steps) == 0:
            log(f"sd2 step {step + 1}/{steps} (lr {lr:g}, {'cosine' if cosine else 'constant'}) loss {loss.item():.4f} ({time.perf_counter() - t0:.0f}s)")
    return ema_unet.shadow, ema_te.shadow


def train_sd2(out: Path, seed: int = 0, scale: float = 1.0, batch: int = 128, n_scenes: int = 48000) -> dict:
    """The teacher: the runs of :data:`SD_PHASES` in turn, each starting from the EMA weights
    of the one before with a fresh optimiser, EMA and the same data stream (the recipe the
    committed weights were trained with, one continuation at a time)."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(out / SD_DIR / "vae").eval().requires_grad_(False)
    tokenizer = compose_tokenizer()
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed + 30)
    means, stds, specs, scenes = encode_pretraining_set(vae, max(batch, round(n_scenes * min(1.0, scale * 4))), rng)
    data = (means, stds, specs, scenes, rng.bit_generator.state)
    log(f"sd2: encoded {len(specs)} scenes in {time.perf_counter() - t0:.1f}s; latent std {means.std():.3f}")
    weights, phases = None, []
    for steps, lr, kind in SD_PHASES:
        steps = max(1, round(steps * scale))
        weights = _phase(tokenizer, data, weights, steps, lr, kind == "cosine", seed, batch)
        phases.append({"steps": steps, "lr": lr, "schedule": kind})
    folder = out / SD_DIR
    sd_pipeline(vae, weights[1], tokenizer, weights[0]).save_pretrained(folder, safe_serialization=True)
    write_alignzoo_json(
        folder,
        {
            "guidance_scale": 1.0,
            "pretraining_steps": sum(p["steps"] for p in phases),
            "phases": phases,
            "batch": batch,
            "scenes": len(specs),
            "note": "compositional tiny world's multi-step teacher (web-captioned pretraining, see compose/pretrain_data.py); "
            "DDIM trailing, sampled without guidance; each phase starts from the previous phase's EMA weights",
            "trained_by": "alignzoo tinyworld train --stage sd2",
        },
    )
    return {"seconds": time.perf_counter() - t0, "phases": phases}
