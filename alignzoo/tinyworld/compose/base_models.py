"""The compositional tiny world's VAE and multi-step teacher (``--stage vae2`` and ``sd2``).

vae2  ``AutoencoderKL`` 32x32x3 <-> 8x8x8 (two downsamples, 8 latent channels: 4 channels lost
      the hue of small shapes on these renders), trained on pretraining scenes and prompt-free
      scenes; MSE + edge L1 + a tiny KL; ``scaling_factor`` = 1 / latent std.
      -> weights/compose-sd/vae/
sd2   ``UNet2DConditionModel`` (8 latent channels, the tiny-sd layout) + ``CLIPTextModel``
      trained jointly on web-captioned scenes (:mod:`pretrain_data`): epsilon prediction, SD's
      scaled-linear betas, 10% caption dropout, min-SNR-5 weights, constant lr after warm-up,
      EMA 0.999. Saved as a ``StableDiffusionPipeline`` with a trailing DDIM scheduler.
      -> weights/compose-sd/
      ``ALIGNZOO_SD2_SNAPSHOTS="800,1200"`` also saves the EMA pipeline at those steps under
      ``<out>/compose-sd-snapshots/<step>`` (not committed), so the pretraining length can be
      chosen against the bands of issue 13 without retraining.
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
from alignzoo.tinyworld.train import (
    _alphas_cumprod, _EMA, _every, _log, _lr_lambda, _tokenize, build_text_encoder, build_unet, ddim_scheduler,
    denoising_update, vae_update, write_alignzoo_json,
)

LATENT_CHANNELS = 8
SD_DIR, TURBO_DIR, LCM_DIR = "compose-sd", "compose-turbo", "compose-lcm"
VAE_STEPS, SD_STEPS = 2400, 1600
VAE_PIXEL_LOSS = "mse"  # or "l1" (ALIGNZOO_VAE2_PIXEL)


def build_vae2():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 64), layers_per_block=1, latent_channels=LATENT_CHANNELS,
        norm_num_groups=8, sample_size=32,
    )


def _vae_batch(rng: np.random.Generator, n: int) -> torch.Tensor:
    """70% pretraining scenes (what the teacher learns), 30% prompt-free scenes (0-4 objects)."""
    k = int(round(n * 0.7))
    scenes, _ = pdata.pretraining_scenes(k, rng)
    scenes += [random_scene(rng) for _ in range(n - k)]
    return render_batch(scenes, seed=int(rng.integers(1 << 31)))


def reconstruction_check(vae, seed: int = 777, per_prompt: int = 2) -> dict:
    """PSNR and tiny_geneval's strict score (overall, per category) of reconstructions against
    the clean renders they came from (every prompt x ``per_prompt``)."""
    from alignzoo.tinyworld.compose.evaluate import category_table, render_prompts

    x, prompts = render_prompts(per_prompt, seed)
    with torch.no_grad():
        z = torch.cat([vae.encode(x[i:i + 256] * 2 - 1).latent_dist.mean for i in range(0, len(x), 256)])
        rec = torch.cat([vae.decode(z[i:i + 256]).sample for i in range(0, len(z), 256)])
    rec01 = ((rec + 1) / 2).clamp(0, 1)
    psnr = float(-10 * torch.log10(F.mse_loss(rec01, x)))
    clean = category_table(x, prompts, ["tiny_geneval"])["tiny_geneval"]
    recon = category_table(rec01, prompts, ["tiny_geneval"])["tiny_geneval"]
    return {"psnr": round(psnr, 2), "strict_clean": {c: v["strict"] for c, v in clean.items()},
            "strict_reconstructed": {c: v["strict"] for c, v in recon.items()}}


def train_vae2(out: Path, seed: int = 0, scale: float = 1.0, batch: int = 64, kl_weight: float = 1e-6) -> dict:
    steps = max(1, round(VAE_STEPS * scale))
    pixel_l1 = os.environ.get("ALIGNZOO_VAE2_PIXEL", VAE_PIXEL_LOSS) == "l1"
    rng = np.random.default_rng(seed + 20)
    torch.manual_seed(seed + 20)
    vae = build_vae2()
    _log(f"vae2: {sum(p.numel() for p in vae.parameters()) / 1e6:.3f}M parameters, latents {LATENT_CHANNELS}x8x8")
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(50, steps, 0.2))
    t0 = time.perf_counter()
    vae.train()
    for step in range(steps):
        x = _vae_batch(rng, batch) * 2 - 1
        loss, mse = vae_update(vae, x, opt, sched, kl_weight, pixel_l1)
        if (step + 1) % _every(steps) == 0:
            _log(f"vae2 step {step + 1}/{steps} loss {loss.item():.4f} mse {mse.item():.5f} ({time.perf_counter() - t0:.0f}s)")
    vae.eval()
    with torch.no_grad():
        z = torch.cat([vae.encode(_vae_batch(np.random.default_rng(778), 256) * 2 - 1).latent_dist.sample() for _ in range(4)])
    sf = float(1.0 / z.std())
    vae.register_to_config(scaling_factor=sf)
    check = reconstruction_check(vae)
    _log(f"vae2: scaling_factor {sf:.4f} (latent mean {z.mean():.3f}); {check}")
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
            d = vae.encode(render_batch(scenes[i:i + 512], seed=i) * 2 - 1).latent_dist
            means.append(d.mean * sf)
            stds.append(d.std * sf)
    return torch.cat(means), torch.cat(stds), specs, scenes


def _pipeline(vae, text_encoder, tokenizer, unet):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=ddim_scheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def _snapshot_steps() -> set[int]:
    raw = os.environ.get("ALIGNZOO_SD2_SNAPSHOTS", "")
    return {int(s) for s in raw.split(",") if s.strip()}


def train_sd2(out: Path, seed: int = 0, scale: float = 1.0, batch: int = 128, lr: float = 1e-3, n_scenes: int = 48000) -> dict:
    from diffusers import AutoencoderKL

    steps = max(1, round(SD_STEPS * scale))
    lr = float(os.environ.get("ALIGNZOO_SD2_LR", lr))
    rng = np.random.default_rng(seed + 30)
    torch.manual_seed(seed + 30)
    vae = AutoencoderKL.from_pretrained(out / SD_DIR / "vae").eval().requires_grad_(False)
    tokenizer = compose_tokenizer()
    text_encoder = build_text_encoder(tokenizer)
    # experiment knobs (recorded in alignzoo.json): UNet widths, cosine decay from the start
    channels = tuple(int(c) for c in os.environ.get("ALIGNZOO_SD2_CHANNELS", "32,64").split(","))
    cosine = os.environ.get("ALIGNZOO_SD2_COSINE", "") == "1"
    unet = build_unet(latent_channels=LATENT_CHANNELS, block_out_channels=channels)
    init = os.environ.get("ALIGNZOO_SD2_INIT")  # continue from a saved pipeline (cosine lr decay to 0.1x)
    if init:
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModel

        unet = UNet2DConditionModel.from_pretrained(Path(init) / "unet")
        text_encoder = CLIPTextModel.from_pretrained(Path(init) / "text_encoder")
        _log(f"sd2: continuing from {init}")
    _log(f"sd2: unet {sum(p.numel() for p in unet.parameters()) / 1e6:.3f}M, text encoder "
         f"{sum(p.numel() for p in text_encoder.parameters()) / 1e6:.3f}M parameters")
    t0 = time.perf_counter()
    means, stds, specs, scenes = encode_pretraining_set(vae, max(batch, round(n_scenes * min(1.0, scale * 4))), rng)
    _log(f"sd2: encoded {len(specs)} scenes in {time.perf_counter() - t0:.1f}s; latent std {means.std():.3f}")
    ac = _alphas_cumprod()
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    if init or cosine:
        schedule = _lr_lambda(0 if init else 200, steps, 0.1)
    else:
        schedule = lambda s: min(1.0, (s + 1) / 200)  # noqa: E731
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    ema_unet, ema_te = _EMA(unet, 0.999), _EMA(text_encoder, 0.999)
    unet.train()
    text_encoder.train()
    snapshots = _snapshot_steps()
    for step in range(steps):
        idx = rng.integers(0, len(specs), size=batch)
        captions = pdata.caption_batch(specs, scenes, idx, rng)
        captions = ["" if u < 0.1 else c for u, c in zip(rng.random(batch), captions)]
        idx = torch.from_numpy(idx)
        z0 = means[idx] + stds[idx] * torch.randn_like(means[idx])
        loss = denoising_update(unet, text_encoder, z0, _tokenize(tokenizer, captions), ac, opt, sched, step, (ema_unet, ema_te))
        if (step + 1) % _every(steps) == 0:
            _log(f"sd2 step {step + 1}/{steps} loss {loss.item():.4f} ({time.perf_counter() - t0:.0f}s)")
        if step + 1 in snapshots and step + 1 < steps:
            _pipeline(vae, ema_te.shadow, tokenizer, ema_unet.shadow).save_pretrained(
                out / "compose-sd-snapshots" / str(step + 1), safe_serialization=True)
            _log(f"sd2: snapshot at step {step + 1}")
    folder = out / SD_DIR
    _pipeline(vae, ema_te.shadow, tokenizer, ema_unet.shadow).save_pretrained(folder, safe_serialization=True)
    seconds = time.perf_counter() - t0
    write_alignzoo_json(folder, {
        "guidance_scale": 1.0, "pretraining_steps": steps, "batch": batch, "scenes": len(specs),
        "continued_from": init or None, "lr": lr, "unet_channels": list(channels), "lr_schedule": "cosine to 0.1x" if (init or cosine) else "constant after 200 warm-up steps",
        "note": "compositional tiny world's multi-step teacher (web-captioned pretraining, see compose/pretrain_data.py); "
                "DDIM trailing, sampled without guidance",
        "trained_by": "alignzoo tinyworld train --stage sd2",
    })
    return {"seconds": seconds, "steps": steps}
