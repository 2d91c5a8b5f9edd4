"""LaSRO: latent-space surrogate reward optimisation for ≤2-step models (Jia et al., arXiv 2411.15247).
The paper's method section could not be read: this module follows /work/shared/LASRO_NOTES.md, and
every constant the notes mark as unverified is a config field ([O] = our choice, tuned on the tiny
world; docs/lasro.md records the tuning). A surrogate R_ψ(z, c) (``alignzoo.models.surrogate``),
fitted by Bradley–Terry to the ranking of the true, possibly non-differentiable reward r on a replay
buffer of scored clean latents (``alignzoo.algos.lasro_preference``), is back-propagated through the
1–2 step sampler into the generator; z1 = the 1-step clean latent x̂0 of the first sampling step
(``pred_x0[:, 0]``), z2 = the final clean latent (``pred_x0[:, -1]``), c the prompt. Stage 1
(``pretrain``) fits R_ψ on the frozen model's samples; stage 2 (``update_epoch``) alternates surrogate
and generator steps. Ablations of the paper (notes §8): ``surrogate_mode`` "online" | "fixed" (no
refits after stage 1), ``objective`` "z1z2" | "z2", ``buffer`` "off_policy" | "on_policy" (the buffer
only holds the newest generator's samples).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from alignzoo.algos.base import AlgoConfig, Algorithm, ComputeException, register_algorithm
from alignzoo.algos.cards import AlgoCard
from alignzoo.algos.lasro_preference import ReplayBuffer, ScoreNormalizer, SurrogateFitting
from alignzoo.models.sampling import Trajectory, noised
from alignzoo.models.surrogate import BACKBONES, build_surrogate

SURROGATE_MODES = ("online", "fixed")
OBJECTIVES = ("z1z2", "z2")
BUFFERS = ("off_policy", "on_policy")
REG_FORMS = ("consistency", "trajectory", "none")


@dataclass
class LaSROConfig(AlgoConfig):
    """Defaults: tuned on the tiny world (tiny-lcm, tiny_alignment; docs/lasro.md). Notes §9a
    gives the GPU-scale values (the ``paper-lcm`` suite's [algo.lasro] table)."""

    num_steps: int | None = 2  # sampling steps of the generator (the paper: 2; z1 is its 1-step output)
    learning_rate: float = 6e-4  # generator LoRA lr [O] (notes §9a: 5e-5 at real scale)
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    group_size: int = 8  # N_s: noises per prompt in every scored batch (rollout and stage 1) [O]
    shared_noise: bool = False  # each of a prompt's N_s samples draws its own x_T
    # surrogate network (notes §2)
    surrogate_backbone: str = "full"  # "full" | "lora" | "frozen": which backbone weights train [O]
    surrogate_lr_backbone: float = 1e-4  # [O] (notes §9a: 1e-5)
    surrogate_lr_head: float = 3e-3  # [O] (notes §9a: 1e-4)
    surrogate_weight_decay: float = 0.0
    surrogate_lora_rank: int = 8  # for surrogate_backbone="lora"
    surrogate_lora_targets: tuple = ("to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2")
    head_channels: tuple = (64, 32)  # (h1, h2) of the conv head [O] (notes: 256, 64)
    head_pool: int = 1  # the head's average pool to head_pool × head_pool cells (1: global) [O]
    surrogate_timestep: int = 0  # t_s fed to the backbone [O]
    surrogate_noise_aug: bool = False  # add forward noise at t_s to buffer latents while fitting [O]
    surrogate_grad_clip: float | None = 1.0
    # Bradley–Terry data (notes §3, §6–7)
    tie_margin: float = 0.005  # pairs need |r_w − r_l| > tie_margin (reward units) [O]
    groups_per_batch: int = 8  # prompt groups per surrogate step, ≤ N_s items each, all their ranked pairs [O]
    buffer_size: int = 4096  # FIFO replay buffer of scored latents (z1 and z2 each count) [O]
    fresh_fraction: float = 0.5  # share of each surrogate batch's groups holding the newest samples [O]
    # stage 1 (notes §4)
    pretrain_prompts: int = 256  # prompts (× N_s noises) sampled from the frozen model, stratified over the set [O]
    heldout_prompts: int = 64  # held-out prompts (× N_s) for the pairwise accuracy [O]
    pretrain_steps: int = 400  # surrogate steps before stage 2 [O] (notes §9a: 3k)
    # stage 2 (notes §5, §7)
    gen_steps: int = 8  # generator steps per epoch [O]
    k_gen: int = 1  # K_gen: generator steps per round [O]
    k_surr: int = 2  # K_surr: surrogate steps before each round of generator steps [O]
    gen_batch_size: int = 32  # prompts (one noise each) per generator step [O]
    gen_warmup_steps: int = 0  # linear warm-up of the generator lr over its first steps [O]
    reward_weight_z1: float = 1.0  # c1 [O]
    reward_weight_z2: float = 1.0  # c2 [O]
    reg_weight: float = 3.0  # c [O]
    reg_form: str = "consistency"  # "consistency" (noised buffer latents) | "trajectory" | "none"
    reg_batch_size: int = 32  # buffer latents per regulariser term [O]
    norm_ema: float = 0.99  # EMA rate of S[·]'s mean and max-deviation statistics [O]
    norm_floor: float = 1e-3  # lower bound of S[·]'s scale m [O]
    norm_clip: float | None = 1.0  # S[·]'s clip; None: no clip [O]
    detach_between_steps: bool = False  # stop ∂R(z2)/∂z2 at the re-noised state between steps [O]
    # ablations (notes §8)
    surrogate_mode: str = "online"  # "online" | "fixed"
    objective: str = "z1z2"  # "z1z2" | "z2"
    buffer: str = "off_policy"  # "off_policy" | "on_policy"
    sample_batch_size: int = 256  # images per no-grad sampling call in stage 1 (memory only)


# ------------------------------------------------------------------------------ the algorithm
@register_algorithm("lasro", "LaSRO: a Bradley–Terry latent surrogate reward, back-propagated through 1–2 sampling steps (Jia et al.)")
class LaSRO(SurrogateFitting, Algorithm):
    Config = LaSROConfig
    card = AlgoCard(
        objective="a Bradley–Terry latent surrogate of the reward, back-propagated through 1–2 sampling steps",
        reward="scalar (only its ranking; need not be differentiable)",
        needs="gradient through the sampler",
        paper="Jia et al., CVPR 2025, arXiv 2411.15247",
        code="—",
        defaults=("surrogate_mode", "objective", "k_gen", "k_surr"),
    )

    def __init__(self, config=None):
        super().__init__(config)
        c = self.config
        for name, value, allowed in (
            ("surrogate_mode", c.surrogate_mode, SURROGATE_MODES),
            ("objective", c.objective, OBJECTIVES),
            ("buffer", c.buffer, BUFFERS),
            ("surrogate_backbone", c.surrogate_backbone, BACKBONES),
            ("reg_form", c.reg_form, REG_FORMS),
        ):
            if value not in allowed:
                raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")
        if c.group_size < 2:
            raise ValueError("group_size (N_s) must be >= 2: Bradley–Terry pairs are formed within a prompt")
        if c.samples_per_epoch % c.group_size:
            raise ValueError(f"samples_per_epoch {c.samples_per_epoch} is not a multiple of group_size (N_s) {c.group_size}")
        if len(tuple(c.head_channels)) != 2:
            raise ValueError("head_channels must name two widths (h1, h2)")
        self.surrogate = None
        self.pretrained = False

    # -- compute: equal in images, not in updates ----------------------------------------------
    def compute_exception(self):
        return ComputeException(
            "lasro-surrogate-steps",
            "gen_steps generator steps per epoch back-propagate a learned surrogate through their own fresh "
            "1–2 step rollouts, alternating K_gen:K_surr with surrogate steps (Jia et al., Fig. 3); equal in images (budget), not updates",
        )

    def update_schedule(self, num_steps, world_size=1, seed=0):
        return [self.config.gen_batch_size * world_size] * self.config.gen_steps  # gen_batch_size is per process

    def images_per_epoch(self, world_size=1):
        return self.config.samples_per_epoch + self.config.gen_steps * self.config.gen_batch_size * world_size

    def images_before_training(self, world_size=1):  # stage 1: _sample_frozen's pretraining and held-out prompts × N_s
        return sum(math.ceil(n / world_size) * world_size * self.config.group_size for n in (self.config.pretrain_prompts, self.config.heldout_prompts))

    def training_unet_evals(self, num_steps: int, cfg: bool = False) -> float:
        # gen_steps generator steps, each gen_batch_size prompts per process sampled with gradient
        # (T calls each) and regulariser()'s calls: the reference at each of their T states
        # ("trajectory"), or the policy and the reference at reg_batch_size buffer latents per
        # process ("consistency"; stage 1 fills the buffer before the first). The surrogate's
        # forwards are not counted as UNet calls; stage 1's samples are sampling.
        c, world = self.config, self.world_size
        reg = 0 if c.reg_form == "none" or c.reg_weight == 0 else c.gen_batch_size * num_steps if c.reg_form == "trajectory" else 2 * c.reg_batch_size
        return c.gen_steps * world * (c.gen_batch_size * num_steps + reg) * (2 if cfg else 1) / c.samples_per_epoch

    def query_steps(self, traj, generator):
        """z1 and z2 of every rollout sample (both train the surrogate): (B, 2), or (B, 1) at T = 1."""
        b, t = traj.batch_size, traj.num_steps
        if t == 1:
            return torch.zeros(b, 1, dtype=torch.long)
        return torch.stack([torch.zeros(b, dtype=torch.long), torch.full((b,), t - 1, dtype=torch.long)], 1)

    # -- setup and state ----------------------------------------------------------------------
    def setup(self, ctx) -> None:
        c = self.config
        seed = ctx.seed
        self.surrogate = build_surrogate(
            ctx.model,
            ctx.device,
            init_seed=seed * 7919 + 11,
            backbone=c.surrogate_backbone,
            head_channels=c.head_channels,
            timestep=c.surrogate_timestep,
            pool=c.head_pool,
            lora_rank=c.surrogate_lora_rank,
            lora_targets=c.surrogate_lora_targets,
        )
        self._trainable = [n for n, p in self.surrogate.named_parameters() if p.requires_grad]
        self.surrogate_optimizer = torch.optim.AdamW(
            self.surrogate.optimizer_groups(c.surrogate_lr_head, c.surrogate_lr_backbone), weight_decay=c.surrogate_weight_decay
        )
        self.buffer = ReplayBuffer(c.buffer_size)
        self.heldout = ReplayBuffer(10**9)
        self.norm = {k: ScoreNormalizer(c.norm_ema, c.norm_floor, c.norm_clip) for k in ("z1", "z2")}
        self.rng = np.random.default_rng([seed, 7, 11])  # the same on every process (the buffer is global)
        self.pretrained = False
        self.counts = {"pretrain_samples": 0, "surrogate_steps": 0, "generator_steps": 0}
        self._embed_cache: dict[str, torch.Tensor] = {}

    def state_dict(self) -> dict:
        if self.surrogate is None:
            return {}
        sd = self.surrogate.state_dict()
        return {
            "surrogate": {n: sd[n].detach().cpu().clone() for n in self._trainable},
            "surrogate_optimizer": self.surrogate_optimizer.state_dict(),
            "buffer": self.buffer.state_dict(),
            "heldout": self.heldout.state_dict(),
            "norm": {k: v.state_dict() for k, v in self.norm.items()},
            "rng": self.rng.bit_generator.state,
            "pretrained": self.pretrained,
            "counts": dict(self.counts),
        }

    def replicated_parameters(self) -> list[torch.Tensor]:
        return [p for p in self.surrogate.parameters() if p.requires_grad] if self.surrogate is not None else []

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        missing = set(self._trainable) - set(state["surrogate"])
        if missing:
            raise ValueError(f"LaSRO checkpoint lacks surrogate weights {sorted(missing)[:3]}: it was written with another surrogate_backbone")
        self.surrogate.load_state_dict(state["surrogate"], strict=False)
        self.surrogate_optimizer.load_state_dict(state["surrogate_optimizer"])
        self.buffer.load_state_dict(state["buffer"])
        self.heldout.load_state_dict(state["heldout"])
        for k, v in state["norm"].items():
            self.norm[k].load_state_dict(v)
        self.rng.bit_generator.state = state["rng"]
        self.pretrained = bool(state["pretrained"])
        self.counts = dict(state["counts"])

    # -- one generator step -------------------------------------------------------------------
    def regulariser(self, ctx, traj: Trajectory) -> torch.Tensor:
        """L_reg (notes §5) = mean ‖f_θ(z_τ, τ, c) − f_θ0(z_τ, τ, c)‖² (per-element mean); f_θ0 = the
        same UNet under ``model.reference()`` (LoRA disabled). ``reg_form`` "consistency": on buffer
        latents noised to a timestep of the sampling schedule; "trajectory": on the generator's own states."""
        c = self.config
        if c.reg_form == "none" or c.reg_weight == 0 or (c.reg_form == "consistency" and len(self.buffer) == 0):
            return torch.zeros((), device=ctx.device)
        return self._trajectory_regulariser(ctx, traj) if c.reg_form == "trajectory" else self._consistency_regulariser(ctx)

    def _trajectory_regulariser(self, ctx, traj: Trajectory) -> torch.Tensor:
        """L_reg at the generator's own sampling states: its x̂0 against the reference's."""
        model = ctx.model
        t = traj.num_steps
        x = traj.latents[:, :t].detach().flatten(0, 1)
        ts = traj.timesteps.repeat(traj.batch_size)
        emb = traj.prompt_embeds.repeat_interleave(t, 0)
        neg = traj.neg_embeds.repeat_interleave(t, 0) if traj.neg_embeds is not None else None
        with torch.no_grad(), model.reference():
            _, ref = model.predict_noise(x, ts, emb, neg)
        ctx.count(unet=x.shape[0])
        return ((traj.pred_x0.flatten(0, 1) - ref.detach()) ** 2).mean()

    def _consistency_regulariser(self, ctx) -> torch.Tensor:
        """L_reg on ``reg_batch_size`` buffer latents z noised to a timestep τ of the sampling
        schedule: z_τ = √ᾱ_τ z + √(1−ᾱ_τ) ε."""
        model, n = ctx.model, self.config.reg_batch_size
        idx = ctx.local(self.rng.integers(0, len(self.buffer), size=n * ctx.world), n)
        z = self.buffer.latents[torch.as_tensor(idx)].to(ctx.device)
        prompts = self.buffer.prompts_of(idx)
        schedule = model.timesteps(ctx.num_steps)
        tau = schedule[torch.as_tensor(self.rng.integers(0, len(schedule), size=n), device=schedule.device)]
        eps = torch.as_tensor(self.rng.standard_normal(z.shape), dtype=torch.float32, device=z.device)
        z_tau = noised(model, z, tau, eps)
        emb = self.embeds(model, prompts)
        neg = model.negative_embeds(n)
        _, f = model.predict_noise(z_tau, tau, emb, neg)
        with torch.no_grad(), model.reference():
            _, f0 = model.predict_noise(z_tau, tau, emb, neg)
        ctx.count(unet=2 * n, unet_backward=n * (2 if model.uses_cfg else 1))  # f with grad, f_θ0 without
        return ((f - f0.detach()) ** 2).mean()

    def generator_step(self, ctx) -> dict:
        """One optimiser step of the generator loss (notes §5) through the differentiable 1–2 step
        sampler, R_ψ frozen but differentiable in z:
            L_gen(θ) = c·L_reg(θ) − c1·S[R_ψ(z1, c)] − c2·S[R_ψ(z2, c)]
        (c = ``reg_weight``, c1 and c2 = ``reward_weight_z1`` and ``_z2``; objective "z2" drops z1)."""
        n = self.config.gen_batch_size
        prompts = ctx.draw_prompts(n)
        s = self.surrogate
        flags = [p.requires_grad for p in s.parameters()]
        s.requires_grad_(False)
        s.eval()
        ctx.zero_grad()
        try:
            with ctx.autocast():
                loss, reg, info = self._generator_loss(ctx, prompts)
            ctx.backward(loss)
        finally:
            for p, f in zip(s.parameters(), flags):
                p.requires_grad_(f)
        grad_norm = self._warmed_up_optimizer_step(ctx)
        self.counts["generator_steps"] += 1
        # "loss" is the generator objective: the ctx logs it (and shows it) as every algorithm's loss
        info.update({"loss": float(loss.detach()), "reg": float(reg.detach())})
        if grad_norm is not None:
            info["grad_norm"] = grad_norm
        return info

    def _generator_loss(self, ctx, prompts) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """L_gen of fresh rollouts of ``prompts``, its L_reg, and the mean surrogate score per term."""
        c, n = self.config, len(prompts)
        traj = ctx.sample(prompts, c.eta, grad=True, detach_between_steps=c.detach_between_steps)
        ctx.count(samples=n, unet=n * traj.num_steps, grad=True)  # the generator's own rollouts count as samples
        enc = self.embeds(ctx.model, prompts)
        terms = {"z2": (traj.pred_x0[:, -1], c.reward_weight_z2)}
        if c.objective == "z1z2" and traj.num_steps > 1:
            terms["z1"] = (traj.pred_x0[:, 0], c.reward_weight_z1)
        reward_term = 0.0
        info = {}
        for key, (z, weight) in terms.items():
            r = self.surrogate(z, enc)
            reward_term = reward_term + weight * self.norm[key](r).mean()
            info[f"surr_gen_{key}"] = float(r.detach().mean())
        reg = self.regulariser(ctx, traj)
        return c.reg_weight * reg - reward_term, reg, info

    def _warmed_up_optimizer_step(self, ctx):
        """The optimiser step with the lr scaled by a linear warm-up over the first
        ``gen_warmup_steps`` generator steps (the scale is per step)."""
        c = self.config
        warm = min(1.0, (self.counts["generator_steps"] + 1) / c.gen_warmup_steps) if c.gen_warmup_steps > 0 else 1.0
        return ctx.optimizer_step(lr_scale=warm)

    # -- the epoch ----------------------------------------------------------------------------
    def update_epoch(self, ctx, rollout) -> dict:
        """Online adaptation (notes §6–7): the ctx's rollout (N_s noises per prompt, from the
        current generator), scored at z1 and z2, is pushed into the FIFO replay buffer; the epoch then
        alternates ``k_surr`` surrogate steps (a ``fresh_fraction`` of groups from the newest samples,
        the rest replayed) with ``k_gen`` generator steps, ``gen_steps`` generator steps in all."""
        c = self.config
        stats: dict[str, list[float]] = {}
        add = lambda d: [stats.setdefault(k, []).append(v) for k, v in d.items()]  # noqa: E731
        if not self.pretrained:  # stage 1, lazily on the first epoch
            add(self.pretrain(ctx))
        version = ctx.epoch + 1
        lat, vals, prompts, kinds = self._gather_scored(ctx, rollout.traj, *rollout.flat())
        stats.update(self._rollout_stats(ctx, lat, vals, prompts, kinds, version))
        if c.surrogate_mode == "online":
            if c.buffer == "on_policy":
                self.buffer.clear()
            self.buffer.push(lat, vals, prompts, kinds, version)
        for done in range(0, c.gen_steps, max(1, c.k_gen)):  # rounds: K_surr surrogate steps, then ≤ K_gen generator steps
            if c.surrogate_mode == "online" and c.k_surr > 0:
                add(self.fit_surrogate(ctx, c.k_surr))
            for _ in range(min(c.k_gen, c.gen_steps - done)):
                add(self.generator_step(ctx))
        acc = self.buffer_accuracy(ctx, self.heldout)
        if not math.isnan(acc):
            stats["surr_acc_heldout"] = [acc]
        stats["buffer_size"] = [float(len(self.buffer))]
        stats.update({k: [float(v)] for k, v in self.counts.items()})
        for k in ("z1", "z2"):
            if self.norm[k].mean is not None:
                stats[f"norm_mean_{k}"], stats[f"norm_scale_{k}"] = [self.norm[k].mean], [max(self.norm[k].dev, c.norm_floor)]
        return {k: float(np.mean(v)) for k, v in stats.items()}
