"""Reward backpropagation: the gradient of a differentiable reward through the sampler's last steps.

All modes maximise J(θ) = E_{c, x_T, z}[ r(x̂0_θ, c) ] with the pathwise gradient of r through the
UNet calls that keep their graph; the loss is L(θ) = −s·r (s = ``reward_scale``), or ReFL's hinge
s·max(0, m − r) with m = ``reward_margin``, averaged over an update's images. Notation (sampling
order, ``alignzoo.models.sampling``): x_i is the state before step i = 0..T−1, t_i its timestep,
x̂0_i = x̂0_θ(x_i, t_i) the step's clean prediction (f_θ for LCM), the sample x̂0_{T−1} (what the
sampler renders); sg[·] stops the gradient.

* ``refl`` — ReFL (Xu et al., ImageReward, arXiv 2304.05977, Algorithm 1; code THUDM/ImageReward
  ``ReFL.py``): per update s ~ U{window}; x_s = sg[sampler to step s]; L = −r(x̂0_θ(x_s, t_s)), one
  UNet call with gradient. Window: steps ⌊lo·T⌋ .. ⌈hi·T⌉ − 1 with (lo, hi) = (``refl_window_start``,
  ``refl_window_end``) = (0.75, 1.0), the code's s ∈ [30, 39] of 40 steps (at T ≤ 4: the last step,
  so ReFL = DRaFT-1 there). ReFL's alternating pre-training loss is left out (no image data here).
* ``draft`` — DRaFT-K (Clark et al., arXiv 2309.17400, §4): steps 0..T−K−1 without gradient, the
  last K with it, through the states between them: ∇_θ r(x̂0_{T−1}). K = ``draft_k`` = 1 (DRaFT-1;
  K ≥ T is full DRaFT).
* ``draft-lv`` — DRaFT-LV (same §4, K = 1): x0 = sg[x̂0_{T−1}]; n re-noisings at the last step's
  timestep t = t_{T−1}: x_t^(j) = √ᾱ_t·x0 + √(1−ᾱ_t)·ε_j, ε_j ~ N(0, I); L = −(1/n) Σ_j r(x̂0_θ(x_t^(j), t)),
  n = ``lv_n`` = 2 [paper, from memory: its text could not be read here; it sums the n gradients,
  we average them, a factor 1/n that Adam absorbs but the grad-norm clip does not].
* ``alignprop`` — AlignProp (Prabhudesai et al., arXiv 2310.03739, randomised truncated
  backpropagation; code mihirp1998/AlignProp ``sd_pipeline.py``): per update k ~ U{k_min..k_max}
  (``alignprop_k_min``, ``_max`` = 1, 20: the code's "uniform" strategy, truncation b ∈ [30, 50) of
  50 steps, k = 50 − b; its default is "gaussian", b ~ N(42, 5²)), clamped to [1, T]; the last k
  steps with gradient, each UNet call checkpointed
  (``torch.utils.checkpoint``, as the code does), so memory holds k step inputs and one UNet's
  activations. The code never trains step 0 (b ≥ 1); we allow k = T, which few-step models need.

Rollouts (the zoo's choice [O]): every update trains on train_batch_size × gradient_accumulation_steps
of the epoch's rollouts, as every algorithm does (equal compute, docs/architecture.md). Each row is
re-run under the current θ from its stored x_T with its stored per-step noise (``prefix = "replay"``),
an on-policy sample like the papers' fresh one per step (at an epoch's first update exactly the
rollout), without generating images beyond the budget; ``prefix = "stored"`` starts from the
rollout's stored state x_s instead (s fewer no-grad UNet calls per image; the prefix is then as old
as the epoch). No log-probs: DDIM η = 0 is allowed. Defaults not named above: η = 1 (AlignProp's
code), reward_scale 1 (AlignProp's grad_scale; ReFL's is 1e-3 with margin 2 for ImageReward).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from alignzoo.algos.base import AlgoConfig, Algorithm, Items, group_rows, register_algorithm
from alignzoo.algos.cards import AlgoCard
from alignzoo.models.sampling import noised

MODES = ("refl", "draft", "draft-lv", "alignprop")
PREFIXES = ("replay", "stored")


@dataclass
class RewardBackpropConfig(AlgoConfig):
    """Defaults: the papers' (module docstring); [O] = our choice."""

    mode: str = "draft"  # "refl" | "draft" (DRaFT-K) | "draft-lv" | "alignprop" [O: DRaFT-1]
    draft_k: int = 1  # K: the last K steps carry the gradient (draft)
    lv_n: int = 2  # n re-noisings of the sample (draft-lv)
    refl_window_start: float = 0.75  # ReFL's window of steps, as fractions of T (refl)
    refl_window_end: float = 1.0
    alignprop_k_min: int = 1  # k ~ U{min..max}, clamped to T (alignprop)
    alignprop_k_max: int = 20
    reward_scale: float = 1.0  # s in L = −s·r
    reward_margin: float | None = None  # m: ReFL's hinge L = s·max(0, m − r); None: L = −s·r
    checkpointing: bool | None = None  # checkpoint every UNet call with gradient; None: in alignprop mode only
    prefix: str = "replay"  # "replay" the no-grad steps under the current θ, or start from the "stored" state [O]

    def validate(self) -> None:
        checks = (
            ("mode", self.mode in MODES, f"one of {', '.join(MODES)}"),
            ("prefix", self.prefix in PREFIXES, f"one of {', '.join(PREFIXES)}"),
            ("draft_k", _is_int(self.draft_k) and self.draft_k >= 1, "an integer >= 1"),
            ("lv_n", _is_int(self.lv_n) and self.lv_n >= 1, "an integer >= 1"),
            ("refl_window_start", 0 <= self.refl_window_start < self.refl_window_end <= 1, "below refl_window_end, both in [0, 1]"),
            (
                "alignprop_k_min",
                _is_int(self.alignprop_k_min) and _is_int(self.alignprop_k_max) and 1 <= self.alignprop_k_min <= self.alignprop_k_max,
                "an integer in [1, alignprop_k_max]",
            ),
            ("reward_scale", math.isfinite(self.reward_scale) and self.reward_scale > 0, "a finite number > 0"),
        )
        for name, ok, must in checks:
            if not ok:
                raise ValueError(f"reward-backprop: {name} must be {must}, got {getattr(self, name)!r}; set it with --set {name}=VALUE")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def refl_window(num_steps: int, start: float, end: float) -> tuple[int, int]:
    """ReFL's steps [lo, hi) of a T-step trajectory: ⌊start·T⌋ .. ⌈end·T⌉ − 1, never empty."""
    lo = min(int(math.floor(start * num_steps)), num_steps - 1)
    return lo, max(lo + 1, min(num_steps, int(math.ceil(end * num_steps))))


@register_algorithm("reward-backprop", "reward backprop through the last sampling steps: ReFL, DRaFT-K, DRaFT-LV, AlignProp (differentiable rewards)")
class RewardBackprop(Algorithm):
    Config = RewardBackpropConfig
    card = AlgoCard(
        objective="maximise r(x̂0) by its gradient through the last sampling steps; mode refl, draft (DRaFT-K), draft-lv or alignprop",
        reward="scalar, differentiable",
        needs="reward gradient (no log-probs; η = 0 allowed)",
        paper="ReFL arXiv 2304.05977, DRaFT arXiv 2309.17400, AlignProp arXiv 2310.03739",
        code="THUDM/ImageReward, mihirp1998/AlignProp",
        defaults=("mode", "draft_k", "lv_n", "alignprop_k_max"),
    )
    needs_log_probs = False  # deterministic DDIM (eta = 0) is allowed
    needs_reward_grad = True  # the trainer builds the reward with differentiable=True

    def __init__(self, config=None):
        super().__init__(config)
        self.config.validate()

    def split_over(self, world_size: int) -> None:
        super().split_over(world_size)
        self.units_per_update()  # updates of whole groups, as the log-prob algorithms' plans

    @property
    def checkpointing(self) -> bool:
        c = self.config
        return c.mode == "alignprop" if c.checkpointing is None else bool(c.checkpointing)

    # -- the plan: which rows each update trains on, and its first step with gradient -----------
    def first_grad_step(self, num_steps: int, generator: np.random.Generator) -> int:
        """Sampling-order index of the update's first UNet call with gradient (one draw per update)."""
        c, t = self.config, num_steps
        if c.mode == "draft":
            return t - min(c.draft_k, t)
        if c.mode == "draft-lv":
            return t - 1  # the re-noised calls sit at the last step's timestep
        if c.mode == "alignprop":
            return t - int(generator.integers(min(c.alignprop_k_min, t), min(c.alignprop_k_max, t) + 1))
        return int(generator.integers(*refl_window(t, c.refl_window_start, c.refl_window_end)))

    def mean_grad_span(self, num_steps: int) -> tuple[float, float]:
        """(first, stop) of an update's UNet calls with gradient, sampling order: first_grad_step's
        draw at its mean (ReFL's window, AlignProp's k), stop as :meth:`rewards` runs them."""
        c, t = self.config, num_steps
        if c.mode == "refl":
            lo, hi = refl_window(t, c.refl_window_start, c.refl_window_end)
            return (lo + hi - 1) / 2, (lo + hi + 1) / 2
        if c.mode == "alignprop":
            return t - (min(c.alignprop_k_min, t) + min(c.alignprop_k_max, t)) / 2, t
        return t - min(c.draft_k, t), t

    def training_unet_evals(self, num_steps: int, cfg: bool = False) -> float:
        # rewards()' count per trajectory and pass: the no-grad prefix replayed under θ (none from
        # the stored state), the calls with gradient and, checkpointed, their recomputation in the
        # backward; DRaFT-LV: the whole replay without gradient, then lv_n re-noised calls with it.
        # ReFL's and AlignProp's random first step counts at its mean.
        c, t, replayed = self.config, num_steps, self.config.prefix == "replay"
        if c.mode == "draft-lv":
            per = c.lv_n + (t if replayed else 0)
        else:
            first, stop = self.mean_grad_span(t)
            per = (first if replayed else 0) + (stop - first) * (2 if self.checkpointing else 1)
        return c.num_inner_epochs * per * (2 if cfg else 1)

    def training_reward_queries(self, num_steps: int) -> float:
        # every trajectory's x̂0 scored with gradient once per pass (draft-lv: each re-noising's)
        return self.config.num_inner_epochs * (self.config.lv_n if self.config.mode == "draft-lv" else 1)

    def plan(self, batch_size: int, num_steps: int, generator: np.random.Generator) -> list[Items]:
        """Shuffled groups in updates of train_batch_size × gradient_accumulation_steps images; an
        item is one trajectory (M, 1, 1), its step the update's first step with gradient."""
        g = self.config.group_size
        order = generator.permutation(batch_size // g)

        def items(chosen: torch.Tensor) -> Items:
            rows = group_rows(chosen, g).reshape(-1, 1, 1)
            return Items(rows, torch.full_like(rows, self.first_grad_step(num_steps, generator)))

        return self.updates(order, items)

    # -- one update -----------------------------------------------------------------------------
    def update_epoch(self, ctx, rollout) -> dict:
        traj, stats = rollout.traj, {}
        for _ in range(self.config.num_inner_epochs):
            for items in self.plan(traj.batch_size, traj.num_steps, ctx.shared_rng):
                for k, v in self.update(ctx, traj, items).items():
                    stats.setdefault(k, []).append(v)
        return {k: float(np.mean(v)) for k, v in stats.items()}

    def update(self, ctx, traj, items: Items) -> dict:
        """One optimiser step on the mean loss over the update's images, in micro-batches of
        train_batch_size images (memory only: their gradients add up to the update's)."""
        rows, start = items.rows.reshape(-1), int(items.steps[0, 0, 0])
        ctx.zero_grad()
        micro = max(1, self.config.train_batch_size // ctx.world)
        loss_sum = reward_sum = 0.0
        for chunk in rows.split(micro):
            with ctx.autocast():
                rewards = self.rewards(ctx, traj, chunk, start)
                loss = self.objective(rewards)
            ctx.backward(loss.sum() / len(rows))
            loss_sum += float(loss.detach().sum())
            reward_sum += float(rewards.detach().mean(1).sum())
        grad_norm = ctx.optimizer_step()
        info = {"loss": loss_sum / len(rows), "reward_train": reward_sum / len(rows), "first_grad_step": float(start)}
        if grad_norm is not None:
            info["grad_norm"] = grad_norm
        return info

    def objective(self, rewards: torch.Tensor) -> torch.Tensor:
        """(B, n) rewards with gradient → (B,) losses: −s·r, or s·max(0, m − r), averaged over n."""
        c = self.config
        per = -rewards if c.reward_margin is None else torch.relu(c.reward_margin - rewards)
        return c.reward_scale * per.float().mean(1)

    def rewards(self, ctx, traj, rows: torch.Tensor, start: int) -> torch.Tensor:
        """(B', n) rewards of the rows' clean predictions with the graph kept (n = lv_n in
        draft-lv, else 1), every UNet call, decode and reward query counted."""
        c, t, b = self.config, traj.num_steps, len(rows)
        prompts = [traj.prompts[i] for i in rows.tolist()]
        stored = c.prefix == "stored"
        if c.mode == "draft-lv":
            return self._lv_rewards(ctx, traj, rows, prompts)
        stop = start + 1 if c.mode == "refl" else t
        x0 = ctx.replay(traj, rows, start, stop, checkpoint=self.checkpointing, from_stored=stored)[:, -1]
        ctx.count(unet=b * (0 if stored else start))
        ctx.count(unet=b * (stop - start), grad=True)
        if self.checkpointing:
            ctx.count(unet=b * (stop - start))  # the forwards recomputed during the backward pass
        return ctx.score_with_grad(x0, prompts)[:, None]

    def _lv_rewards(self, ctx, traj, rows, prompts) -> torch.Tensor:
        """DRaFT-LV: n re-noisings of the sample x0 = sg[x̂0_{T−1}] at t_{T−1}, one UNet call each."""
        n, t, b = self.config.lv_n, traj.num_steps, len(rows)
        if self.config.prefix == "stored":
            x0 = traj.pred_x0[rows, -1].to(ctx.device)
        else:
            with torch.no_grad():
                x0 = ctx.replay(traj, rows, t - 1)[:, -1]
            ctx.count(unet=b * t)
        eps = ctx.randn(n * b, *x0.shape[1:])
        ts = traj.timesteps.to(ctx.device)[t - 1].expand(n * b)
        embeds = traj.prompt_embeds[rows].to(ctx.device).repeat(n, 1, 1)
        neg = traj.neg_embeds[rows].to(ctx.device).repeat(n, 1, 1) if traj.neg_embeds is not None else None
        _, x0_j = ctx.model.predict_noise(noised(ctx.model, x0.detach().repeat(n, 1, 1, 1), ts, eps), ts, embeds, neg)
        ctx.count(unet=n * b, grad=True)
        return ctx.score_with_grad(x0_j, prompts * n).view(n, b).T  # row j·B + i is re-noising j of row i
