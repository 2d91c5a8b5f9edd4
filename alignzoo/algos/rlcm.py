"""RLCM: DDPO and REBEL over a latent consistency model's multistep sampler (Oertell et al. 2024).

The MDP (RLCM §3.3, REFERENCE_NOTES §3.3): state x_τk, action x_τk+1 ~ N(√ᾱ_τk+1·f_θ(x_τk, τk),
(1−ᾱ_τk+1)·I); the last step re-noises to its own timestep; the reward is computed on the last
consistency output f_θ (what the LCM pipeline decodes). The step kernel is
``alignzoo.models.sampling``'s LCM kernel; the objectives are DDPO's and REBEL's unchanged.
Defaults are RLCM's aesthetic task: 8 steps, lr 1e-4, Adam without weight decay and a linear
LR decay stepped per epoch, PPO clip 1e-4, advantage clip 10, grad-norm clip 5, LoRA r 8 / α 8,
tracker 32/16; REBEL with 1/η = ``rebel_lr`` = 1, no ratio/grad/advantage clipping and
independent initial noise.
"""

from __future__ import annotations

from dataclasses import dataclass

from alignzoo.algos.base import register_algorithm
from alignzoo.algos.cards import AlgoCard
from alignzoo.algos.ddpo import DDPO, DDPOConfig
from alignzoo.algos.rebel import REBEL, REBELConfig


@dataclass
class RLCMDDPOConfig(DDPOConfig):
    num_steps: int | None = 8
    learning_rate: float = 1e-4
    optimizer: str = "adam"
    weight_decay: float = 0.0
    lr_schedule: str = "linear"
    max_grad_norm: float | None = 5.0
    adv_clip: float | None = 10.0
    clip_range: float = 1e-4
    lora_rank: int = 8
    lora_alpha: float | None = 8.0
    tracker_buffer: int = 32
    tracker_min_count: int = 16


@dataclass
class RLCMREBELConfig(REBELConfig):
    num_steps: int | None = 8
    learning_rate: float = 1e-4
    optimizer: str = "adam"
    weight_decay: float = 0.0
    lr_schedule: str = "linear"
    max_grad_norm: float | None = None  # RLCM's REBEL loop does not clip gradients
    adv_clip: float | None = None
    rebel_eta: float = 1.0  # RLCM's rebel_lr = 1/η = 1
    shared_noise: bool = False  # RLCM samples the two generations independently
    lora_rank: int = 8
    lora_alpha: float | None = 8.0
    tracker_buffer: int = 32
    tracker_min_count: int = 16


@register_algorithm("rlcm-ddpo", "RLCM: DDPO's PPO objective on a latent consistency model's multistep sampler")
class RLCMDDPO(DDPO):
    card = AlgoCard(
        objective="DDPO's PPO objective on the LCM multistep sampler's stochastic steps",
        reward="scalar",
        needs="log-probs",
        paper="Oertell et al. 2024, arXiv 2404.03673",
        code="Owen-Oertell/rlcm",
        defaults=("clip_range", "lr_schedule"),
    )
    Config = RLCMDDPOConfig
    model_kinds = ("lcm",)


@register_algorithm("rlcm-rebel", "RLCM's REBEL: paired log-ratio regression on a latent consistency model")
class RLCMREBEL(REBEL):
    card = AlgoCard(
        objective="REBEL's paired log-ratio regression on the LCM multistep sampler",
        reward="scalar",
        needs="log-probs",
        paper="Oertell et al. 2024, arXiv 2404.03673",
        code="Owen-Oertell/rlcm",
        defaults=("rebel_eta", "lr_schedule"),
    )
    Config = RLCMREBELConfig
    model_kinds = ("lcm",)
