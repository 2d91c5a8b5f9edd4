"""Stable-Diffusion-layout models sampled with DDIM (SD-Turbo, the tiny model, any SD folder).

SD-Turbo ships an EulerDiscrete scheduler config; like the SDPO/DDPO code we sample it with
``DDIMScheduler.from_config`` and *trailing* timestep spacing, so that N-step sampling starts at
t = 999 for every N (with "leading" spacing 1-step sampling would start at t = 1).
"""

from __future__ import annotations

from pathlib import Path

import torch

from alignzoo.models.base import DiffusionModel


class StableDiffusionModel(DiffusionModel):
    kind = "sd"

    @classmethod
    def make_scheduler(cls, folder: Path):
        from diffusers import DDIMScheduler

        config = DDIMScheduler.load_config(folder, subfolder="scheduler")
        sched = DDIMScheduler.from_config(config, timestep_spacing="trailing")
        return sched

    @property
    def prediction_type(self) -> str:
        return self.scheduler.config.prediction_type

    def predict_noise(self, latents, t, embeds, neg_embeds=None):
        """ε̂(x_t, t, c); with CFG, ε̂_u + w·(ε̂_c − ε̂_u). Returns (eps, x0_hat) in fp32."""
        t = t.expand(latents.shape[0]) if t.ndim == 0 else t
        x = latents.to(self.dtype)
        if neg_embeds is not None and self.uses_cfg:
            out = self.unet(torch.cat([x, x]), torch.cat([t, t]), encoder_hidden_states=torch.cat([neg_embeds, embeds])).sample
            out_u, out_c = out.float().chunk(2)
            out = out_u + self.guidance_scale * (out_c - out_u)
        else:
            out = self.unet(x, t, encoder_hidden_states=embeds).sample.float()
        return self._to_eps_x0(out, latents.float(), t)

    def _to_eps_x0(self, out, x, t):
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        if self.prediction_type == "epsilon":
            eps = out
            x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        elif self.prediction_type == "v_prediction":
            x0 = a.sqrt() * x - (1 - a).sqrt() * out
            eps = a.sqrt() * out + (1 - a).sqrt() * x
        elif self.prediction_type == "sample":
            x0 = out
            eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        else:
            raise ValueError(f"unsupported prediction_type {self.prediction_type!r}")
        return eps, x0
