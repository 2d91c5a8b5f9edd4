"""GRPO on the denoising steps: group-relative advantages, PPO-clipped per-step ratios, and the
options of its diffusion variants (Flow-GRPO, DanceGRPO, MixGRPO, TempFlow-GRPO, Flow-DPPO,
GRPO-Guard, GDPO).

Notation of Flow-GRPO (Liu et al., arXiv 2505.05470). A prompt c gets a group of G images
x^i_0 (i = 1..G) with rewards R^i. Step t of trajectory i has the ratio
r^i_t(θ) = p_θ(x^i_{t−1} | x^i_t, c) / p_θold(x^i_{t−1} | x^i_t, c). The zoo stores steps in
sampling order, j = 0 the noisiest (alignzoo/models/sampling.py); log-probs are per-dimension means
(DDPO's convention, which ε = 1e-4 assumes). The objective is the GRPO one of Flow-GRPO:

    Â^i = (R^i − mean_g R) / (std + 1e-4),  clipped to ±adv_clip, the same at every step
    L   = mean_{i,t} [ max(−Â^i·r^i_t, −Â^i·clip(r^i_t, 1 − ε, 1 + ε)) + β·D_KL(t) ]
    D_KL(t) = ‖μ_θ(x_t) − μ_ref(x_t)‖² / (2σ_t²)      (the closed-form KL of two Gaussian steps
                                                      with one std; ‖·‖² a mean over dimensions)

σ_t is the step's Gaussian std (DDIM: η·√((1−ᾱ_t')/(1−ᾱ_t)·(1−ᾱ_t/ᾱ_t')); LCM: √(1−ᾱ_t')), the
same for every row (Trajectory.stds). μ_ref is the same UNet with its LoRA
disabled (``model.reference()``, one UNet in memory): the trainer computes it once per epoch for the
trained steps (``needs_reference`` and ``needs_means``: EpochData.ref_means). Options, each off by
default unless said:

* ``advantage_std``: "group" (GRPO, DanceGRPO: the group's std), "global" (Flow-GRPO's
  ``global_std``: the std of every reward of the epoch, all processes), "none" (Dr. GRPO,
  arXiv 2503.20783: Â = R − mean_g R). Stds are population stds + 1e-4, as Flow-GRPO's tracker.
* ``shared_noise`` (AlgoConfig): False, each image its own x_T (Flow-GRPO, whose author calls it
  "the correct approach", flow_grpo#7); True, one x_T per group (DanceGRPO, arXiv 2505.07818).
* ``sde_window`` w > 0 (MixGRPO, arXiv 2507.21802): only w consecutive steps [l, l + w) are
  sampled stochastically (η elsewhere 0, an ODE step) and trained. The window starts at the
  noisiest step and moves by ``sde_window_stride`` s every ``sde_window_every`` τ epochs
  (the paper's "progressive" strategy, iterations = epochs here): l_k = min(⌊k/τ⌋·s, A − w) at
  epoch k, A the trainable steps. The LCM kernel has no η: there the window selects the trained
  steps only. It replaces ``timestep_fraction``.
* ``noise_weighting`` (TempFlow-GRPO, arXiv 2508.04324): the policy term of step t times c·σ_t.
  c = ``noise_weight_scale``, or by default c = 1/mean σ over the trainable steps, so the weights
  average 1 and the loss keeps GRPO's scale. The released code's c = 2.25 is for flow-SDE σ.
  TempFlow's other half, trajectory branching (one deterministic prefix per group, noise at one
  step k, deterministic after it), is ``shared_noise`` with ``sde_window = 1``: k moves as above.
* ``ratio_guard`` = "dppo" (Flow-DPPO, arXiv 2606.11025): the ratio clip is replaced by a
  divergence mask. With D_t = ‖μ_θ − μ_old‖²/(2σ_t²), the exact KL of the old and new step, a
  step is masked (no gradient) when D_t > ε_D and its ratio still moves away (Â > 0 and r > 1, or
  Â < 0 and r < 1); the term is −Â·r·(1 − m). ε_D = ``dppo_threshold``, 1e-5 (verl-omni).
* ``ratio_guard`` = "guard" (GRPO-Guard, arXiv 2510.22319; Flow-GRPO's released loss). RatioNorm:
  the log-ratio of a Gaussian step has mean −b_t under the old policy, b_t = ‖μ_θ − μ_old‖²/(2σ_t²)
  (the same D_t, with grad), and a spread that grows as σ_t shrinks; the guard clips
  r̃ = exp((log r + b_t)·σ_t) instead, ≈ exp(⟨z, μ_θ − μ_old⟩) with z the step's noise. Gradient
  reweighting: the flow code divides the step's term by −dt = ∂μ/∂v; the DDIM/LCM counterpart
  here divides by |c_t|, c_t = ∂μ/∂ε̂ (Trajectory.eps_coefs, models.sampling.eps_coefficient), so
  every step's gradient is ⟨z, ∂ε̂/∂θ⟩ in ε-space. r̃ − 1 is far smaller than r − 1: set
  ``clip_range`` for it (Flow-GRPO's guard configs use ~2e-6 on SD3; on tiny-sd-v2, T = 4, lr
  1e-4, tiny_preference, 512 images, the clip fired on no step at 1e-3 and on 10–38% at 1e-4).
* ``reward_aggregation`` for a weighted sum of rewards (``--reward a --reward b
  --reward-weights``): "sum" normalises Σ_k w_k·R_k as above; "gdpo" (GDPO, arXiv 2601.05242)
  normalises each reward within its group first, A^i = Σ_k w_k·(R^i_k − mean_g R_k)/max(std_g R_k,
  1e-6), then over the batch, Â = (A − mean_B A)/max(std_B A, 1e-6) (``advantage_std`` unused).

Defaults fit the tiny world's suites (T = 4, 64 images per epoch, 8 per update, lr 1e-4, LoRA r 8):
G = 8 (Flow-GRPO 24, DanceGRPO 16), so an update is one group at all its trained steps. The ratio
clip is 0.1, the tiny world's calibrated DDPO clip (docs/tiny-presets.md). Flow-GRPO's 1e-4 binds
there on 45–73% of the steps and cuts the gain (tiny-sd-v2, tiny_preference, 384 images: +0.24 ±
0.03 against +0.61 ± 0.06 at 0.1); for real models use ``--set clip_range=1e-4``. Other defaults:
advantage clip 5 (Flow-GRPO); β = 0 (DanceGRPO, MixGRPO; Flow-GRPO uses 0.04 for GenEval and 0.01
for PickScore, and its author advises β = 0 on a new model, flow_grpo#23). The MixGRPO window is
0 (off); when on, stride w and τ = 25 epochs (its code's ``iters_per_group``). ε_D = 1e-5.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from alignzoo.algos.base import AlgoConfig, Algorithm, EpochData, Items, group_rows, register_algorithm
from alignzoo.algos.cards import AlgoCard
from alignzoo.models.sampling import mean_kl

ADVANTAGE_STDS = ("group", "global", "none")
AGGREGATIONS = ("sum", "gdpo")
RATIO_GUARDS = ("none", "dppo", "guard")


@dataclass
class GRPOConfig(AlgoConfig):
    """Defaults for the tiny world's suites; the papers' values in the comments."""

    group_size: int = 8  # G images per prompt (Flow-GRPO 24, DanceGRPO 16): one group per update of 8
    shared_noise: bool = False  # Flow-GRPO: each image its own x_T; True: DanceGRPO's one x_T per group
    samples_per_epoch: int = 64  # the tiny suites' (Flow-GRPO: 48 groups of 24)
    train_batch_size: int = 8  # images per update, as every algorithm of the tiny suites
    learning_rate: float = 1e-4  # the tiny suites' (Flow-GRPO 3e-4 base config)
    lora_rank: int = 8  # the tiny suites' (Flow-GRPO r 32, α 64)
    clip_range: float = 0.1  # ε; the tiny world's calibrated ratio clip (Flow-GRPO, DanceGRPO: 1e-4)
    adv_clip: float | None = 5.0  # Flow-GRPO, DanceGRPO
    advantage_std: str = "group"  # one of ADVANTAGE_STDS
    kl_beta: float = 0.0  # β of the mean-space KL to the pretrained model (Flow-GRPO 0.04 GenEval, 0.01 PickScore)
    sde_window: int = 0  # MixGRPO window size w in steps (0: every trainable step stochastic and trained)
    sde_window_stride: int | None = None  # s, steps the window moves (None: w, MixGRPO's non-overlapping default)
    sde_window_every: int = 25  # τ, epochs per window position (MixGRPO's iters_per_group)
    noise_weighting: bool = False  # TempFlow-GRPO: the policy term of step t times c·σ_t
    noise_weight_scale: float | None = None  # c (None: 1/mean σ over the trainable steps; TempFlow's code: 2.25)
    ratio_guard: str = "none"  # one of RATIO_GUARDS ("dppo": Flow-DPPO's divergence mask instead of the clip; "guard": GRPO-Guard)
    dppo_threshold: float = 1e-5  # ε_D of the divergence mask (verl-omni)
    reward_aggregation: str = "sum"  # one of AGGREGATIONS, for several rewards

    def validate(self) -> None:
        for key, allowed in (("advantage_std", ADVANTAGE_STDS), ("reward_aggregation", AGGREGATIONS), ("ratio_guard", RATIO_GUARDS)):
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key} must be one of {', '.join(allowed)}, got {getattr(self, key)!r}; set it with --set {key}=VALUE")
        checks = [
            ("clip_range", self.clip_range > 0, "a number > 0"),
            ("kl_beta", self.kl_beta >= 0, "a number >= 0"),
            ("sde_window", self.sde_window >= 0, "an integer >= 0 (0: no window)"),
            ("sde_window_stride", self.sde_window_stride is None or self.sde_window_stride >= 1, "an integer >= 1, or none for the window size"),
            ("sde_window_every", self.sde_window_every >= 1, "an integer >= 1 (epochs)"),
            ("noise_weight_scale", self.noise_weight_scale is None or self.noise_weight_scale > 0, "a number > 0, or none"),
            ("dppo_threshold", self.dppo_threshold > 0, "a number > 0"),
        ]
        for key, ok, must in checks:
            if not ok:
                raise ValueError(f"{key} must be {must}, got {getattr(self, key)!r}; set it with --set {key}=VALUE")


# -- advantages ---------------------------------------------------------------------------------
def _identity(values: torch.Tensor) -> torch.Tensor:
    return values


def group_advantages(rewards: torch.Tensor, group_size: int, std: str = "group", gather: Callable = _identity) -> torch.Tensor:
    """(B,) Â^i = (R^i − mean_g R)/(std + 1e-4): std of the group, of every process's rewards
    (``gather``), or none; rows prompt-major (row = p·G + g)."""
    groups = rewards.float().view(-1, group_size)
    centred = groups - groups.mean(1, keepdim=True)
    if std == "group":
        centred = centred / (groups.std(1, unbiased=False, keepdim=True) + 1e-4)
    elif std == "global":
        centred = centred / (gather(rewards.float()).std(unbiased=False) + 1e-4)
    elif std != "none":
        raise ValueError(f"unknown advantage_std {std!r}; choose one of {', '.join(ADVANTAGE_STDS)}")
    return centred.reshape(-1)


def gdpo_advantages(components: torch.Tensor, weights: torch.Tensor, group_size: int, gather: Callable = _identity) -> torch.Tensor:
    """(B,) GDPO: each reward z-scored within its group, weighted and summed, then z-scored over
    the batch (every process's, ``gather``). ``components`` (B, R), ``weights`` (R,)."""
    b, r = components.shape
    if weights.shape != (r,):
        raise ValueError(f"{r} reward components but {tuple(weights.shape)} weights")
    groups = components.float().view(-1, group_size, r)
    z = (groups - groups.mean(1, keepdim=True)) / groups.std(1, unbiased=False, keepdim=True).clamp(min=1e-6)
    summed = (z * weights.float()).sum(2).reshape(b)
    every = gather(summed)
    return (summed - every.mean()) / every.std(unbiased=False).clamp(min=1e-6)


# -- loss terms -----------------------------------------------------------------------------------
def clipped_surrogate(adv: torch.Tensor, ratio: torch.Tensor, eps: float) -> torch.Tensor:
    """max(−Â·r, −Â·clip(r, 1 − ε, 1 + ε)), elementwise."""
    return torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - eps, 1 + eps))


def dppo_mask(divergence: torch.Tensor, adv: torch.Tensor, ratio: torch.Tensor, threshold: float) -> torch.Tensor:
    """Flow-DPPO: True where D_t > ε_D and the ratio still moves away (Â > 0, r > 1 or Â < 0, r < 1)."""
    away = ((adv > 0) & (ratio > 1)) | ((adv < 0) & (ratio < 1))
    return (divergence > threshold) & away


def noise_weights(stds: torch.Tensor, trainable: int, scale: float | None = None) -> torch.Tensor:
    """(T,) TempFlow-GRPO's c·σ_t; c = ``scale``, or 1/mean σ over the first ``trainable`` steps."""
    stds = stds.float()
    c = 1.0 / float(stds[:trainable].mean()) if scale is None else float(scale)
    return c * stds


# -- MixGRPO's window -------------------------------------------------------------------------------
def window_start(epoch: int, trainable: int, size: int, stride: int | None, every: int) -> int:
    """l_k = min(⌊k/τ⌋·s, A − w): the first step of the window at epoch k."""
    if not 1 <= size <= trainable:
        raise ValueError(f"sde_window {size} does not fit the {trainable} trainable steps of a trajectory: use 1..{trainable}, or 0 for no window")
    return min((epoch // every) * (stride or size), trainable - size)


@register_algorithm("grpo", "GRPO: group-relative advantages, PPO-clipped denoising steps (Flow-GRPO, DanceGRPO, MixGRPO options)")
class GRPO(Algorithm):
    Config = GRPOConfig
    card = AlgoCard(
        objective="PPO clip on per-step ratios, group-normalised final reward; optional mean-space KL, SDE window, noise weights, DPPO mask or GRPO-Guard",
        reward="scalar, or several (weighted sum, or GDPO)",
        needs="log-probs (+ reference if kl_beta > 0)",
        paper="Liu et al. 2025, arXiv 2505.05470 (Flow-GRPO); Xue et al. 2025, arXiv 2505.07818 (DanceGRPO)",
        code="yifan123/flow_grpo, XueZeyue/DanceGRPO",
        defaults=("clip_range", "adv_clip", "advantage_std", "kl_beta"),
    )
    _ctx = None

    def __init__(self, config=None):
        super().__init__(config)
        c = self.config
        if c.sde_window and c.num_steps:  # a window that does not fit fails now, not at the first rollout
            window_start(0, self.action_steps(c.num_steps), c.sde_window, c.sde_window_stride, c.sde_window_every)

    @property
    def needs_reference(self) -> bool:
        return self.config.kl_beta > 0

    @property
    def needs_means(self) -> bool:
        return self.config.kl_beta > 0 or self.config.ratio_guard != "none"

    def setup(self, ctx) -> None:
        self._ctx = ctx  # the window moves with ctx.epoch

    def window(self, num_steps: int, epoch: int | None = None) -> list[int] | None:
        """The sampling-order steps of this epoch's SDE window (None: no window)."""
        c = self.config
        if not c.sde_window:
            return None
        epoch = (self._ctx.epoch if self._ctx is not None else 0) if epoch is None else epoch
        start = window_start(epoch, self.action_steps(num_steps), c.sde_window, c.sde_window_stride, c.sde_window_every)
        return list(range(start, start + c.sde_window))

    def sampling_eta(self, num_steps: int) -> float | list[float]:
        steps = self.window(num_steps)
        if steps is None:
            return self.config.eta
        return [self.config.eta if i in steps else 0.0 for i in range(num_steps)]

    def advantages(self, rollout) -> EpochData:
        c, traj = self.config, rollout.traj
        if c.reward_aggregation == "gdpo":
            adv = gdpo_advantages(rollout.final_components, rollout.component_weights, c.group_size, rollout.gather)
        else:
            adv = group_advantages(rollout.final_rewards, c.group_size, c.advantage_std, rollout.gather)
        extra = {"stds": traj.stds, "old_means": traj.means}
        if c.ratio_guard == "guard":
            extra["guard_weights"] = 1.0 / traj.eps_coefs.abs()  # GRPO-Guard's per-step reweighting, 1/|∂μ/∂ε̂|
        if c.noise_weighting:
            extra["weights"] = noise_weights(traj.stds, self.action_steps(traj.num_steps), c.noise_weight_scale)
        adv = self.clip_advantages(adv)
        return EpochData(advantages=adv[:, None].expand(-1, traj.num_steps).contiguous(), extra=extra)

    def plan(self, batch_size: int, num_steps: int, generator: np.random.Generator) -> list[Items]:
        """All trained steps of train_batch_size × accumulation images per update, each item a
        group at one step (M, G, 1): DDPO's plan, or the window's steps (MixGRPO)."""
        steps = self.window(num_steps)
        if steps is None:
            return self.all_steps_plan(batch_size, num_steps, generator)
        g, cols = self.config.group_size, torch.as_tensor(steps)
        order = generator.permutation(batch_size // g)

        def items(chosen: torch.Tensor) -> Items:
            rows = group_rows(chosen.repeat_interleave(len(cols)), g)[..., None]
            return Items(rows, cols.repeat(len(chosen))[:, None, None].expand(-1, g, 1).contiguous())

        return self.updates(order, items)

    def loss(self, items: Items, new_logp, old_logp, data: EpochData, new_means=None):
        c = self.config
        adv = data.advantages[items.rows, items.steps]  # (M, G, K)
        std = data.extra["stds"].to(new_logp.device)[items.steps] if self.needs_means else None
        old_means = data.extra["old_means"][items.rows, items.steps].to(new_logp.device) if c.ratio_guard != "none" else None
        log_ratio, info = new_logp - old_logp, {}
        if c.ratio_guard == "guard":  # RatioNorm: re-centred by b_t, scaled by σ_t
            bias = mean_kl(new_means, old_means, std)
            log_ratio = (log_ratio + bias) * std
            info["ratio_bias"] = bias.detach().flatten(1).mean(1)
        ratio = torch.exp(log_ratio)
        info["clipfrac"] = ((ratio - 1).abs() > c.clip_range).float().flatten(1).mean(1)
        if c.ratio_guard == "dppo":
            masked = dppo_mask(mean_kl(new_means.detach(), old_means, std), adv, ratio.detach(), c.dppo_threshold)
            policy = -adv * ratio * (~masked)
            info["masked"] = masked.float().flatten(1).mean(1)
        else:
            policy = clipped_surrogate(adv, ratio, c.clip_range)
        if c.ratio_guard == "guard":
            policy = policy * data.extra["guard_weights"].to(policy.device)[items.steps]
        if c.noise_weighting:
            policy = policy * data.extra["weights"].to(policy.device)[items.steps]
        per_step = policy
        if c.kl_beta > 0:
            kl = mean_kl(new_means, data.ref_means[items.rows, items.steps], std)
            per_step = per_step + c.kl_beta * kl
            info["kl_ref"] = kl.detach().flatten(1).mean(1)
        return per_step.flatten(1).mean(1), info
