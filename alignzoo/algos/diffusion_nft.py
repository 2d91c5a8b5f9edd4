"""DiffusionNFT: negative-aware fine-tuning on the forward process (Zheng et al., arXiv 2509.16117).

No log-probs, no reverse-process MDP: the sampler (any solver; deterministic DDIM, eta = 0, is the
default) only supplies clean samples x0 of the sampling ("old") policy π_old, G per prompt with
independent x_T, and their rewards. Each x0 is re-noised and the model regresses on it.

**The paper's objective** (flow matching, time t ∈ [0, 1]; x_t = (1 − t)·x0 + t·ε, v = ε − x0):

    L(θ) = E_{c, x0 ~ π_old, t, ε} [ r·‖v⁺_θ(x_t, c, t) − v‖² + (1 − r)·‖v⁻_θ(x_t, c, t) − v‖² ]
    v⁺_θ = (1 − β)·v_old + β·v_θ          (implicit positive policy)
    v⁻_θ = (1 + β)·v_old − β·v_θ          (implicit negative policy)
    r = clip(A / (2·A_max) + 0.5, 0, 1)   (optimality probability of x0; A its advantage)

with A = (R − mean of the prompt's rewards in the epoch) / (std of all the epoch's rewards + 1e-4)
(``adv_std = "global"``, the released code's global_std; "group": the prompt's own std), over
every process's samples. The optimum moves v_old towards the flow of the reward-weighted
("positive") samples, by a step ∝ 2/β (the paper's policy-improvement result).

**Our models are VP, ε-prediction** (DDPM): x_t = α_t·x0 + σ_t·ε with α_t = √ᾱ_t, σ_t = √(1 − ᾱ_t);
the UNet gives ε̂_θ and x̂0_θ = (x_t − σ_t·ε̂_θ) / α_t. Derivation of the loss in the paper's terms:

1. Dividing by α_t + σ_t maps the VP path onto the paper's path: z = x_t / (α_t + σ_t) = (1 − s)·x0
   + s·ε with s = σ_t / (α_t + σ_t). So (z, s) is the paper's (x_t, t), its target is v = ε − x0 =
   (z − x0)/s, and an ε-network defines the paper's velocity v_θ = ε̂_θ − x̂0_θ = (z − x̂0_θ)/s
   (:func:`flow_velocity`; e.g. ᾱ = 1/2: s = 1/2, z = x_t/√2, v_θ = 2·(z − x̂0_θ)).
2. At fixed (x_t, t) the maps ε̂ ↦ x̂0 ↦ v are affine and v⁺, v⁻ are affine combinations whose
   weights sum to one, so combining velocities, noises or clean predictions is the same thing:
   x0⁺ = (1 − β)·x̂0_old + β·x̂0_θ, x0⁻ = (1 + β)·x̂0_old − β·x̂0_θ, and v^± = (z − x0^±)/s.
3. Hence v^± − v = −(x0^± − x0)/s = ((α_t + σ_t)/α_t)·(ε^± − ε): the paper's loss is an x0
   regression with time weight 1/s². The released code (scripts/train_nft_sd3.py) trains this x0
   form with an adaptive weight instead of 1/s², scaled by A_max/β; we train (mean over latent dims)

       ℓ = (A_max/β)·[ r·‖x0⁺ − x0‖²/w⁺ + (1 − r)·‖x0⁻ − x0‖²/w⁻ ],  w^± = sg(mean|x0^± − x0|)   ("adaptive")
       ℓ = (A_max/β)·[ r·‖v⁺ − v‖² + (1 − r)·‖v⁻ − v‖² ]                                     ("velocity": the equation)

   plus ``kl_weight``·‖v_θ − v_ref‖² (v_ref: the LoRA disabled; the code's train.beta = 1e-4).
4. At θ = θ_old (x0⁺ = x0⁻ = x̂0_old, w⁺ = w⁻ = w): ℓ = (A_max/β)·‖x̂0_old − x0‖²/w and
   ∂ℓ/∂x̂0_θ = 2·A·(x̂0_old − x0)/(w·D) for |A| ≤ A_max (D latent dims): the advantage-weighted
   denoising gradient, β-free; with zero-mean advantages the plain (blurring) regression cancels.

LCM: the consistency output f_θ = c_out·x̂0(ε̂_θ) + c_skip·x_t is affine in ε̂_θ too, so 2–4 hold
with f_θ as the clean prediction (c_skip < 1e-5 at the LCM's timesteps, f_θ ≈ x̂0). CFG-free: every
forward is conditional only, as the paper samples and trains at guidance 1; an SD model sampling
with guidance > 1 is refused. Step-distilled models: the maintainer says NFT does not support them
(DiffusionNFT#45: blur); by step 4 a group's zero-mean advantages keep the plain regression towards
E[x0 | x_t] (the blur) out of the first-order update, but not out of the later, off-policy ones.

**Timesteps**: the sampler's own N timesteps, ⌊N·timestep_fraction⌋ distinct ones per image (the
code's 0.99: 9 of 10; 3 of T = 4), fresh ε each time. A few-step model is only ever evaluated
there; training other noise levels would spend the LoRA where the sampler never goes.

**Old policy** (code: a second LoRA adapter "old"): every rollout samples with it, v_old is its
prediction, and after each epoch old ← d·old + (1 − d)·θ, d = min(old_decay_rate·i, old_decay_max)
with i the optimiser steps so far (decay_type 1: 0.001·i capped at 0.5). d = 0 is on-policy: v_old
is the adapter as it was at rollout time. One UNet in memory: the old weights are a copy of the
LoRA tensors, swapped in for the rollout (``sampling_policy``) and each v_old forward.
Defaults: the paper's β = 1, A_max = 5, fraction 0.99, decay schedule, global std; G = 8 (paper 24),
lr 1e-4 (paper 3e-4), LoRA r 8 (paper r 32/α 64), KL 0 (paper 1e-4: negligible next to the A_max/β
scaled loss here, and it costs a forward), 8 images per update (paper: one step per epoch).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch

from alignzoo.algos.base import AlgoConfig, Algorithm, Items, group_rows, register_algorithm, shuffled_step_columns
from alignzoo.algos.cards import AlgoCard
from alignzoo.models.sampling import noised

ADV_STDS = ("global", "group")
WEIGHTINGS = ("adaptive", "velocity")


@dataclass
class DiffusionNFTConfig(AlgoConfig):
    """Paper values (config/base.py, config/nft.py of NVlabs/DiffusionNFT) unless marked [tiny]."""

    eta: float = 0.0  # deterministic DDIM rollouts (the paper: deterministic "dpm2", guidance 1)
    samples_per_epoch: int = 64  # [tiny] (paper 48 groups × 24)
    group_size: int = 8  # G images per prompt [tiny] (paper 24)
    shared_noise: bool = False  # each image its own x_T (the paper; at eta = 0 a shared x_T repeats one image)
    train_batch_size: int = 8  # [tiny] images per update (paper: the whole epoch in one step)
    learning_rate: float = 1e-4  # [tiny] (paper 3e-4)
    lora_rank: int = 8  # [tiny] (paper 32, alpha 64)
    timestep_fraction: float = 0.99  # ⌊N·fraction⌋ of the sampler's N timesteps per image
    adv_clip: float | None = 5.0  # A_max: advantages clipped to ±A_max, r = clip(A/(2·A_max) + 0.5, 0, 1)
    beta: float = 1.0  # β of the implicit policies (paper 1; 0.1 for OCR and multi-reward)
    adv_std: str = "global"  # "global": the epoch's reward std (the code's global_std) | "group": the prompt's
    loss_weighting: str = "adaptive"  # "adaptive": the code's x0 loss / sg(mean|error|) | "velocity": the equation
    kl_weight: float = 0.0  # ‖v_θ − v_ref‖² weight (paper 1e-4; 0 skips the reference forward)
    old_decay_rate: float = 0.001  # d = min(rate·optimiser steps, max): the old policy's EMA decay
    old_decay_max: float = 0.5

    def validate(self) -> None:
        for name, value, allowed in (("adv_std", self.adv_std, ADV_STDS), ("loss_weighting", self.loss_weighting, WEIGHTINGS)):
            if value not in allowed:
                raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")
        if self.adv_clip is None or not self.adv_clip > 0:
            raise ValueError(f"adv_clip is DiffusionNFT's A_max and must be a number > 0, got {self.adv_clip!r}")
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0 (the implicit policies' step), got {self.beta!r}")
        if not (self.kl_weight >= 0 and self.old_decay_rate >= 0 and 0 <= self.old_decay_max < 1):
            raise ValueError("kl_weight and old_decay_rate must be >= 0 and old_decay_max in [0, 1)")
        if self.group_size < 2:
            raise ValueError("group_size must be >= 2: DiffusionNFT's advantages are relative to the prompt's group")


# ------------------------------------------------------------------------------ the math (pure)
def optimality(adv: torch.Tensor, a_max: float) -> torch.Tensor:
    """r = clip(A/(2·A_max) + 0.5, 0, 1): −A_max → 0, 0 → ½, +A_max → 1."""
    return (adv / (2 * a_max) + 0.5).clamp(0, 1)


def group_advantages(rewards: np.ndarray, prompts: list[str], global_std: bool = True, eps: float = 1e-4) -> np.ndarray:
    """(R − the prompt's mean) / (std + eps), std over all rewards (global) or the prompt's."""
    rewards = np.asarray(rewards, dtype=np.float64)
    keys = np.asarray(prompts, dtype=object)
    out = np.empty_like(rewards)
    for p in dict.fromkeys(prompts):
        idx = keys == p
        std = rewards.std() if global_std else rewards[idx].std()
        out[idx] = (rewards[idx] - rewards[idx].mean()) / (std + eps)
    return out


def flow_velocity(x_t: torch.Tensor, x0: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """The paper's velocity of clean prediction ``x0`` at the VP state x_t (docstring, step 1):
    (z − x0)/s with z = x_t/(α + σ), s = σ/(α + σ); = ε − x0 when x_t = α·x0 + σ·ε."""
    a = alpha_bar.reshape(-1, *[1] * (x_t.ndim - 1))
    alpha, sigma = a.sqrt(), (1 - a).sqrt()
    return (x_t / (alpha + sigma) - x0) / (sigma / (alpha + sigma))


def _mean(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).mean(1)


def nft_loss(x0_theta, x0_old, x0, x_t, alpha_bar, r, beta: float, a_max: float, weighting: str = "adaptive") -> tuple[torch.Tensor, dict]:
    """Per-sample DiffusionNFT loss (N,) from clean predictions (N, C, h, w) of θ and the old policy
    at x_t, the sample x0, ᾱ_t (N,) and optimality r (N,); the docstring's step 3."""
    old = x0_old.detach()
    pos, neg = beta * x0_theta + (1 - beta) * old, (1 + beta) * old - beta * x0_theta
    if weighting == "adaptive":
        branch = [_mean((p - x0) ** 2) / _mean((p - x0).abs()).detach().clamp(min=1e-5) for p in (pos, neg)]
    elif weighting == "velocity":
        v = flow_velocity(x_t, x0, alpha_bar)
        branch = [_mean((flow_velocity(x_t, p, alpha_bar) - v) ** 2) for p in (pos, neg)]
    else:
        raise ValueError(f"unknown loss_weighting {weighting!r}; choose one of {', '.join(WEIGHTINGS)}")
    loss = a_max * (r * branch[0] + (1 - r) * branch[1]) / beta
    return loss, {"old_deviation": _mean((x0_theta.detach() - old) ** 2)}


# ------------------------------------------------------------------------------ the algorithm
@register_algorithm("diffusion-nft", "DiffusionNFT: implicit positive/negative policies trained on the forward process of clean samples (Zheng et al.)")
class DiffusionNFT(Algorithm):
    Config = DiffusionNFTConfig
    needs_log_probs = False  # any solver, eta = 0 included
    card = AlgoCard(
        objective="flow matching on re-noised clean samples: implicit positive/negative policies weighted by r = clip(A/(2·A_max) + ½, 0, 1)",
        reward="scalar",
        needs="clean samples + an old-policy forward (no log-probs, any solver)",
        paper="Zheng et al., ICLR 2026, arXiv 2509.16117",
        code="NVlabs/DiffusionNFT",
        defaults=("beta", "adv_clip", "loss_weighting", "old_decay_max"),
    )

    def __init__(self, config=None):
        super().__init__(config)
        self.config.validate()
        self.old: list[torch.Tensor] | None = None  # the old (sampling) policy's LoRA tensors
        self.steps_done = 0  # optimiser steps so far (the EMA schedule's i)
        self.rng = np.random.default_rng(0)

    def split_over(self, world_size: int) -> None:
        super().split_over(world_size)
        self.units_per_update()  # the plan cuts updates of whole groups: check they divide now

    def noise_levels(self, num_steps: int) -> int:
        """K: how many of the sampler's timesteps each image is re-noised to per epoch."""
        return max(1, int(num_steps * self.config.timestep_fraction))

    def training_unet_evals(self, num_steps: int, cfg: bool = False) -> float:
        # rows_loss's count: each image re-noised to K timesteps per pass, each an old-policy
        # forward, one with gradient and, with kl_weight, the reference's (CFG-free: setup refuses it)
        c = self.config
        return c.num_inner_epochs * self.noise_levels(num_steps) * (3 if c.kl_weight > 0 else 2)

    def plan(self, batch_size: int, num_steps: int, generator: np.random.Generator) -> list[Items]:
        """Shuffled groups, train_batch_size × gradient_accumulation_steps images per update; item
        (group, g, k) reads row p·G + g at the k-th of its K distinct timestep indices (sampling
        order: index i is the sampler's timesteps[i]), drawn per image."""
        g, k = self.config.group_size, self.noise_levels(num_steps)
        order = generator.permutation(batch_size // g)
        cols = torch.as_tensor(shuffled_step_columns(batch_size, num_steps, k, generator))

        def items(chosen: torch.Tensor) -> Items:
            rows = group_rows(chosen, g)
            return Items(rows[..., None].expand(-1, -1, k).contiguous(), cols[rows])

        return self.updates(order, items)

    # -- setup, state, the old policy ----------------------------------------------------------
    def setup(self, ctx) -> None:
        model, c = ctx.model, self.config
        if model.uses_cfg:
            raise ValueError(
                f"diffusion-nft is CFG-free (the paper samples and trains at guidance 1): this model samples with "
                f"guidance_scale {model.guidance_scale}; load it with guidance_scale=1"
            )
        if model.kind == "sd" and c.eta == 0 and c.shared_noise:
            raise ValueError("deterministic rollouts (eta = 0) from a shared x_T give G identical images: set shared_noise=false")
        self.old = [p.detach().clone() for p in model.trainable_parameters()]
        self.steps_done = 0
        self.rng = np.random.default_rng([ctx.seed, 4117, ctx.rank])  # forward noise and plans, this process's

    def state_dict(self) -> dict:
        if self.old is None:
            return {}
        return {"old": [t.cpu().clone() for t in self.old], "steps_done": self.steps_done, "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        if len(state["old"]) != len(self.old) or any(a.shape != b.shape for a, b in zip(state["old"], self.old)):
            raise ValueError("diffusion-nft checkpoint: its old-policy LoRA does not match this model's adapter")
        self.old = [t.to(o.device, o.dtype) for t, o in zip(state["old"], self.old)]
        self.steps_done = int(state["steps_done"])
        self.rng.bit_generator.state = state["rng"]

    def replicated_parameters(self) -> list[torch.Tensor]:
        return list(self.old or [])

    @contextlib.contextmanager
    def old_policy(self, model):
        """The LoRA holds the old policy's weights for the duration (live weights restored after)."""
        params = model.trainable_parameters()
        live = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, o in zip(params, self.old):
                p.copy_(o)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, v in zip(params, live):
                    p.copy_(v)

    def sampling_policy(self, ctx):
        """The rollout samples the old policy (the trainer enters this context around it)."""
        return self.old_policy(ctx.model) if self.old is not None else contextlib.nullcontext()

    def old_decay(self) -> float:
        return min(self.config.old_decay_rate * self.steps_done, self.config.old_decay_max)

    def update_old(self, model) -> float:
        """old ← d·old + (1 − d)·θ after the epoch's updates; returns d."""
        decay = self.old_decay()
        with torch.no_grad():
            for o, p in zip(self.old, model.trainable_parameters()):
                o.mul_(decay).add_(p.detach(), alpha=1 - decay)
        return decay

    # -- the epoch -----------------------------------------------------------------------------
    def advantages_of(self, ctx, rollout) -> torch.Tensor:
        """(B,) advantages of this process's samples from every process's rewards, clipped to ±A_max."""
        values, prompts, local = ctx.gather(rollout.final_rewards, rollout.traj.prompts)
        adv = group_advantages(values.numpy(), prompts, self.config.adv_std == "global")[local]
        return torch.as_tensor(adv, dtype=torch.float32).clamp(-self.config.adv_clip, self.config.adv_clip)

    def update_epoch(self, ctx, rollout) -> dict:
        traj, c = rollout.traj, self.config
        adv = self.advantages_of(ctx, rollout)
        r = optimality(adv, c.adv_clip).to(ctx.device)
        stats: dict[str, list[float]] = {}
        for _ in range(c.num_inner_epochs):
            for items in self.plan(traj.batch_size, traj.num_steps, self.rng):
                for k, v in self.update(ctx, traj, items, r).items():
                    stats.setdefault(k, []).append(v)
        out = {k: float(np.mean(v)) for k, v in stats.items()}
        out.update(old_decay=self.update_old(ctx.model), adv_abs_mean=float(adv.abs().mean()), r_mean=float(r.mean()))
        return out

    def update(self, ctx, traj, items: Items, r: torch.Tensor) -> dict:
        """One optimiser step on the mean loss over the update's (image, timestep) rows, in forwards
        of at most ctx.max_rows_per_forward rows (gradients accumulate)."""
        rows, cols = items.rows.reshape(-1), items.steps.reshape(-1)
        ctx.zero_grad()
        sums: dict[str, float] = {}
        for part in torch.arange(rows.shape[0]).split(ctx.max_rows_per_forward):
            loss, info = self.rows_loss(ctx, traj, rows[part], cols[part], r)
            ctx.backward(loss.sum() / rows.shape[0])
            for k, v in {"loss": loss, **info}.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach().sum())
        grad_norm = ctx.optimizer_step()
        self.steps_done += 1
        out = {k: v / rows.shape[0] for k, v in sums.items()}
        if grad_norm is not None:
            out["grad_norm"] = grad_norm
        return out

    def rows_loss(self, ctx, traj, rows: torch.Tensor, cols: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Per-row loss (n,): sample ``rows`` re-noised to the sampler's timesteps[cols] with fresh ε;
        v_old (no grad, old weights), v_ref (if kl_weight) and v_θ (grad) at the same x_t. Counted."""
        model, c, n = ctx.model, self.config, rows.shape[0]
        x0 = traj.final[rows].to(ctx.device).float()
        t = traj.timesteps.to(ctx.device)[cols.to(ctx.device)]
        a = model.alphas_cumprod[t]
        eps = torch.as_tensor(self.rng.standard_normal(tuple(x0.shape), dtype=np.float32), device=ctx.device)
        x_t = noised(model, x0, t, eps)
        emb = traj.prompt_embeds[rows.to(traj.prompt_embeds.device)].to(ctx.device)
        with torch.no_grad(), ctx.autocast(), self.old_policy(model):
            x0_old = model.predict_noise(x_t, t, emb)[1].float()
        with ctx.autocast():
            x0_theta = model.predict_noise(x_t, t, emb)[1].float()
        loss, info = nft_loss(x0_theta, x0_old, x0, x_t, a, r[rows.to(r.device)], c.beta, c.adv_clip, c.loss_weighting)
        ctx.count(unet=n)  # the old policy's forward
        ctx.count(unet=n, grad=True)
        if c.kl_weight > 0:
            with torch.no_grad(), ctx.autocast(), model.reference():
                x0_ref = model.predict_noise(x_t, t, emb)[1].float()
            ctx.count(unet=n)
            kl = _mean((flow_velocity(x_t, x0_theta, a) - flow_velocity(x_t, x0_ref, a)) ** 2)
            loss, info["kl"] = loss + c.kl_weight * kl, kl.detach()
        return loss, info
