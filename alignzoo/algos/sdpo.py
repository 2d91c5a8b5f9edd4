"""SDPO: Stepwise Diffusion Policy Optimization (Zhang et al., arXiv 2411.11727, §3.2–3.3).

Notation: the paper counts steps down, t = T−1 (first, noisiest) … 0 (last); the zoo stores
sampling order, i = T−1−t (see alignzoo/models/sampling.py). Per pair (a, b) of trajectories
from the same x_T and prompt c:

* Dense rewards from 3 queries (eqs. 9–11). Sim_first(i) = cos(x̂0_i, x̂0_first),
  Sim_last(i) = cos(x̂0_i, x̂0_last); the anchor is argmin over the interior steps
  (paper t ∈ {1..T−2}; the public code: all steps, see adaptive_anchor) of Sim_first + Sim_last
  (eq. 10); Sim_anchor(i) = cos(x̂0_i, x̂0_anchor);
      R̂_i = (R_first·Sim_first + R_anchor·Sim_anchor + R_last·Sim_last) / (Sim_first + Sim_anchor + Sim_last)   (eq. 11)
  and the three query steps keep their real reward. Cosine similarities can be negative
  (TINYWORLD_NOTES); weights below ``similarity_floor`` (default 0) are raised to it and an
  all-zero denominator falls back to equal weights — identical to eq. 11 whenever all
  similarities are positive.
* Discounted returns (eq. 13): Ĝ_t = Σ_{k=0}^{t} γ^k R̂_{t−k}, i.e. in sampling order
  G_i = Σ_{k≥0} γ^k R̂_{i+k} (the steps still to come), γ = 0.99.
* Per-step-prompt normalisation of Ĝ (buffer 32, min count 16, batch fallback) → Â, clipped ±5.
* Stepwise importance weight λ^(T−t−1)/η = λ^i/η (λ = 0.99, η = 1) (eq. 14).
* Loss (eqs. 14–16): ρ^k = log p_θ(x^k) − log p_θ'(x^k) per step, ρ̃^k = clip(ρ^k, −ε, ε),
      l = (w·(ρ^a − ρ^b) − (Â^a − Â^b))²,  l̃ = (w·(ρ̃^a − ρ̃^b) − (Â^a − Â^b))²,
      L_t = mean over pairs of max(l, l̃),   ε = 1e-4.
* Step-shuffled updates (Alg. 1): each pair's T steps are permuted independently; the outer loop
  runs over the T shuffled columns and every column gives its own optimiser step(s). By default
  the last transition, whose sample is never rendered (AlgoConfig.train_unrendered_step), is left
  out: T − 1 columns.

Every ablation of the paper's §4.3 is a config field (``reward_prediction``, ``gamma``,
``normalization``, ``weight_decay_rate``/``weighting``, ``update_order``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from alignzoo.algos.base import AlgoConfig, Algorithm, ComputeException, EpochData, Items, group_rows, register_algorithm, shuffled_step_columns
from alignzoo.algos.cards import AlgoCard
from alignzoo.algos.dense_rewards import adaptive_anchor, discounted_returns, importance_weights, similarity_weighted_rewards

REWARD_PREDICTIONS = ("adaptive", "random_anchor", "fixed_anchor", "two_similarity", "two_interpolation", "one_copy", "all")
UPDATE_ORDERS = ("shuffled", "step_accumulated", "unshuffled")


@dataclass
class SDPOConfig(AlgoConfig):
    """Defaults: the paper's Table 2 (Aesthetic column) and the released config. The other
    columns (ImageReward, HPSv2, PickScore) are per-reward overrides in suites/paper-sdturbo.toml."""

    learning_rate: float = 1e-4  # Table 2: aesthetic 1e-4, ImageReward 5e-5, HPSv2 5e-5, PickScore 6e-5
    # Table 2 per GPU on 4 GPUs: B2 = 2 pairs (aesthetic; others 1), accumulation 8 (ImageReward/
    # HPSv2 32, PickScore 16). In the zoo's global images: 4 GPUs × 2 pairs × 2 = 16 images per
    # micro-batch, so an update covers 16 × 8 = 128 images = 64 pairs (suites/paper-sdturbo.toml).
    train_batch_size: int = 16
    gradient_accumulation_steps: int = 8
    clip_range: float = 1e-4  # ε
    log_scale: float = 1.0  # η, the log-ratio scale factor
    gamma: float | None = 0.99  # discount; None: no returns (R̂ used directly)
    lam: float = 0.99  # λ, stepwise importance-weight decay
    weighting: str = "decay"  # "decay": λ^(T−t−1); "reversed": λ^t
    adv_clip: float | None = 5.0
    normalization: str = "per_step_prompt"
    tracker_buffer: int = 32
    tracker_min_count: int = 16
    reward_prediction: str = "adaptive"  # one of REWARD_PREDICTIONS (paper §4.3)
    fixed_anchor_step: int | None = None  # for "fixed_anchor" (sampling-order index); None: (T−1)//2, the paper's 25th of 50 = index 24
    similarity_floor: float = 0.0
    update_order: str = "shuffled"  # one of UPDATE_ORDERS
    group_size: int = 2  # the pair (a, b) from one x_T


@register_algorithm("sdpo", "SDPO: dense reward difference learning with step-shuffled updates (Zhang et al.)")
class SDPO(Algorithm):
    Config = SDPOConfig
    card = AlgoCard(
        objective="dense per-step reward differences regressed onto paired log-ratios, step-shuffled updates",
        reward="scalar, queried at 3 steps of each trajectory",
        needs="log-probs",
        paper="Zhang et al., arXiv 2411.11727",
        code="ZiyiZhang27/sdpo",
        defaults=("gamma", "lam", "clip_range"),
    )
    group_sizes = (2,)

    def __init__(self, config=None):
        super().__init__(config)
        c = self.config
        if c.reward_prediction not in REWARD_PREDICTIONS:
            raise ValueError(f"unknown reward_prediction {c.reward_prediction!r}; choose one of {', '.join(REWARD_PREDICTIONS)}")
        if c.update_order not in UPDATE_ORDERS:
            raise ValueError(f"unknown update_order {c.update_order!r}; choose one of {', '.join(UPDATE_ORDERS)}")
        importance_weights(1, c.lam, c.weighting)

    # -- dense rewards -----------------------------------------------------------------------
    def query_steps(self, traj, generator: np.random.Generator) -> torch.Tensor:
        """(B, Q) sampling-order steps whose x̂0 is decoded and scored: first, anchor, last."""
        x0 = traj.pred_x0.float().cpu()
        b, t = x0.shape[:2]
        mode = self.config.reward_prediction
        first, last = torch.zeros(b, 1, dtype=torch.long), torch.full((b, 1), t - 1, dtype=torch.long)
        if t == 1 or mode == "one_copy":
            return last
        if mode == "all":
            return torch.arange(t)[None].expand(b, -1).clone()
        if t == 2 or mode in ("two_similarity", "two_interpolation"):
            return torch.cat([first, last], 1)
        if mode == "adaptive":
            anchor = adaptive_anchor(x0)
        elif mode == "random_anchor":
            anchor = torch.as_tensor(generator.integers(1, t - 1, size=b))
        else:
            k = self.config.fixed_anchor_step
            # the paper's "25th step" of 50 is sampling-order index 24 = (T − 1)//2, not T//2
            anchor = torch.full((b,), (t - 1) // 2 if k is None else min(max(int(k), 1), t - 2), dtype=torch.long)
        return torch.cat([first, anchor[:, None], last], 1)

    def dense_rewards(self, x0: torch.Tensor, steps: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        b, t = x0.shape[:2]
        mode = self.config.reward_prediction
        if steps.shape[1] == 1:  # one query: copied to every step
            return values[:, :1].expand(b, t).clone()
        if mode == "two_interpolation":
            frac = torch.arange(t, dtype=torch.float32) / (t - 1)
            return values[:, :1] + (values[:, 1:2] - values[:, :1]) * frac[None]
        if mode == "all":
            return values.clone()
        return similarity_weighted_rewards(x0, steps, values, self.config.similarity_floor)

    def advantages(self, rollout) -> EpochData:
        x0 = rollout.traj.pred_x0.float().cpu()
        dense = self.dense_rewards(x0, rollout.queries, rollout.rewards.float())
        returns = discounted_returns(dense, self.config.gamma)
        return EpochData(advantages=self.clip_advantages(rollout.normalize(returns)), extra={"dense_rewards": dense})

    # -- updates -----------------------------------------------------------------------------
    def compute_exception(self):
        if self.config.update_order == "step_accumulated":
            return None  # DDPO-style: all steps of an update's pairs in one update, equal compute
        return ComputeException(
            "sdpo-step-shuffled",
            "one optimiser update per shuffled step column (Alg. 1 line 12), T − 1 times the "
            "updates of a whole-trajectory method: the stepwise objective enables 'more frequent model updates' (SDPO paper, Appendix A)",
        )

    def plan(self, batch_size: int, num_steps: int, generator: np.random.Generator) -> list[Items]:
        if self.config.update_order == "step_accumulated":  # DDPO-style: all steps of a micro-batch in one update
            return self.all_steps_plan(batch_size, num_steps, generator)
        pairs, keep = batch_size // 2, self.trained_steps(num_steps)
        order = generator.permutation(pairs)
        if self.config.update_order == "unshuffled":
            cols = np.tile(np.arange(keep), (pairs, 1))
        else:
            cols = shuffled_step_columns(pairs, self.action_steps(num_steps), keep, generator)
        cols = torch.as_tensor(cols)

        def column(j: int):  # Alg. 1 line 12: one column of shuffled steps per update
            return lambda chosen: Items(group_rows(chosen, 2)[..., None], cols[chosen, j][:, None, None].expand(-1, 2, 1).contiguous())

        return [update for j in range(keep) for update in self.updates(order, column(j))]

    def loss(self, items: Items, new_logp, old_logp, data: EpochData):
        c = self.config
        t = data.advantages.shape[1]
        w = importance_weights(t, c.lam, c.weighting).to(new_logp.device)[items.steps[:, 0, 0]] / c.log_scale
        rho = (new_logp - old_logp)[..., 0]  # items (M, 2, 1): log-ratios of a and b at one step
        rho_clipped = rho.clamp(-c.clip_range, c.clip_range)
        adv = data.advantages[items.rows, items.steps][..., 0]
        d_adv = adv[:, 0] - adv[:, 1]
        l_unclipped = (w * (rho[:, 0] - rho[:, 1]) - d_adv) ** 2
        l_clipped = (w * (rho_clipped[:, 0] - rho_clipped[:, 1]) - d_adv) ** 2
        loss = torch.maximum(l_unclipped, l_clipped) if c.clip_range > 0 else l_unclipped
        return loss, {"clipfrac": (l_clipped > l_unclipped).float()}
