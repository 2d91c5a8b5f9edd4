"""Hybrid policy gradient: GRPO on the stochastic transitions plus reward backprop through the
deterministic last x̂0 step (the reward term of RTDMD, "Reinforcing Few-step Generators via
Reward-Tilted Distribution Matching", arXiv 2605.26108, its code's bp_mixin.py; ALGORITHM_NOTES §4.5).

Notation of alignzoo.algos.grpo and alignzoo.algos.reward_backprop (sampling order: x_i is the
state before step i = 0..T−1, x̂0_i = x̂0_θ(x_i, t_i) its clean prediction). The sampler renders
x̂0_{T−1}, so the log-prob algorithms train only the T − 1 transitions x_i → x_{i+1} that reach
the image (Algorithm.action_steps): the last UNet call, the one that makes the image from x_{T−1},
is never trained by them. RTDMD's "hybrid policy gradient" trains it by the reward's gradient
("direct reward backprop through the deterministic last step", its code's ``bp_only_deterministic``).
Per update U (a set of groups, GRPO's plan):

    L = L_GRPO(U) + λ_rb · mean_{i ∈ rows(U)} [ −r(x̂0_θ(x^i_{T−1}, t_{T−1}), c^i) ]

L_GRPO is GRPO's loss (alignzoo.algos.grpo: Â^i = (R^i − mean_g R)/(std + 1e-4), clipped PPO
surrogate max(−Â·ρ, −Â·clip(ρ, 1 ± ε)) averaged over the update's items, with every GRPO option),
imported, not copied. The second term starts from the stored x^i_{T−1} (sg[·]: the policy term
already trains the transitions that reach it) and makes one UNet call with gradient per trajectory,
decodes and scores it with a differentiable reward: ReFL at its last step = DRaFT-1 from the stored
state (reward_backprop's ``mode="draft", draft_k=1, prefix="stored"``). It is added through the
trainer's ``Algorithm.update_extra`` hook, after the policy term's backward, before the optimiser
step: one step on the sum of both gradients. With λ_rb = 0 the hook does nothing and the
algorithm is GRPO.

Departures [O]: RTDMD's BP term is the hinge 1e-4·relu(3 − r) for its real rewards (lr 3e-6, clip
1e-5) and it trains a subset of steps (SubGRPO, here GRPO's ``sde_window``); its distribution-
matching term (AC-DMD, with a fake-score network and a teacher) is left out. λ_rb = 1 by default:
the tiny world's reward-backprop preset (reward_scale 1, the same lr 1e-4) learns at that scale,
and the policy term's per-item loss is O(|Â|) ≈ 1, so the two gradients are weighed alike.
Compute: every update costs GRPO's forwards plus one UNet call with gradient, one decode and one
reward query per trajectory in the update, all counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from alignzoo.algos.base import Items, register_algorithm
from alignzoo.algos.cards import AlgoCard
from alignzoo.algos.grpo import GRPO, GRPOConfig


@dataclass
class HybridConfig(GRPOConfig):
    """GRPO's fields and defaults, plus the weight of the last step's reward backprop."""

    rb_weight: float = 1.0  # λ_rb in L = L_GRPO + λ_rb·mean(−r(x̂0_{T−1})) [O]; 0: GRPO exactly

    def validate(self) -> None:
        super().validate()
        if not (math.isfinite(self.rb_weight) and self.rb_weight >= 0):
            raise ValueError(f"rb_weight must be a finite number >= 0, got {self.rb_weight!r}; set it with --set rb_weight=VALUE")


def reward_term(rewards: torch.Tensor, weight: float) -> torch.Tensor:
    """λ_rb · mean(−r): the reward-backprop term of an update's rows."""
    return weight * (-rewards.float()).mean()


def hybrid_loss(policy_items: torch.Tensor, rewards: torch.Tensor, weight: float) -> torch.Tensor:
    """L = mean of GRPO's per-item losses + λ_rb · mean(−r) (what one update minimises)."""
    return policy_items.float().mean() + reward_term(rewards, weight)


def update_rows(items: Items) -> torch.Tensor:
    """The distinct trajectories (rows) an update's items read, sorted."""
    return torch.unique(items.rows.reshape(-1))


@register_algorithm("hybrid", "hybrid: GRPO on the stochastic steps + reward backprop through the last x̂0 step (RTDMD's reward term)")
class Hybrid(GRPO):
    Config = HybridConfig
    card = AlgoCard(
        objective="GRPO (PPO clip, group-normalised reward) on the T − 1 transitions + λ_rb·(−r) backpropagated through the last x̂0 call",
        reward="scalar, differentiable",
        needs="log-probs + reward gradient",
        paper="RTDMD 2026, arXiv 2605.26108; Liu et al. 2025, arXiv 2505.05470 (Flow-GRPO)",
        code="RTDMD's release (bp_mixin.py); yifan123/flow_grpo",
        defaults=("clip_range", "adv_clip", "rb_weight"),
    )
    needs_reward_grad = True  # the trainer builds the reward differentiable

    def __init__(self, config=None):
        super().__init__(config)
        self.config.validate()

    def training_unet_evals(self, num_steps: int, cfg: bool = False) -> float:
        # GRPO's loop, plus update_extra's one call with gradient per trajectory of each update
        return super().training_unet_evals(num_steps, cfg) + self.training_reward_queries(num_steps) * (2 if cfg else 1)

    def training_reward_queries(self, num_steps: int) -> float:
        # update_extra scores each trajectory of each update once (every pass), unless λ_rb = 0
        return float(self.config.num_inner_epochs) if self.config.rb_weight else 0.0

    def update_extra(self, ctx, traj, items: Items) -> dict:
        """λ_rb · mean(−r(x̂0_θ(x_{T−1}))) over the update's rows, back-propagated in micro-batches
        of train_batch_size images (their gradients add up to the term's); update means returned."""
        weight = float(self.config.rb_weight)
        if weight == 0:
            return {}
        rows, last = update_rows(items), traj.num_steps - 1
        micro = max(1, self.config.train_batch_size // ctx.world)
        reward_sum = 0.0
        for chunk in rows.split(micro):
            prompts = [traj.prompts[i] for i in chunk.tolist()]
            with ctx.autocast():
                x0 = ctx.replay(traj, chunk, last, last + 1, from_stored=True)[:, -1]  # one UNet call from the stored x_{T−1}
                rewards = ctx.score_with_grad(x0, prompts)
            ctx.count(unet=len(chunk), grad=True)
            ctx.backward(reward_term(rewards, weight) * (len(chunk) / len(rows)))
            reward_sum += float(rewards.detach().float().sum())
        mean_reward = reward_sum / len(rows)
        return {"loss": -weight * mean_reward, "loss_rb": -weight * mean_reward, "reward_bp": mean_reward}
