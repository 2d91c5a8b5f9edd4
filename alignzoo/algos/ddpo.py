"""DDPO-IS: PPO-clipped policy gradient over denoising steps (Black et al. 2023, eq. 4–5).

For a trajectory with (normalised, clipped) advantage A and a step with ratio
r = p_θ(x_{t−1}|x_t, c) / p_θold(x_{t−1}|x_t, c) = exp(log p_θ − log p_θold):

    L = E[ max(−A·r, −A·clip(r, 1 − ε, 1 + ε)) ]                 (PPO clipped surrogate)

Log-probs are the per-dimension *means* of the Gaussian log-density (ddpo-pytorch's choice,
which the clip range ε = 1e-4 assumes). Advantages: per-prompt running statistics (buffer 16,
min count 16), clipped to ±5, one per trajectory, broadcast to its steps. All (sub-sampled)
timesteps of a micro-batch accumulate into one update, as ``accelerate``'s
gradient_accumulation_steps = accum × T does in ddpo-pytorch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from alignzoo.algos.base import AlgoConfig, Algorithm, EpochData, Items, register_algorithm
from alignzoo.algos.cards import AlgoCard


@dataclass
class DDPOConfig(AlgoConfig):
    """ddpo-pytorch / TRL DDPOConfig defaults."""

    learning_rate: float = 3e-4
    clip_range: float = 1e-4  # ε of the ratio clip
    adv_clip: float | None = 5.0
    normalization: str = "per_prompt"
    tracker_buffer: int = 16
    tracker_min_count: int = 16


@register_algorithm("ddpo", "DDPO-IS: PPO-clipped policy gradient over the denoising steps (Black et al. 2023)")
class DDPO(Algorithm):
    Config = DDPOConfig
    card = AlgoCard(
        objective="PPO-clipped policy gradient over the denoising steps, per-prompt normalised final reward",
        reward="scalar",
        needs="log-probs",
        paper="Black et al. 2023, arXiv 2305.13301",
        code="kvablack/ddpo-pytorch",
        defaults=("clip_range", "adv_clip", "normalization"),
    )

    def plan(self, batch_size: int, num_steps: int, generator: np.random.Generator) -> list[Items]:
        """All steps of (gradient_accumulation_steps × train_batch_size) trajectories per update."""
        return self.all_steps_plan(batch_size, num_steps, generator)

    def loss(self, items: Items, new_logp, old_logp, data: EpochData):
        # items (M, 1, 1): one trajectory's step each (G > 1 reads every row of the group alike)
        adv = data.advantages[items.rows, items.steps].flatten(1)
        ratio = torch.exp(new_logp - old_logp).flatten(1)
        eps = self.config.clip_range
        unclipped = -adv * ratio
        clipped = -adv * ratio.clamp(1 - eps, 1 + eps)
        loss = torch.maximum(unclipped, clipped).mean(1)
        return loss, {"clipfrac": ((ratio - 1).abs() > eps).float().mean(1)}
