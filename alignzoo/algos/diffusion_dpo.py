"""Online Diffusion-DPO (Wallace et al. 2023, "Diffusion Model Alignment Using Direct Preference
Optimization", arXiv 2311.12908, CVPR 2024), on the model's own samples ranked by the reward.

Each epoch samples G images per prompt (``group_size``); the best and the worst of a group by
reward form the pair (x^w_0, x^l_0) (ties: the lowest index among equal rewards; a group whose
rewards are all equal is a tie, loss log 2 and no gradient). Each clean sample — the sampler's
final latent, the x̂0 the reward scored — is re-noised at one timestep t with one noise ε shared by
the pair (the released code's ``timesteps.chunk(2)[0].repeat(2)``, ``noise.chunk(2)[0].repeat``),
x^*_t = √ᾱ_t·x^*_0 + √(1−ᾱ_t)·ε, and the loss is the paper's final objective (§4, eq. 14):

    L(θ) = −log σ( −β T ω(λ_t) · [ ‖ε − ε_θ(x^w_t, t)‖² − ‖ε − ε_ref(x^w_t, t)‖²
                                  − (‖ε − ε_θ(x^l_t, t)‖² − ‖ε − ε_ref(x^l_t, t)‖²) ] )

with the released code's constants: ‖·‖² the per-element mean, T·ω(λ_t) = 1/2 (``scale_term =
−0.5·beta_dpo``), t ~ U{0, …, 999}; β = 5000 there, 500 here (below). ε_ref is the same UNet with
its LoRA disabled (``model.reference()``, one UNet in memory); ε_θ is the conditional prediction
(no classifier-free guidance; LCM: the UNet's ε output with its w-embedding). The method reads no log-probabilities
(the rollouts' DDIM η only adds diversity within a group) and trains on the clean samples, not on
the transitions: it drives its own updates (``update_epoch`` through the TrainerContext).

``is_turbo`` (distilled models): t is drawn uniformly from the model's own N-step sampling schedule
(``turbo_steps``, default the run's num_steps) instead of U{0, …, 999}, as the released code does
for SDXL-Turbo (t = 250·k + 249, k ∈ {0, 1, 2, 3}: the 4-step trailing schedule); PSO (arXiv
2410.03190) likewise keeps distilled models on the timesteps they sample with. Runs on the sd and
lcm kernels (tiny-lcm-v2, tiny_preference, 384 images: +0.47 ± 0.05 with uniform t, +0.51 ± 0.07
with ``is_turbo``, one seed).

Compute (the zoo's equal updates): an update reads the groups of train_batch_size ×
gradient_accumulation_steps images (2 groups of 4 at 8 images per update), i.e. one pair per group,
2 UNet rows with gradient and 2 without (the reference) per pair and noise draw. Defaults (the tiny
world; the paper and code in brackets): β 500 [5000: on tiny-sd-v2 (tiny_preference, 384 images,
one seed) β/2 times the error differences saturated the sigmoid (gradient norms 100–280 before
clipping) and the random-reward control drifted +0.16 ± 0.02; gains at β 50, 500, 2000, 5000:
+0.59, +0.60, +0.57, +0.51 (± 0.05), the control at 500: −0.04 ± 0.03], G 4 (our choice; the
paper trains on the offline Pick-a-Pic pairs), independent x_T per image (``shared_noise=False``:
like the offline pairs, different images), lr from the suite [1e-8 × effective batch 2048]. The
code's ``proportion_empty_prompts`` 0.2 (prompt dropout for classifier-free guidance) is not used:
an online pair is ranked for its prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from alignzoo.algos.base import AlgoConfig, Algorithm, Items, group_rows, register_algorithm
from alignzoo.algos.cards import AlgoCard
from alignzoo.models.sampling import noised


@dataclass
class DiffusionDPOConfig(AlgoConfig):
    learning_rate: float = 1e-4  # the tiny suites' lr [code: 1e-8 × 2048 with --scale_lr]
    group_size: int = 4  # G images per prompt; the pair is the group's best and worst
    shared_noise: bool = False  # independent x_T per image (the paper's pairs are independent images)
    beta: float = 500.0  # β of eq. 14 (beta_dpo), with T·ω(λ_t) = 1/2 [paper and code: 5000]
    is_turbo: bool = False  # t from the model's sampling schedule (distilled models), not U{0..999}
    turbo_steps: int | None = None  # the schedule's length for is_turbo; None: the run's num_steps
    noise_draws: int = 1  # (t, ε) draws per pair in each update (the paper: 1)
    adv_clip: float | None = None  # unused: only the order within a group counts

    def validate(self) -> None:
        if self.group_size < 2:
            raise ValueError(f"diffusion-dpo ranks a pair within each group: group_size must be >= 2, got {self.group_size}")
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if self.noise_draws < 1 or (self.turbo_steps is not None and self.turbo_steps < 1):
            raise ValueError(f"noise_draws and turbo_steps must be >= 1, got {self.noise_draws} and {self.turbo_steps}")


def best_and_worst(rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(winner, loser, tie) per group of ``rewards`` (n, G): the first index of the group's highest
    and the first of its lowest reward, and whether all G rewards are equal (then winner = loser)."""
    hi, lo = rewards.max(1, keepdim=True).values, rewards.min(1, keepdim=True).values
    winner = (rewards == hi).float().argmax(1)  # argmax of a 0/1 row: its first 1
    loser = (rewards == lo).float().argmax(1)
    return winner, loser, (hi == lo)[:, 0]


def diffusion_dpo_loss(err_w, err_l, ref_err_w, ref_err_l, beta: float, tie: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair loss and logit of eq. 14, from the per-element mean squared errors ‖ε − ε_·(x_t, t)‖²
    of the policy and the reference: −log σ(−β/2 · [(e_w − e_w^ref) − (e_l − e_l^ref)]). Ties
    (``tie`` True) get logit 0: loss log 2, no gradient."""
    logit = -0.5 * beta * ((err_w - ref_err_w) - (err_l - ref_err_l))
    if tie is not None:
        logit = torch.where(tie, torch.zeros_like(logit), logit)
    return -F.logsigmoid(logit), logit


def noise_errors(model, latents: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """‖ε − ε_θ(x_t, t)‖² and ‖ε − ε_ref(x_t, t)‖² (per-element means, (N,)) of clean ``latents``
    re-noised to x_t = √ᾱ_t·x_0 + √(1−ᾱ_t)·ε: the policy with gradient, the reference (LoRA
    disabled) without. Conditional predictions only (no guidance batch)."""
    x_t = noised(model, latents, t, noise)
    eps = model.predict_noise(x_t, t, embeds, None)[0]
    with torch.no_grad(), model.reference():
        ref = model.predict_noise(x_t, t, embeds, None)[0]
    mse = lambda e: ((noise - e.float()) ** 2).flatten(1).mean(1)  # noqa: E731
    return mse(eps), mse(ref.detach())


@register_algorithm("diffusion-dpo", "Diffusion-DPO online: DPO on re-noised best/worst samples of each group against the pretrained model (Wallace et al.)")
class DiffusionDPO(Algorithm):
    Config = DiffusionDPOConfig
    needs_log_probs = False  # trains on clean samples: any solver, eta = 0 included
    card = AlgoCard(
        objective="online Diffusion-DPO: best vs worst image of each group, re-noised at a shared (t, ε), against the pretrained model",
        reward="scalar (only its ranking within a group)",
        needs="clean samples + reference forwards (no log-probs)",
        paper="Wallace et al. 2023, arXiv 2311.12908",
        code="SalesforceAIResearch/DiffusionDPO",
        defaults=("beta", "is_turbo"),
    )

    def __init__(self, config=None):
        super().__init__(config)
        self.config.validate()
        self.rng = None

    def setup(self, ctx) -> None:
        self.units_per_update()  # the one-line error now if an update's images do not split into whole groups
        self.rng = np.random.default_rng([ctx.seed, 2311, 12908])  # the same on every process: plans and (t, ε) draws

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state} if self.rng is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.rng.bit_generator.state = state["rng"]

    # -- compute: the updates' groups -----------------------------------------------------------
    def plan(self, batch_size: int, num_steps: int, generator: np.random.Generator) -> list[Items]:
        """Shuffled groups, train_batch_size × gradient_accumulation_steps images per update; an
        item is one group (M, G, 1) (its pair is chosen from it; the step index is unused)."""
        order = generator.permutation(batch_size // self.config.group_size)
        g = self.config.group_size
        return self.updates(order, lambda groups: Items(group_rows(groups, g)[..., None], torch.zeros(len(groups), g, 1, dtype=torch.long)))

    def training_unet_evals(self, num_steps: int, cfg: bool = False) -> float:
        # pair_step's count: the G images of a group give one pair, each of its two images
        # re-noised noise_draws times, a forward with gradient and one of the reference per
        # re-noising; conditional only (no guidance batch), num_inner_epochs passes over the groups
        c = self.config
        return c.num_inner_epochs * 4 * c.noise_draws / c.group_size

    def timesteps(self, ctx, n: int) -> torch.Tensor:
        """n training timesteps: U{0, …, 999}, or (``is_turbo``) uniform over the N-step schedule."""
        c, model = self.config, ctx.model
        if not c.is_turbo:
            return torch.as_tensor(self.rng.integers(0, model.num_train_timesteps, size=n), device=ctx.device)
        schedule = model.timesteps(c.turbo_steps or ctx.num_steps).to(ctx.device)
        return schedule[torch.as_tensor(self.rng.integers(0, len(schedule), size=n), device=ctx.device)]

    # -- the epoch ------------------------------------------------------------------------------
    def update_epoch(self, ctx, rollout) -> dict:
        """One optimiser step per planned update on the pairs of its groups (module docstring)."""
        g, traj = self.config.group_size, rollout.traj
        winner, loser, tie = best_and_worst(rollout.final_rewards.view(-1, g))
        stats: dict[str, list[float]] = {"tie": tie.float().tolist()}
        for _ in range(self.config.num_inner_epochs):  # passes over the epoch's pairs, as the trainer's loop
            for items in self.plan(traj.batch_size, traj.num_steps, self.rng):
                groups = items.rows[:, 0, 0] // g
                for k, v in self.pair_step(ctx, traj, groups * g + winner[groups], groups * g + loser[groups], tie[groups]).items():
                    stats.setdefault(k, []).append(v)
        return {k: float(np.mean(v)) for k, v in stats.items()}

    def pair_step(self, ctx, traj, rows_w: torch.Tensor, rows_l: torch.Tensor, tie: torch.Tensor) -> dict:
        """One optimiser step of eq. 14 on n pairs, ``noise_draws`` (t, ε) draws each: the draws are
        global (every process draws all of them, then takes its own), the pair shares each."""
        n, d = len(rows_w), self.config.noise_draws
        model, shape = ctx.model, traj.final.shape[1:]
        t = ctx.local(self.timesteps(ctx, n * d * ctx.world), n * d)
        noise = ctx.local(torch.as_tensor(self.rng.standard_normal((n * d * ctx.world, *shape)), dtype=torch.float32), n * d).to(ctx.device)
        rows = torch.cat([rows_w.repeat(d), rows_l.repeat(d)])
        latents = traj.final[rows].to(ctx.device).float()
        embeds = traj.prompt_embeds[rows].to(ctx.device)
        ctx.zero_grad()
        with ctx.autocast():
            err, ref = noise_errors(model, latents, torch.cat([t, t]), torch.cat([noise, noise]), embeds)
        loss, logit = diffusion_dpo_loss(*err.float().chunk(2), *ref.float().chunk(2), self.config.beta, tie.to(ctx.device).repeat(d))
        loss.mean().backward()
        k = 2 * n * d  # UNet rows with gradient, and as many for the reference (no guidance batch: not doubled)
        ctx.count(unet_forward=2 * k, unet_evals_training=2 * k, unet_backward=k)
        grad_norm = ctx.optimizer_step()
        out = {
            "loss": float(loss.detach().mean()),
            "implicit_acc": float((logit.detach() > 0).float().mean()),
            "model_mse": float(err.detach().mean()),
            "ref_mse": float(ref.mean()),
        }
        if grad_norm is not None:
            out["grad_norm"] = grad_norm
        return out
