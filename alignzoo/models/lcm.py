"""Latent consistency models (LCM-Dreamshaper-v7, the tiny LCM) with the LCM step kernel.

Guidance is distilled into the UNet: it is passed as a w-embedding (``timestep_cond``) of
w = guidance_scale − 1 (LCM paper eq. 9 convention, as diffusers' LatentConsistencyModelPipeline),
so there is no CFG batch doubling and no negative prompt.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from alignzoo.models.base import DiffusionModel


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

    def to_pipeline(self):
        from diffusers import LatentConsistencyModelPipeline

        return LatentConsistencyModelPipeline(
            vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer, unet=self.unet,
            scheduler=self.scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
