"""Few-step students of the compositional teacher (``--stage turbo`` and ``lcm2``).

turbo  ``tiny-turbo``, the SD-Turbo analogue: same eps-prediction UNet layout, DDIM trailing
       sampling at 1-4 steps, no guidance. Distilled by *reflow onto straight DDIM lines*
       (Liu et al. 2023, InstaFlow's reflow step, written for DDIM's eps parametrisation):

       1. couplings: x_T ~ N(0, I) and the teacher's 8-step DDIM sample z0 = Teacher(x_T, c);
       2. the DDIM line through them keeps eps fixed at
              eps* = (x_T - sqrt(abar_T) z0) / sqrt(1 - abar_T),          T = 999 (trailing),
          and passes x_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps* at every t, so one DDIM
          step from any t on it lands on z0 exactly when eps_theta(x_t, t, c) = eps*;
       3. the student (initialised as the teacher) regresses x0_theta = (x_t - sqrt(1 - abar_t)
          eps_theta) / sqrt(abar_t) onto z0 (the loss in image-latent space, so the 1-step
          timestep is not drowned by the 1/sqrt(abar_T) ~ 15x scale of its eps error), half the
          batch at T (the 1-step map) and half at the timesteps of 1-, 2-, 3- and 4-step
          trailing schedules.
       -> weights/compose-turbo/
lcm2   latent consistency distillation of the teacher (the shared ``lcm_distill`` loop of the
       first world: 50-step DDIM solver, w ~ U[1, 3], EMA target) on web-captioned pretraining
       latents.                                                      -> weights/compose-lcm/
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from alignzoo.tinyworld.compose import grammar as g
from alignzoo.tinyworld.compose import pretrain_data as pdata
from alignzoo.tinyworld.training.common import EMA, log, log_every, optimizer_step, tokenize, write_alignzoo_json
from alignzoo.tinyworld.training.components import alphas_cumprod, ddim_scheduler, lcm_pipeline, sd_pipeline
from alignzoo.tinyworld.training.compose.base_models import LATENT_CHANNELS, LCM_DIR, SD_DIR, TURBO_DIR, encode_pretraining_set
from alignzoo.tinyworld.training.lcm import LCM_GUIDANCE_RANGE, lcm_distill

TURBO_STEPS, TURBO_COUPLINGS, TEACHER_STEPS = 2000, 8192, 8
ONE_STEP_SHARE = 0.5
LCM2_STEPS = 200


def _teacher(out: Path):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(out / SD_DIR, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    for m in (pipe.unet, pipe.text_encoder, pipe.vae):
        m.eval().requires_grad_(False)
    return pipe


def trailing_timesteps(max_steps: int = 4) -> torch.Tensor:
    """The union of the DDIM trailing schedules with 1..max_steps steps (999, 499, 666, 332, ...)."""
    s = ddim_scheduler()
    ts = set()
    for n in range(1, max_steps + 1):
        s.set_timesteps(n)
        ts |= {int(t) for t in s.timesteps}
    return torch.tensor(sorted(ts))


def reflow_point(xT: torch.Tensor, z0: torch.Tensor, a_t: torch.Tensor, a_T: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, eps*): the point at noise level ``a_t`` (= abar_t) of the DDIM line from ``xT`` (at
    abar_T) to ``z0``, and the line's constant eps (step 2 of the module's docstring)."""
    eps_star = (xT - a_T.sqrt() * z0) / (1 - a_T).sqrt()
    return a_t.sqrt() * z0 + (1 - a_t).sqrt() * eps_star, eps_star


@torch.no_grad()
def teacher_couplings(pipe, n: int, rng: np.random.Generator, steps: int = TEACHER_STEPS, batch: int = 256):
    """(x_T, z0, token ids): ``n`` noises, the teacher's deterministic DDIM samples of them (scaled
    latents), for prompts drawn uniformly over categories, then over the category's prompts."""
    prompts = [str(rng.choice([s.text for s in g.all_specs(str(c))])) for c in rng.choice(g.CATEGORIES, size=n)]
    ids = tokenize(pipe.tokenizer, prompts)
    gen = torch.Generator().manual_seed(int(rng.integers(1 << 31)))
    xT = torch.randn(n, LATENT_CHANNELS, 8, 8, generator=gen)
    z0 = []
    for i in range(0, n, batch):
        cond = pipe.text_encoder(ids[i : i + batch]).last_hidden_state
        res = pipe(
            prompt_embeds=cond,
            latents=xT[i : i + batch].clone(),
            num_inference_steps=steps,
            guidance_scale=1.0,
            eta=0.0,
            output_type="latent",
            height=32,
            width=32,
        )
        z0.append(res.images)
    return xT, torch.cat(z0), ids


def train_turbo(out: Path, seed: int = 0, scale: float = 1.0, batch: int = 64, lr: float = 1e-4) -> dict:
    steps = max(1, round(TURBO_STEPS * scale))
    rng = np.random.default_rng(seed + 40)
    torch.manual_seed(seed + 40)
    pipe = _teacher(out)
    t0 = time.perf_counter()
    xT, z0, ids = teacher_couplings(pipe, max(batch, round(TURBO_COUPLINGS * min(1.0, scale * 4))), rng)
    log(f"turbo: {len(xT)} couplings from the {TEACHER_STEPS}-step teacher in {time.perf_counter() - t0:.0f}s")
    import copy

    student = copy.deepcopy(pipe.unet).train().requires_grad_(True)
    ema = EMA(student, 0.995)
    ac = alphas_cumprod()
    a_T = ac[int(trailing_timesteps(1)[0])]  # T = 999
    grid = trailing_timesteps(4)
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50))
    with torch.no_grad():
        conds = torch.cat([pipe.text_encoder(ids[i : i + 512]).last_hidden_state for i in range(0, len(ids), 512)])
    for step in range(steps):
        idx = torch.from_numpy(rng.integers(0, len(xT), size=batch))
        # half the batch at T (the 1-step map, the hardest and the one SD-Turbo is used for), half
        # spread over the 1-4 step grid
        t = torch.where(torch.from_numpy(rng.random(batch) < ONE_STEP_SHARE), grid[-1], grid[torch.from_numpy(rng.integers(0, len(grid), size=batch))])
        a = ac[t].view(-1, 1, 1, 1)
        xt, _ = reflow_point(xT[idx], z0[idx], a, a_T)
        eps = student(xt, t, conds[idx]).sample
        x0 = (xt - (1 - a).sqrt() * eps) / a.sqrt()
        loss = ((x0 - z0[idx]) ** 2).mean()
        optimizer_step(loss, opt, sched, max_grad_norm=1.0)
        ema.update(student, min(0.995, (1 + step) / (10 + step)))
        if (step + 1) % log_every(steps) == 0:
            log(f"turbo step {step + 1}/{steps} loss {loss.item():.5f} ({time.perf_counter() - t0:.0f}s)")
    folder = out / TURBO_DIR
    sd_pipeline(pipe.vae, pipe.text_encoder, pipe.tokenizer, ema.shadow).save_pretrained(folder, safe_serialization=True)
    write_alignzoo_json(
        folder,
        {
            "guidance_scale": 1.0,
            "num_inference_steps": 1,
            "distillation_steps": steps,
            "couplings": len(xT),
            "teacher_steps": TEACHER_STEPS,
            "note": "SD-Turbo analogue: reflow of the compositional teacher onto straight DDIM lines; DDIM trailing, no guidance",
            "trained_by": "alignzoo tinyworld train --stage turbo",
        },
    )
    return {"seconds": time.perf_counter() - t0, "steps": steps, "couplings": len(xT)}


def train_lcm2(out: Path, seed: int = 0, scale: float = 1.0, batch: int = 64, n_scenes: int = 16384) -> dict:
    steps = max(1, round(LCM2_STEPS * scale))
    rng = np.random.default_rng(seed + 50)
    torch.manual_seed(seed + 50)
    pipe = _teacher(out)
    t0 = time.perf_counter()
    means, stds, specs, scenes = encode_pretraining_set(pipe.vae, max(batch, round(n_scenes * min(1.0, scale * 4))), rng)
    with torch.no_grad():
        uncond = pipe.text_encoder(tokenize(pipe.tokenizer, [""])).last_hidden_state

    def batch_fn(b: int):
        idx = rng.integers(0, len(specs), size=b)
        ids = tokenize(pipe.tokenizer, pdata.caption_batch(specs, scenes, idx, rng))
        idx = torch.from_numpy(idx)
        return means[idx] + stds[idx] * torch.randn_like(means[idx]), ids

    target = lcm_distill(pipe.unet, pipe.text_encoder, uncond, batch_fn, steps, batch, latent_channels=LATENT_CHANNELS, tag="lcm2")
    folder = out / LCM_DIR
    lcm_pipeline(pipe.vae, pipe.text_encoder, pipe.tokenizer, target).save_pretrained(folder, safe_serialization=True)
    write_alignzoo_json(
        folder,
        {
            "guidance_scale": 1.0,
            "num_inference_steps": 4,
            "distillation_steps": steps,
            "guidance_range_trained": list(LCM_GUIDANCE_RANGE),
            "note": "latent consistency distillate of the compositional teacher; guidance g is fed as the w-embedding of g - 1",
            "trained_by": "alignzoo tinyworld train --stage lcm2",
        },
    )
    return {"seconds": time.perf_counter() - t0, "steps": steps}
