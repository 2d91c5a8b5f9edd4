"""Latent consistency models (LCM-Dreamshaper-v7, the tiny LCM) with the LCM step kernel.

Guidance is distilled into the UNet: it is passed as a w-embedding (``timestep_cond``) of
w = guidance_scale − 1 (LCM paper eq. 9 convention, as diffusers' LatentConsistencyModelPipeline),
so there is no CFG batch doubling and no negative prompt.

Timestep schedule (``ModelSpec.lcm_schedule``). Both pick N of the K = original_inference_steps
distillation timesteps c·j − 1 (j = 1..K, c = 1000//K; K = 50: 19, 39, …, 999), from 999 down:

* ``"diffusers"`` (default; modern diffusers' LCMScheduler): indices ⌊i·K/N⌋, i = 0..N−1.
  8 steps: 999, 879, 759, 639, 499, 379, 259, 139; 4 steps: 999, 759, 499, 259.
* ``"rlcm"`` (RLCM's scheduler and the original LCM code): every s-th, s = K//N, first N.
  8 steps: 999, 879, 759, 639, 519, 399, 279, 159; 4 steps: 999, 759, 519, 279. For N > K/2
  (s = 1) it stops at 999 − c·(N−1) (e.g. 419 at N = 30 of 50), as RLCM's does.

The schedule belongs to the model, not the algorithm, so training rollouts, the pretrained baseline
and every evaluation sample with the same one. Choose it per model name with a suffix,
``lcm-dreamshaper-v7@rlcm`` (a suite's ``lcm_schedule = "rlcm"`` adds it), or
``load_model(..., lcm_schedule="rlcm")``.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch

from alignzoo.models.base import DiffusionModel

LCM_SCHEDULES = ("diffusers", "rlcm")


def split_schedule(name: str) -> tuple[str, str | None]:
    """``"NAME@rlcm"`` → (``"NAME"``, ``"rlcm"``); a name without a suffix (or an existing folder) → (name, None)."""
    base, sep, schedule = str(name).rpartition("@")
    if not sep or "/" in schedule or Path(name).is_dir():
        return name, None
    if schedule not in LCM_SCHEDULES:
        raise ValueError(f"unknown LCM schedule {schedule!r} in model name {name!r}; choose one of {', '.join(LCM_SCHEDULES)}")
    return base, schedule


def with_schedule(spec, schedule: str | None):
    """The spec with its LCM schedule checked (and set from a name suffix, which its name keeps)."""
    if schedule is not None:
        spec = dataclasses.replace(spec, name=f"{spec.name}@{schedule}", lcm_schedule=schedule)
    if spec.lcm_schedule not in LCM_SCHEDULES:
        raise ValueError(f"unknown lcm_schedule {spec.lcm_schedule!r} for model {spec.name!r}; choose one of {', '.join(LCM_SCHEDULES)}")
    if spec.kind != "lcm" and spec.lcm_schedule != "diffusers":
        raise ValueError(f"lcm_schedule {spec.lcm_schedule!r} applies to LCM models only; {spec.name!r} is an SD (DDIM) model")
    return spec


def rlcm_timesteps(num_steps: int, original_steps: int = 50, num_train_timesteps: int = 1000) -> list[int]:
    """RLCM's N-step schedule, noisiest first: every (K//N)-th distillation timestep from 999."""
    if not 1 <= num_steps <= original_steps:
        raise ValueError(f"an LCM samples 1 to {original_steps} steps (its original_inference_steps), got {num_steps}")
    c = num_train_timesteps // original_steps
    descending = [c * j - 1 for j in range(original_steps, 0, -1)]
    return descending[:: original_steps // num_steps][:num_steps]


def guidance_scale_embedding(w: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of the guidance weight (VDM appendix; LCM's w-embedding)."""
    w = w.float() * 1000.0
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=w.device) * -(math.log(10000.0) / (half - 1)))
    emb = w[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=1)
    if dim % 2 == 1:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


class LatentConsistencyModel(DiffusionModel):
    kind = "lcm"
    sigma_data = 0.5

    @classmethod
    def make_scheduler(cls, folder: Path):
        from diffusers import LCMScheduler

        return LCMScheduler.from_config(LCMScheduler.load_config(folder, subfolder="scheduler"))

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.unet.config.time_cond_proj_dim is None:
            raise ValueError("this UNet has no time_cond_proj_dim (w-embedding): it is not an LCM; load it with kind='sd'")
        self.timestep_scaling = float(getattr(self.scheduler.config, "timestep_scaling", 10.0))
        self.scheduler.config.original_inference_steps  # noqa: B018 (present in every LCMScheduler config)
        with_schedule(self.spec, None)

    def timesteps(self, num_steps: int) -> torch.Tensor:
        """The N-step schedule of ``spec.lcm_schedule`` (module docstring), noisiest first."""
        if self.spec.lcm_schedule == "diffusers" or num_steps < 1:
            return super().timesteps(num_steps)
        ts = rlcm_timesteps(num_steps, int(self.scheduler.config.original_inference_steps), self.num_train_timesteps)
        return torch.tensor(ts, dtype=torch.long, device=self.device)

    def w_embedding(self, batch: int) -> torch.Tensor:
        w = torch.full((batch,), self.guidance_scale - 1.0, device=self.device)
        return guidance_scale_embedding(w, self.unet.config.time_cond_proj_dim).to(self.dtype)

    def boundary_coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """c_skip(t), c_out(t) of the consistency parameterisation (LCM eq. 3, scaled timesteps)."""
        s = t.float() * self.timestep_scaling
        c_skip = self.sigma_data**2 / (s**2 + self.sigma_data**2)
        c_out = s / (s**2 + self.sigma_data**2).sqrt()
        return c_skip.view(-1, 1, 1, 1), c_out.view(-1, 1, 1, 1)

    def predict_noise(self, latents, t, embeds, neg_embeds=None):
        """Returns (ε̂, f_θ(x_t, t)): the noise prediction and the consistency output ("denoised")."""
        t = t.expand(latents.shape[0]) if t.ndim == 0 else t
        x = latents.float()
        eps = self.unet(latents.to(self.dtype), t, timestep_cond=self.w_embedding(latents.shape[0]), encoder_hidden_states=embeds).sample.float()
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        c_skip, c_out = self.boundary_coefficients(t)
        return eps, c_out * x0 + c_skip * x
