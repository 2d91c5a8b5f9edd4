"""Training the tiny world's models: reward CNNs, VAE, text-to-image model and its LCM.

Stages (run in this order by ``--stage all``; each reads what the earlier ones wrote):

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

Everything is seeded; the machine's two cores are the budget (see TRAINING.md for timings).
"""
from __future__ import annotations

import copy
import inspect
import json
import math
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from alignzoo.tinyworld.grammar import ATTRIBUTES, all_scenes, make_prompt, seen_prompts
from alignzoo.tinyworld.render import DEGRADATIONS, degrade, render

STAGES = ("rewards", "vae", "sd", "lcm")
# SD 1.x / SD-Turbo's training noise schedule
BETA_START, BETA_END, BETA_SCHEDULE, TRAIN_TIMESTEPS = 0.00085, 0.012, "scaled_linear", 1000
LCM_GUIDANCE_RANGE = (1.0, 3.0)
LCM_W_EMBED_DIM = 32
LCM_ORIGINAL_STEPS = 50
# 150 distillation steps, not more: the tiny LCM must leave reward headroom at the 2-step
# trajectories RL trains on, as real LCMs do at 1-2 steps. A 1000-step distillation scored 0.950
# on tiny_alignment at 2 steps (the reward's ceiling on perfect samples is ~0.965) and no RL
# algorithm could raise it; 150 steps score 0.938 at 2 steps and the same 0.958 at 4 (TRAINING.md).
LCM_STEPS = 150
TIMESTEP_SCALING, SIGMA_DATA = 10.0, 0.5


def default_out() -> Path:
    return Path(__file__).resolve().parent / "weights"


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _seed(seed: int) -> np.random.Generator:
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def render_scenes(scenes, rng: np.random.Generator) -> torch.Tensor:
    arr = np.stack([render(s, rng) for s in scenes])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(255.0)


def _random_scenes(rng: np.random.Generator, n: int):
    scenes = all_scenes()
    return [scenes[i] for i in rng.integers(0, len(scenes), size=n)]


def _lr_lambda(warmup: int, total: int, floor: float = 0.1) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        p = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p))

    return f


def _every(steps: int) -> int:
    return max(1, steps // 10)


# ---------------------------------------------------------------------------- rewards stage

ALIGN_HEADS = {k: len(v) for k, v in ATTRIBUTES.items()}


def _scene_labels(scenes) -> torch.Tensor:
    return torch.tensor([[s.labels()[k] for k in ALIGN_HEADS] for s in scenes])


def _augment_for_alignment(x: torch.Tensor, rng: np.random.Generator, gen: torch.Generator) -> torch.Tensor:
    """Mild blur / noise / fading so the classifier also reads VAE and diffusion outputs."""
    b = x.shape[0]
    kind = rng.integers(0, 5, size=b)  # 0, 1: clean
    for k, name, smax in ((2, "blur", 0.6), (3, "noise", 0.5), (4, "washed", 0.3)):
        sev = np.where(kind == k, rng.uniform(0, smax, size=b), 0.0)
        if sev.any():
            x = degrade(x, name, torch.tensor(sev, dtype=torch.float32), gen)
    return x


def _degrade_random(x: torch.Tensor, rng: np.random.Generator, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """25% clean (target 1); else one (75%) or two (25%) random degradations with severity
    U(0, 1); target = prod(1 - severity)."""
    b = x.shape[0]
    target = np.ones(b)
    sev = np.zeros((len(DEGRADATIONS), b))
    n_deg = np.where(rng.random(b) < 0.25, 0, np.where(rng.random(b) < 0.75, 1, 2))
    for i in range(b):
        for k in rng.choice(len(DEGRADATIONS), size=n_deg[i], replace=False):
            sev[k, i] = rng.uniform(0, 1)
            target[i] *= 1 - sev[k, i]
    for k, name in enumerate(DEGRADATIONS):
        if sev[k].any():
            x = degrade(x, name, torch.tensor(sev[k], dtype=torch.float32), gen)
    return x, torch.tensor(target, dtype=torch.float32)


def evaluate_alignment_net(net, seed: int = 12345, per_scene: int = 4, degrade_blur: float = 0.0) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    scenes = all_scenes() * per_scene
    x = render_scenes(scenes, rng)
    if degrade_blur:
        x = degrade(x, "blur", degrade_blur)
    labels = _scene_labels(scenes)
    with torch.no_grad():
        out = net(x)
    ok = torch.stack([out[k].argmax(-1) == labels[:, i] for i, k in enumerate(ALIGN_HEADS)], 1)
    res = {k: ok[:, i].float().mean().item() for i, k in enumerate(ALIGN_HEADS)}
    res["all"] = ok.all(1).float().mean().item()
    return res


def evaluate_aesthetic_net(net, seed: int = 12345, n: int = 512, smin: float = 0.3) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    x = render_scenes(_random_scenes(rng, n), rng)
    with torch.no_grad():
        clean = torch.sigmoid(net(x)["score"][:, 0])
        res = {"clean_mean": clean.mean().item()}
        wins = []
        for name in DEGRADATIONS:
            sev = torch.tensor(rng.uniform(smin, 1.0, size=n), dtype=torch.float32)
            d = torch.sigmoid(net(degrade(x, name, sev, gen))["score"][:, 0])
            res[f"pairs_{name}"] = (clean > d).float().mean().item()
            res[f"corr_{name}"] = float(np.corrcoef(d.numpy(), 1 - sev.numpy())[0, 1])
            wins.append(clean > d)
        res["pairs_all"] = torch.cat(wins).float().mean().item()
    return res


def train_rewards(out: Path, seed: int = 0, align_steps: int = 600, aes_steps: int = 1000, batch: int = 96) -> dict:
    from alignzoo.tinyworld.nets import TinyConvNet, save_net

    results = {}
    # --- tiny_alignment
    rng = _seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = TinyConvNet(ALIGN_HEADS, width=24)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(100, align_steps, 0.02))
    t0 = time.perf_counter()
    for step in range(align_steps):
        scenes = _random_scenes(rng, batch)
        x = _augment_for_alignment(render_scenes(scenes, rng), rng, gen)
        y = _scene_labels(scenes)
        logits = net(x)
        loss = sum(F.cross_entropy(logits[k], y[:, i], label_smoothing=0.05) for i, k in enumerate(ALIGN_HEADS))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % _every(align_steps) == 0:
            _log(f"tiny_alignment step {step + 1}/{align_steps} loss {loss.item():.4f}")
    net.eval()
    acc = evaluate_alignment_net(net)
    acc_blur = evaluate_alignment_net(net, degrade_blur=0.4)
    _log(f"tiny_alignment held-out accuracy {json.dumps({k: round(v, 4) for k, v in acc.items()})}; blurred {acc_blur['all']:.4f}")
    save_net(
        net,
        out / "rewards",
        "tiny_alignment",
        {
            "classes": {k: list(map(str, v)) for k, v in ATTRIBUTES.items()},
            "image_size": 32,
            "trained_by": "alignzoo tinyworld train --stage rewards",
            "heldout_accuracy": {k: round(v, 4) for k, v in acc.items()},
        },
    )
    results["tiny_alignment"] = {"seconds": time.perf_counter() - t0, **acc}

    # --- tiny_aesthetic
    rng = _seed(seed + 1)
    gen = torch.Generator().manual_seed(seed + 1)
    net = TinyConvNet({"score": 1}, width=16)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(100, aes_steps, 0.02))
    t0 = time.perf_counter()
    for step in range(aes_steps):
        x = render_scenes(_random_scenes(rng, batch), rng)
        x, target = _degrade_random(x, rng, gen)
        logit = net(x)["score"][:, 0]
        loss = F.binary_cross_entropy_with_logits(logit, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % _every(aes_steps) == 0:
            _log(f"tiny_aesthetic step {step + 1}/{aes_steps} loss {loss.item():.4f}")
    net.eval()
    ev = evaluate_aesthetic_net(net)
    _log(f"tiny_aesthetic held-out {json.dumps({k: round(v, 4) for k, v in ev.items()})}")
    save_net(
        net,
        out / "rewards",
        "tiny_aesthetic",
        {
            "degradations": list(DEGRADATIONS),
            "target": "prod(1 - severity); clean renders 1",
            "image_size": 32,
            "trained_by": "alignzoo tinyworld train --stage rewards",
            "heldout": {k: round(v, 4) for k, v in ev.items()},
        },
    )
    results["tiny_aesthetic"] = {"seconds": time.perf_counter() - t0, **ev}
    return results


# ---------------------------------------------------------------------------- vae stage


def build_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
    )


def _edges(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]


def _load_alignment(out: Path):
    from alignzoo.rewards.tiny import TinyAlignmentReward

    path = out / "rewards" / "tiny_alignment.safetensors"
    return TinyAlignmentReward(weights=path) if path.exists() else TinyAlignmentReward()


def vae_update(vae, x: torch.Tensor, opt, sched, kl_weight: float, pixel_l1: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """One VAE update on images ``x`` in [-1, 1]: MSE (or L1) + 0.5 x edge L1 + ``kl_weight`` x KL;
    returns (loss, MSE)."""
    post = vae.encode(x).latent_dist
    rec = vae.decode(post.sample()).sample
    (ex, ey), (rx, ry) = _edges(x), _edges(rec)
    mse = F.mse_loss(rec, x)
    pixel = (rec - x).abs().mean() if pixel_l1 else mse
    loss = pixel + 0.5 * ((rx - ex).abs().mean() + (ry - ey).abs().mean()) + kl_weight * post.kl().mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    return loss, mse


def train_vae(out: Path, seed: int = 0, steps: int = 1000, batch: int = 64, kl_weight: float = 1e-6) -> dict:
    from alignzoo.rewards.tiny import evaluate_attribute_accuracy

    rng = _seed(seed + 2)
    vae = build_vae()
    _log(f"vae: {sum(p.numel() for p in vae.parameters()) / 1e6:.3f}M parameters, latents 4x8x8")
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(100, steps, 0.05))
    t0 = time.perf_counter()
    vae.train()
    for step in range(steps):
        x = render_scenes(_random_scenes(rng, batch), rng) * 2 - 1
        loss, mse = vae_update(vae, x, opt, sched, kl_weight)
        if (step + 1) % _every(steps) == 0:
            _log(f"vae step {step + 1}/{steps} loss {loss.item():.4f} mse {mse.item():.5f}")
    vae.eval()
    # scaling factor: 1 / std of latent samples
    erng = np.random.default_rng(777)
    scenes = all_scenes() * 4
    x = render_scenes(scenes, erng)
    with torch.no_grad():
        z = torch.cat([vae.encode(x[i : i + 256] * 2 - 1).latent_dist.sample() for i in range(0, len(x), 256)])
        rec = torch.cat([vae.decode(z[i : i + 256]).sample for i in range(0, len(z), 256)])
    sf = float(1.0 / z.std())
    vae.register_to_config(scaling_factor=sf)
    rec01 = ((rec + 1) / 2).clamp(0, 1)
    acc = evaluate_attribute_accuracy(rec01, [make_prompt(s) for s in scenes], reward=_load_alignment(out))
    psnr = float(-10 * torch.log10(F.mse_loss(rec01, x)))
    _log(f"vae: scaling_factor {sf:.4f} (latent mean {z.mean():.3f}); reconstruction PSNR {psnr:.2f} dB; "
         f"tiny_alignment on reconstructions {json.dumps({k: round(v, 4) for k, v in acc.items()})}")
    vae.save_pretrained(out / "tiny-sd" / "vae", safe_serialization=True)
    return {"seconds": time.perf_counter() - t0, "scaling_factor": sf, "psnr": psnr, "recon_accuracy": acc}


# ---------------------------------------------------------------------------- sd stage


def build_text_encoder(tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        projection_dim=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(cfg)


def build_unet(time_cond_proj_dim: int | None = None, latent_channels: int = 4, block_out_channels: tuple = (32, 64)):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8,
        in_channels=latent_channels,
        out_channels=latent_channels,
        block_out_channels=tuple(block_out_channels),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        mid_block_type=None,
        cross_attention_dim=32,
        attention_head_dim=4,  # diffusers' name for the number of heads
        norm_num_groups=8,
        time_cond_proj_dim=time_cond_proj_dim,
    )


def ddim_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=TRAIN_TIMESTEPS,
        beta_start=BETA_START,
        beta_end=BETA_END,
        beta_schedule=BETA_SCHEDULE,
        prediction_type="epsilon",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        timestep_spacing="trailing",
    )


def lcm_scheduler():
    from diffusers import LCMScheduler

    return LCMScheduler(
        num_train_timesteps=TRAIN_TIMESTEPS,
        beta_start=BETA_START,
        beta_end=BETA_END,
        beta_schedule=BETA_SCHEDULE,
        prediction_type="epsilon",
        clip_sample=False,
        set_alpha_to_one=True,
        steps_offset=1,
        original_inference_steps=LCM_ORIGINAL_STEPS,
        timestep_scaling=TIMESTEP_SCALING,
    )


def _alphas_cumprod() -> torch.Tensor:
    from diffusers import DDPMScheduler

    s = DDPMScheduler(num_train_timesteps=TRAIN_TIMESTEPS, beta_start=BETA_START, beta_end=BETA_END, beta_schedule=BETA_SCHEDULE)
    return s.alphas_cumprod.float()


def _encode_dataset(vae, rng: np.random.Generator, per_scene: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
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


class _EMA:
    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = copy.deepcopy(module).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, module: torch.nn.Module, decay: float | None = None) -> None:
        d = self.decay if decay is None else decay
        for s, p in zip(self.shadow.parameters(), module.parameters()):
            s.lerp_(p.detach(), 1 - d)


def _tokenize(tokenizer, prompts: list[str]) -> torch.Tensor:
    return tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids


def write_alignzoo_json(folder: Path, data: dict) -> None:
    (folder / "alignzoo.json").write_text(json.dumps(data, indent=2) + "\n")


def _save_tokenizer_sources(folder: Path) -> None:
    from alignzoo.tinyworld.tokenizer import write_tokenizer_files

    write_tokenizer_files(folder / "tokenizer")


def denoising_update(unet, text_encoder, z0: torch.Tensor, tokens: torch.Tensor, ac: torch.Tensor, opt, sched,
                     step: int, emas: tuple) -> torch.Tensor:
    """One joint UNet + text-encoder update of the epsilon loss (min-SNR-5 weights, grad-norm
    clip 1) at uniform timesteps, then the EMAs (decay warmed up as (1 + step) / (10 + step))."""
    t = torch.randint(0, TRAIN_TIMESTEPS, (len(z0),))
    noise = torch.randn_like(z0)
    a = ac[t].view(-1, 1, 1, 1)
    zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
    pred = unet(zt, t, text_encoder(tokens).last_hidden_state).sample
    snr = a / (1 - a)
    loss = ((snr.clamp(max=5.0) / snr) * (pred - noise) ** 2).mean()  # min-SNR-5 for epsilon prediction
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for group in opt.param_groups for p in group["params"]], 1.0)
    opt.step()
    sched.step()
    warm = min(0.999, (1 + step) / (10 + step))
    emas[0].update(unet, warm)
    emas[1].update(text_encoder, warm)
    return loss


def train_sd(out: Path, seed: int = 0, steps: int = 2000, batch: int = 128, lr: float = 1e-3, per_scene: int = 96) -> dict:
    import tempfile

    from diffusers import AutoencoderKL, StableDiffusionPipeline

    from alignzoo.tinyworld.tokenizer import build_tokenizer

    rng = _seed(seed + 3)
    vae = AutoencoderKL.from_pretrained(out / "tiny-sd" / "vae").eval().requires_grad_(False)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_tokenizer(tmp)
    text_encoder = build_text_encoder(tokenizer)
    unet = build_unet()
    _log(f"sd: unet {sum(p.numel() for p in unet.parameters()) / 1e6:.3f}M, text encoder "
         f"{sum(p.numel() for p in text_encoder.parameters()) / 1e6:.3f}M parameters")
    t0 = time.perf_counter()
    means, stds, prompts = _encode_dataset(vae, rng, per_scene)
    _log(f"sd: encoded {len(prompts)} renders in {time.perf_counter() - t0:.1f}s; latent std {means.std():.3f}")
    ids = _tokenize(tokenizer, prompts)
    empty = _tokenize(tokenizer, [""])[0]
    ac = _alphas_cumprod()
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(200, steps, 0.1))
    ema_unet, ema_te = _EMA(unet, 0.999), _EMA(text_encoder, 0.999)
    unet.train()
    text_encoder.train()
    n = len(prompts)
    for step in range(steps):
        idx = torch.from_numpy(rng.integers(0, n, size=batch))
        z0 = means[idx] + stds[idx] * torch.randn_like(means[idx])
        tok = ids[idx].clone()
        drop = torch.from_numpy(rng.random(batch) < 0.1)
        tok[drop] = empty
        loss = denoising_update(unet, text_encoder, z0, tok, ac, opt, sched, step, (ema_unet, ema_te))
        if (step + 1) % _every(steps) == 0:
            _log(f"sd step {step + 1}/{steps} loss {loss.item():.4f} ({time.perf_counter() - t0:.0f}s)")
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=ema_te.shadow,
        tokenizer=tokenizer,
        unet=ema_unet.shadow,
        scheduler=ddim_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    folder = out / "tiny-sd"
    pipe.save_pretrained(folder, safe_serialization=True)
    _save_tokenizer_sources(folder)
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


# ---------------------------------------------------------------------------- lcm stage


def guidance_embedding(w: torch.Tensor, dim: int = LCM_W_EMBED_DIM) -> torch.Tensor:
    """Sinusoidal embedding of w * 1000 (the LCM pipeline embeds guidance_scale - 1 this way)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) / (half - 1) * torch.arange(half, dtype=torch.float32))
    arg = (w.float() * 1000.0)[:, None] * freqs[None]
    return torch.cat([arg.sin(), arg.cos()], 1)


def boundary_scalings(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """LCM's c_skip, c_out (consistency boundary condition f(x, 0) = x), as LCMScheduler uses."""
    st = t.float() * TIMESTEP_SCALING
    c_skip = SIGMA_DATA**2 / (st**2 + SIGMA_DATA**2)
    c_out = st / (st**2 + SIGMA_DATA**2).sqrt()
    return c_skip.view(-1, 1, 1, 1), c_out.view(-1, 1, 1, 1)


def lcm_distill(teacher, text_encoder, uncond: torch.Tensor, batch_fn: Callable, steps: int, batch: int = 64,
                lr: float = 2e-4, ema: float = 0.95, latent_channels: int = 4, tag: str = "lcm"):
    """Latent consistency distillation (LCM paper, Alg. 1) of ``teacher``; returns the EMA
    (target) network. ``batch_fn(batch)`` gives (z0 scaled latents, token ids) of real data."""
    student = build_unet(time_cond_proj_dim=LCM_W_EMBED_DIM, latent_channels=latent_channels)
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    assert not unexpected and all("cond_proj" in k for k in missing), (missing, unexpected)
    torch.nn.init.zeros_(student.time_embedding.cond_proj.weight)  # starts as the teacher
    target = _EMA(student, ema)
    ac = _alphas_cumprod()
    k = TRAIN_TIMESTEPS // LCM_ORIGINAL_STEPS  # skip 20
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(100, steps, 0.1))
    huber_c = 1e-3
    student.train()
    t0 = time.perf_counter()

    def x0_from_eps(x, eps, a):
        return (x - (1 - a).sqrt() * eps) / a.sqrt()

    for step in range(steps):
        z0, ids = batch_fn(batch)
        with torch.no_grad():
            cond = text_encoder(ids).last_hidden_state
        j = torch.randint(0, LCM_ORIGINAL_STEPS, (batch,))
        t = (j + 1) * k - 1  # 19, 39, ..., 999: the LCMScheduler's 50-step grid
        s = (t - k).clamp(min=0)
        g = torch.empty(batch).uniform_(*LCM_GUIDANCE_RANGE)
        wemb = guidance_embedding(g - 1)
        noise = torch.randn_like(z0)
        a_t, a_s = ac[t].view(-1, 1, 1, 1), ac[s].view(-1, 1, 1, 1)
        zt = a_t.sqrt() * z0 + (1 - a_t).sqrt() * noise
        # online consistency function f_theta(z_t, w, c, t)
        cs_t, co_t = boundary_scalings(t)
        eps = student(zt, t, cond, timestep_cond=wemb).sample
        f_online = cs_t * zt + co_t * x0_from_eps(zt, eps, a_t)
        with torch.no_grad():
            # teacher DDIM step t -> s with classifier-free guidance g
            e = teacher(torch.cat([zt, zt]), torch.cat([t, t]), torch.cat([cond, uncond.expand(batch, -1, -1)])).sample
            e_c, e_u = e.chunk(2)
            e_g = e_u + g.view(-1, 1, 1, 1) * (e_c - e_u)
            x0_g = x0_from_eps(zt, e_g, a_t)
            zs = a_s.sqrt() * x0_g + (1 - a_s).sqrt() * e_g
            # target f_theta^-(z_s, w, c, s) from the EMA network
            cs_s, co_s = boundary_scalings(s)
            eps_s = target.shadow(zs, s, cond, timestep_cond=wemb).sample
            f_target = cs_s * zs + co_s * x0_from_eps(zs, eps_s, a_s)
        d = (f_online.float() - f_target.float()) ** 2
        loss = (torch.sqrt(d.flatten(1).mean(1) + huber_c**2) - huber_c).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        sched.step()
        target.update(student)
        if (step + 1) % _every(steps) == 0:
            _log(f"{tag} step {step + 1}/{steps} loss {loss.item():.5f} ({time.perf_counter() - t0:.0f}s)")
    return target.shadow


def train_lcm(out: Path, seed: int = 0, steps: int = LCM_STEPS, batch: int = 64, lr: float = 2e-4, ema: float = 0.95, per_scene: int = 48) -> dict:
    from diffusers import LatentConsistencyModelPipeline, StableDiffusionPipeline

    rng = _seed(seed + 4)
    teacher_pipe = StableDiffusionPipeline.from_pretrained(out / "tiny-sd", safety_checker=None, requires_safety_checker=False)
    teacher = teacher_pipe.unet.eval().requires_grad_(False)
    text_encoder = teacher_pipe.text_encoder.eval().requires_grad_(False)
    tokenizer, vae = teacher_pipe.tokenizer, teacher_pipe.vae.eval()
    t0 = time.perf_counter()
    means, stds, prompts = _encode_dataset(vae, rng, per_scene)
    ids = _tokenize(tokenizer, prompts)
    with torch.no_grad():
        uncond = text_encoder(_tokenize(tokenizer, [""])).last_hidden_state

    def batch_fn(b: int):
        idx = torch.from_numpy(rng.integers(0, len(prompts), size=b))
        return means[idx] + stds[idx] * torch.randn_like(means[idx]), ids[idx]

    target_unet = lcm_distill(teacher, text_encoder, uncond, batch_fn, steps, batch, lr, ema)
    pipe = LatentConsistencyModelPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=target_unet,  # the EMA (target) network, as in LCM
        scheduler=lcm_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    folder = out / "tiny-lcm"
    pipe.save_pretrained(folder, safe_serialization=True)
    _save_tokenizer_sources(folder)
    seconds = time.perf_counter() - t0
    best_g, sweep = choose_lcm_guidance(folder, seed=seed)
    quality = quality_check(out / "tiny-sd", folder, seed=seed, lcm_guidance=best_g)
    write_alignzoo_json(
        folder,
        {
            "guidance_scale": best_g,
            "num_inference_steps": 4,
            "guidance_range_trained": list(LCM_GUIDANCE_RANGE),
            "note": "guidance_scale g is fed as the w-embedding of g - 1 (LatentConsistencyModelPipeline); "
            "chosen by colour+shape accuracy over all prompts at 4 steps",
            "guidance_sweep": sweep,
            "trained_by": "alignzoo tinyworld train --stage lcm",
            "quality_seen_prompts": quality.get("lcm"),
        },
    )
    return {"seconds": seconds, "guidance_scale": best_g, "sweep": sweep, "quality": quality}


# ---------------------------------------------------------------------------- evaluation


def _sample(pipe, prompts: list[str], steps: int, guidance: float, seed: int, batch: int = 270) -> torch.Tensor:
    out = []
    gen = torch.Generator().manual_seed(seed)
    for i in range(0, len(prompts), batch):
        kw = {"eta": 0.0} if "eta" in inspect.signature(pipe.__call__).parameters else {}
        res = pipe(prompts[i : i + batch], num_inference_steps=steps, guidance_scale=guidance, generator=gen,
                   output_type="pt", height=32, width=32, **kw)
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
        acc = evaluate_attribute_accuracy(imgs, prompts, reward=_load_alignment(lcm_dir.parent))
        sweep[str(g)] = {k: round(v, 4) for k, v in acc.items() if k != "n"}
        _log(f"lcm guidance {g}: {json.dumps(sweep[str(g)])}")
    best = max(grid, key=lambda g: (sweep[str(g)]["colour_and_shape"], sweep[str(g)]["all"], sweep[str(g)]["score"]))
    return float(best), sweep


def quality_check(sd_dir, lcm_dir=None, seed: int = 0, per_prompt: int = 4, lcm_guidance: float | None = None) -> dict:
    """Samples the seen prompts with diffusers' own pipelines and judges them with tiny_alignment.

    tiny-sd: DDIM (trailing, eta 0) at 16 and 1 steps, guidance 1.0; tiny-lcm: 4 steps at its
    recorded guidance. Returns accuracies per model and step count.
    """
    from alignzoo.rewards.tiny import evaluate_attribute_accuracy

    sd, lcm = _load_pipes(sd_dir, lcm_dir)
    reward = _load_alignment(Path(sd_dir).parent if sd_dir else Path(lcm_dir).parent)
    prompts = seen_prompts() * per_prompt
    res: dict = {}
    if sd is not None:
        res["sd"] = {}
        for steps in (16, 1):
            acc = evaluate_attribute_accuracy(_sample(sd, prompts, steps, 1.0, seed + 7), prompts, reward=reward)
            res["sd"][f"{steps}_steps"] = {k: round(v, 4) for k, v in acc.items()}
            _log(f"quality tiny-sd {steps} steps (guidance 1.0): {json.dumps(res['sd'][f'{steps}_steps'])}")
    if lcm is not None:
        if lcm_guidance is None:
            lcm_guidance = json.loads((Path(lcm_dir) / "alignzoo.json").read_text())["guidance_scale"]
        res["lcm"] = {"guidance_scale": lcm_guidance}
        for steps in (4, 1):
            acc = evaluate_attribute_accuracy(_sample(lcm, prompts, steps, lcm_guidance, seed + 7), prompts, reward=reward)
            res["lcm"][f"{steps}_steps"] = {k: round(v, 4) for k, v in acc.items()}
            _log(f"quality tiny-lcm {steps} steps (guidance {lcm_guidance}): {json.dumps(res['lcm'][f'{steps}_steps'])}")
    return res


def quiet() -> None:
    """No per-file loading bars or notices from diffusers/transformers in the training log."""
    import diffusers
    import transformers

    diffusers.logging.set_verbosity_error()
    transformers.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def train(stage: str = "all", out: str | os.PathLike | None = None, seed: int = 0, threads: int = 2, scale: float = 1.0) -> dict:
    """Runs one stage or all of them; ``scale`` multiplies every step count (for quick trials)."""
    torch.set_num_threads(threads)
    quiet()
    out = Path(out) if out is not None else default_out()
    out.mkdir(parents=True, exist_ok=True)
    stages = STAGES if stage == "all" else (stage,)
    if any(s not in STAGES for s in stages):
        raise ValueError(f"unknown stage {stage!r}; known: {', '.join(STAGES)}, all")

    def n(steps: int) -> int:
        return max(1, int(round(steps * scale)))

    results = {}
    for s in stages:
        t0 = time.perf_counter()
        _log(f"=== stage {s} -> {out}")
        if s == "rewards":
            results[s] = train_rewards(out, seed, align_steps=n(600), aes_steps=n(1000))
        elif s == "vae":
            results[s] = train_vae(out, seed, steps=n(1000))
        elif s == "sd":
            results[s] = train_sd(out, seed, steps=n(2000))
        elif s == "lcm":
            results[s] = train_lcm(out, seed, steps=n(LCM_STEPS))
        results[s]["wall_seconds"] = time.perf_counter() - t0
        _log(f"=== stage {s} done in {results[s]['wall_seconds']:.1f}s")
    return results
