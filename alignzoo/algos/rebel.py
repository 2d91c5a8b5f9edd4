"""REBEL: regression of relative rewards (Gao et al. 2024, eq. 2; applied to diffusion as in RLCM).

For a pair (y, y') of trajectories for the same prompt, with trajectory log-probs summed over
the denoising steps (each step a per-dimension-mean Gaussian log-density):

    L = E[ ( (1/η)·[(log π_θ(y) − log π_θold(y)) − (log π_θ(y') − log π_θold(y'))]
             − (A(y) − A(y')) )² ]

A is the per-prompt normalised reward (RLCM passes the tracker's z-scores, not raw rewards).
η defaults to 1 (RLCM's ``rebel_lr`` = 1/η = 1). Unlike RLCM's code, the current-policy sum is
taken per trajectory (RLCM's ``torch.cat(..., dim=-1).sum(-1)`` collapses the batch into one
scalar when the train batch is > 1; REFERENCE_NOTES §3.4) — do not copy that.
Pairs start from the same x_T by default (as in the SDPO paper's comparison); RLCM samples them
independently: ``shared_noise=False``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from alignzoo.algos.base import AlgoConfig, Algorithm, EpochData, Items, group_rows, register_algorithm
from alignzoo.algos.cards import AlgoCard


@dataclass
class REBELConfig(AlgoConfig):
    learning_rate: float = 3e-4  # the SDPO paper keeps DDPO's shared hyperparameters for REBEL
    rebel_eta: float = 1.0  # η of eq. 2 (the regression scales log-ratio differences by 1/η)
    adv_clip: float | None = None  # RLCM does not clip REBEL's advantages
    normalization: str = "per_prompt"
    tracker_buffer: int = 16
    tracker_min_count: int = 16
    group_size: int = 2  # pairs (y, y'); shared_noise=False: independent x_T per trajectory, as RLCM


@register_algorithm("rebel", "REBEL: squared regression of paired log-ratio differences onto reward differences")
class REBEL(Algorithm):
    Config = REBELConfig
    card = AlgoCard(
        objective="squared regression of paired log-ratio differences onto reward differences",
        reward="scalar",
        needs="log-probs",
        paper="Gao et al. 2024, arXiv 2404.16767 (on diffusion as in RLCM)",
        code="Owen-Oertell/rlcm",
        defaults=("rebel_eta",),
    )
    group_sizes = (2,)

    def plan(self, batch_size: int, num_steps: int, generator: np.random.Generator) -> list[Items]:
        """Items are pairs; each reads the action steps of both trajectories: (M, 2, T − 1), or
        (M, 2, T) with ``train_unrendered_step``. An update covers train_batch_size × accumulation
        images, i.e. half as many pairs (equal compute with DDPO, SDPO paper Appendix A)."""
        t = torch.arange(self.action_steps(num_steps))
        order = generator.permutation(batch_size // 2)

        def items(pairs: torch.Tensor) -> Items:
            rows = group_rows(pairs, 2)[..., None].expand(-1, -1, len(t))
            return Items(rows.contiguous(), t.expand(len(pairs), 2, -1).contiguous())

        return self.updates(order, items)

    def loss(self, items: Items, new_logp, old_logp, data: EpochData):
        log_ratio = (new_logp - old_logp).sum(2)  # (M, 2): each trajectory's summed log-ratio
        adv = data.advantages[items.rows[:, :, 0], 0]  # (M, 2)
        residual = (log_ratio[:, 0] - log_ratio[:, 1]) / self.config.rebel_eta - (adv[:, 0] - adv[:, 1])
        return residual**2, {"residual_abs": residual.detach().abs()}
