"""D3PO: direct preference optimisation over denoising steps (Yang et al. 2024, eq. 8).

Two trajectories per prompt from the same x_T; the one with the higher reward is preferred
(a tie gives s = 0: the loss is log 2 with no gradient). At every step j, with the ratio
against the *pretrained* model (LoRA disabled; D3PO's frozen reference UNet) clamped to
[1 − ε, 1 + ε] (ε = 0.1, the author's fix in d3po#4):

    r_k = clip( π_θ(x^k_{j+1}|x^k_j) / π_ref(x^k_{j+1}|x^k_j), 1 − ε, 1 + ε )
    L_j = −log σ( β · [ s_a·log r_a + s_b·log r_b ] ),    s_winner = +1, s_loser = −1, β = 0.1

All steps of a micro-batch of pairs accumulate into one update (D3PO's accum × T).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from alignzoo.algos.base import AlgoConfig, Algorithm, EpochData, Items, register_algorithm
from alignzoo.algos.cards import AlgoCard


@dataclass
class D3POConfig(AlgoConfig):
    learning_rate: float = 3e-4  # the SDPO paper aligns D3PO's lr with its DDPO (D3PO's own: 3e-5)
    beta: float = 0.1
    ratio_clip: float = 0.1  # ε of the ratio clamp
    adv_clip: float | None = None  # unused: D3PO needs only the preference
    group_size: int = 2  # the pair (a, b) of eq. 8, from one x_T


def preference_signs(reward_a: torch.Tensor, reward_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(s_a, s_b): (+1, −1) if a wins, (−1, +1) if b wins, (0, 0) on a tie."""
    s = torch.sign(reward_a - reward_b)
    return s, -s


@register_algorithm("d3po", "D3PO: per-step DPO on reward-ranked pairs against the pretrained model")
class D3PO(Algorithm):
    Config = D3POConfig
    card = AlgoCard(
        objective="per-step DPO on reward-ranked pairs against the pretrained model (clamped ratios)",
        reward="scalar (only its ranking within a pair)",
        needs="log-probs + reference",
        paper="Yang et al. 2024, arXiv 2311.13231",
        code="yk7333/d3po",
        defaults=("beta", "ratio_clip"),
    )
    group_sizes = (2,)
    needs_reference = True

    def advantages(self, rollout) -> EpochData:
        """The preference signs s of eq. 8 (no normalisation: only the order of a pair counts)."""
        pairs = rollout.final_rewards.view(-1, 2)  # rows prompt-major: (a, b) of pair p are rows 2p, 2p + 1
        signs = torch.stack(preference_signs(pairs[:, 0], pairs[:, 1]), 1).reshape(-1).float()
        return EpochData(advantages=signs[:, None].expand(-1, rollout.traj.num_steps).contiguous())

    def plan(self, batch_size: int, num_steps: int, generator: np.random.Generator) -> list[Items]:
        return self.all_steps_plan(batch_size, num_steps, generator)

    def loss(self, items: Items, new_logp, old_logp, data: EpochData):
        # items (M, 2, 1): the pair (a, b) at one step
        new_logp, ref = new_logp[..., 0], data.ref_log_probs[items.rows, items.steps][..., 0]
        eps = self.config.ratio_clip
        log_r = torch.exp(new_logp - ref).clamp(1 - eps, 1 + eps).log()
        signs = data.advantages[items.rows, items.steps][..., 0]  # (M, 2): s_a, s_b
        logits = self.config.beta * (signs * log_r).sum(1)
        return -F.logsigmoid(logits), {"tie": (signs[:, 0] == 0).float(), "ratio_clipfrac": ((new_logp - ref).exp().sub(1).abs() > eps).float().mean(1)}
