"""``--stage sd``: tiny-sd, a ``UNet2DConditionModel`` and ``CLIPTextModel`` trained jointly on
the first world's VAE latents: epsilon prediction on SD's scaled-linear betas, 10% prompt
dropout, min-SNR-5 weights, EMA 0.999. Saved as a ``StableDiffusionPipeline`` with a trailing
DDIM scheduler, sampled without guidance like SD-Turbo. -> ``weights/tiny-sd/``
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from alignzoo.tinyworld.grammar import all_scenes, make_prompt
from alignzoo.tinyworld.training.common import (
    EMA,
    log,
    log_every,
    optimizer_step,
    render_scenes,
    save_tokenizer_sources,
    seed_all,
    tokenize,
    warmup_cosine,
    write_alignzoo_json,
)
from alignzoo.tinyworld.training.components import TRAIN_TIMESTEPS, alphas_cumprod, build_text_encoder, build_unet, sd_pipeline
from alignzoo.tinyworld.training.quality import quality_check


def encode_dataset(vae, rng: np.random.Generator, per_scene: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Renders every scene ``per_scene`` times; returns scaled latent means, stds, prompts."""
    scenes = all_scenes() * per_scene
    order = rng.permutation(len(scenes))
    scenes = [scenes[i] for i in order]
    means, stds = [], []
    sf = vae.config.scaling_factor
    with torch.no_grad():
        for i in range(0, len(scenes), 512):
            x = render_scenes(scenes[i : i + 512], rng) * 2 - 1
            d = vae.encode(x).latent_dist
            means.append(d.mean * sf)
            stds.append(d.std * sf)
    return torch.cat(means), torch.cat(stds), [make_prompt(s) for s in scenes]


def denoising_update(unet, text_encoder, z0: torch.Tensor, tokens: torch.Tensor, ac: torch.Tensor, opt, sched, step: int, emas: tuple) -> torch.Tensor:
    """One joint UNet + text-encoder update of the epsilon loss (min-SNR-5 weights, grad-norm
    clip 1) at uniform timesteps, then the EMAs (decay warmed up as (1 + step) / (10 + step))."""
    t = torch.randint(0, TRAIN_TIMESTEPS, (len(z0),))
    noise = torch.randn_like(z0)
    a = ac[t].view(-1, 1, 1, 1)
    zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
    pred = unet(zt, t, text_encoder(tokens).last_hidden_state).sample
    snr = a / (1 - a)
    loss = ((snr.clamp(max=5.0) / snr) * (pred - noise) ** 2).mean()  # min-SNR-5 for epsilon prediction
    optimizer_step(loss, opt, sched, max_grad_norm=1.0)
    warm = min(0.999, (1 + step) / (10 + step))
    emas[0].update(unet, warm)
    emas[1].update(text_encoder, warm)
    return loss


def _fresh_models(out: Path):
    """The trained VAE (frozen), the grammar's tokenizer, and a new text encoder and UNet."""
    from diffusers import AutoencoderKL

    from alignzoo.tinyworld.tokenizer import build_tokenizer

    vae = AutoencoderKL.from_pretrained(out / "tiny-sd" / "vae").eval().requires_grad_(False)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_tokenizer(tmp)
    text_encoder = build_text_encoder(tokenizer)
    unet = build_unet()
    log(
        f"sd: unet {sum(p.numel() for p in unet.parameters()) / 1e6:.3f}M, text encoder "
        f"{sum(p.numel() for p in text_encoder.parameters()) / 1e6:.3f}M parameters"
    )
    return vae, tokenizer, text_encoder, unet


def _train_denoiser(unet, text_encoder, means, stds, ids, empty_ids, rng: np.random.Generator, steps: int, batch: int, lr: float) -> tuple[EMA, EMA]:
    """AdamW (200 warmup steps, cosine to 0.1x) on latents drawn around the encoded means, one
    prompt in ten replaced by the empty one; returns the EMAs of the UNet and the text encoder."""
    ac = alphas_cumprod()
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(200, steps, 0.1))
    ema_unet, ema_te = EMA(unet, 0.999), EMA(text_encoder, 0.999)
    unet.train()
    text_encoder.train()
    t0 = time.perf_counter()
    for step in range(steps):
        idx = torch.from_numpy(rng.integers(0, len(ids), size=batch))
        z0 = means[idx] + stds[idx] * torch.randn_like(means[idx])
        tok = ids[idx].clone()
        drop = torch.from_numpy(rng.random(batch) < 0.1)
        tok[drop] = empty_ids
        loss = denoising_update(unet, text_encoder, z0, tok, ac, opt, sched, step, (ema_unet, ema_te))
        if (step + 1) % log_every(steps) == 0:
            log(f"sd step {step + 1}/{steps} loss {loss.item():.4f} ({time.perf_counter() - t0:.0f}s)")
    return ema_unet, ema_te


def train_sd(out: Path, seed: int = 0, steps: int = 2000, batch: int = 128, lr: float = 1e-3, per_scene: int = 96) -> dict:
    rng = seed_all(seed + 3)
    vae, tokenizer, text_encoder, unet = _fresh_models(out)
    t0 = time.perf_counter()
    means, stds, prompts = encode_dataset(vae, rng, per_scene)
    log(f"sd: encoded {len(prompts)} renders in {time.perf_counter() - t0:.1f}s; latent std {means.std():.3f}")
    ids = tokenize(tokenizer, prompts)
    empty_ids = tokenize(tokenizer, [""])[0]
    ema_unet, ema_te = _train_denoiser(unet, text_encoder, means, stds, ids, empty_ids, rng, steps, batch, lr)
    folder = out / "tiny-sd"
    sd_pipeline(vae, ema_te.shadow, tokenizer, ema_unet.shadow).save_pretrained(folder, safe_serialization=True)
    save_tokenizer_sources(folder)
    seconds = time.perf_counter() - t0
    quality = quality_check(folder, None, seed=seed)
    write_alignzoo_json(
        folder,
        {
            "guidance_scale": 1.0,
            "note": "tiny world text-to-image model; sample without guidance like SD-Turbo",
            "trained_by": "alignzoo tinyworld train --stage sd",
            "quality_seen_prompts": quality["sd"],
        },
    )
    return {"seconds": seconds, "quality": quality}
