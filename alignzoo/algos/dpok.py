"""DPOK: KL-regularised policy gradient over denoising steps (Fan et al. 2023, "DPOK: Reinforcement
Learning for Fine-tuning Text-to-Image Diffusion Models", arXiv 2305.16381).

The paper (§4) minimises, over prompts z, the reward weighted by α plus β times the KL to the
pretrained model, the KL of the whole chain bounded above by the sum of the per-step KLs:

    E_z[ −α·E_{p_θ(x_0|z)}[r(x_0, z)] + β·Σ_t E[ KL(p_θ(x_{t−1}|x_t, z) ‖ p_pre(x_{t−1}|x_t, z)) ] ]

with the policy-gradient term estimated from the old policy's samples with a clamped importance
ratio (the released ``train_online_pg.py``: ``ratio = clamp(exp(log p_θ − log p_old), 1 − ε, 1 + ε)``,
``loss = −α·adv·ratio + β·kl``) — the ratio itself is clamped, so outside [1 − ε, 1 + ε] the
transition gives no policy gradient at all (not PPO's min of clipped and unclipped surrogates).
Per trained transition (step j of trajectory i, r = p_θ/p_θold of the stored transition):

    L_ij = −α·A_ij·clamp(r_ij, 1 − ε, 1 + ε) + β·KL_ij,     A_ij = r̃_i − V_ψ(x_j, z, j)
    KL_ij = ‖μ_θ(x_j) − μ_pre(x_j)‖² / (2σ_j²)

KL_ij is the closed form for two Gaussian steps with one variance σ_j² (DDIM-η and the LCM kernel
both fix σ_j independently of the UNet), averaged over latent dimensions like the log-probs
(alignzoo/models/sampling.py); p_pre is the same UNet with its LoRA disabled, whose step means the
trainer computes once per epoch at every trained transition (``needs_reference`` and
``needs_means``: EpochData.ref_means, the route GRPO's KL takes; the reference is frozen, so this
equals evaluating it at each update, at 1/E of the cost with E inner epochs). DPOK's code regularises
mean((ε_θ − ε_pre)²) instead, which differs from the paper's KL by a per-step constant.

Rewards r̃: the zoo's per-prompt normalised, clipped final rewards (every final-reward method here
uses them; DPOK's ImageReward is itself standardised to mean 0, std 1, so α and β keep their
scale). Baseline (``value_baseline``): DPOK learns a value function V_ψ(x_t, z, t) by MSE to the
final reward (``ValueMulti``: an MLP on the flattened latent and the prompt's text features, each
layer gated per step). :class:`ValueHead` is that network at 2 layers of ``value_hidden`` units,
on the mean-pooled prompt embedding; per epoch it is evaluated *before* it is fitted
(``value_steps`` full-batch AdamW steps, gradients averaged over processes) on the epoch's states,
so the baseline never sees the reward it is subtracted from (DPOK fits first, on a replay buffer
of 1,000 transitions that holds them). ``value_baseline=False`` gives A_ij = r̃_i (DPOK v_flag 0).

Defaults (the tiny world; ``train_online_pg.py`` and its README in brackets): α = 10 [README,
one prompt: 10; many prompts: 1000], β = 0.01 [0.01; 0.1], ε = 0.1 [1e-4: at the tiny suites' lr
1e-4 and 8 updates per epoch a 1e-4 clamp cut the policy gradient of 70–83% of the transitions
and most of the gain (tiny-sd-v2, tiny_preference, 128 images: +0.06 ± 0.02 against +0.22 ± 0.03);
at 0.1 none was clamped, as with the tiny suites' DDPO clip 0.1], value lr 1e-3 and 20 steps per
epoch [v_lr 1e-4, one step of 5 × 256 buffered transitions per round: at 1e-4 and 10 steps the
tiny world's V_ψ explained none of the reward variance, at 1e-3 and 20 up to 9%], width 256
[256]. Updates: DDPO's plan (all trained steps of train_batch_size × gradient_accumulation_steps
images per update; DPOK draws p_batch_size transitions from its buffer instead). Runs on the sd
and lcm kernels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from alignzoo.algos.base import AlgoConfig, Algorithm, EpochData, Items, register_algorithm
from alignzoo.algos.cards import AlgoCard
from alignzoo.models.sampling import mean_kl


@dataclass
class DPOKConfig(AlgoConfig):
    """Tiny-world defaults; DPOK's own values in the comments (module docstring)."""

    learning_rate: float = 1e-4  # the tiny suites' lr [DPOK: 1e-5]
    reward_weight: float = 10.0  # α: weight of the policy-gradient term [README, one prompt: 10]
    kl_weight: float = 0.01  # β: weight of the per-step KL to the pretrained model [0.01]
    ratio_clip: float = 0.1  # ε of the ratio clamp [1e-4]
    value_baseline: bool = True  # A = r̃ − V_ψ(x_t, z, t) (DPOK v_flag 1); False: A = r̃
    value_hidden: int = 256  # width of V_ψ's two gated layers [ValueMulti: 256, three layers]
    value_lr: float = 1e-3  # AdamW lr of V_ψ [v_lr 1e-4]
    value_steps: int = 20  # full-batch V_ψ steps per epoch, after the baseline is read
    adv_clip: float | None = 5.0  # on r̃ (DDPO's clip; DPOK does not clip)
    normalization: str = "per_prompt"

    def validate(self) -> None:
        for name in ("reward_weight", "kl_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 < self.ratio_clip < 1:
            raise ValueError(f"ratio_clip must be in (0, 1) (the ratio is clamped to [1 − ε, 1 + ε]), got {self.ratio_clip}")
        if self.value_hidden < 1 or self.value_steps < 0 or self.value_lr <= 0:
            raise ValueError(f"value_hidden must be >= 1, value_steps >= 0, value_lr > 0; got {self.value_hidden}, {self.value_steps}, {self.value_lr}")


def dpok_loss(adv: torch.Tensor, log_ratio: torch.Tensor, kl: torch.Tensor, alpha: float, beta: float, eps: float) -> torch.Tensor:
    """−α·A·clamp(exp(log_ratio), 1 − ε, 1 + ε) + β·KL, elementwise (DPOK's policy loss)."""
    return -alpha * adv * log_ratio.exp().clamp(1 - eps, 1 + eps) + beta * kl


class ValueHead(torch.nn.Module):
    """V_ψ(x_t, z, t): DPOK's ``ValueMulti`` (an MLP on the flattened latent and the text features
    whose layers are gated by a learned per-step vector, ``ConditionalLinear``), two gated layers."""

    def __init__(self, latent_dim: int, text_dim: int, num_steps: int, hidden: int, generator: torch.Generator):
        super().__init__()
        self.layers = torch.nn.ModuleList([torch.nn.Linear(latent_dim + text_dim, hidden), torch.nn.Linear(hidden, hidden)])
        self.gates = torch.nn.ModuleList([torch.nn.Embedding(num_steps, hidden) for _ in self.layers])
        self.out = torch.nn.Linear(hidden, 1)
        with torch.no_grad():  # seeded: every process starts from the same weights
            for lin in (*self.layers, self.out):
                lin.weight.copy_(torch.randn(lin.weight.shape, generator=generator) * (2 / sum(lin.weight.shape)) ** 0.5)  # Xavier normal
                lin.bias.zero_()
            for gate in self.gates:
                gate.weight.copy_(torch.rand(gate.weight.shape, generator=generator))  # ConditionalLinear: uniform [0, 1)

    def forward(self, latents: torch.Tensor, text: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        h = torch.cat([latents.flatten(1), text], 1)
        for lin, gate in zip(self.layers, self.gates):
            h = torch.relu(gate(steps) * lin(h))
        return self.out(h)[:, 0]


@register_algorithm("dpok", "DPOK: policy gradient with a clamped ratio and a per-step KL to the pretrained model (Fan et al.)")
class DPOK(Algorithm):
    Config = DPOKConfig
    card = AlgoCard(
        objective="−α·A·clamp(r, 1±ε) per step + β·KL to the pretrained model; A = normalised reward − a learned value V(x_t, c, t)",
        reward="scalar",
        needs="log-probs + reference",
        paper="Fan et al. 2023, arXiv 2305.16381",
        code="google-research/google-research (dpok)",
        defaults=("reward_weight", "kl_weight", "ratio_clip", "value_baseline"),
    )
    needs_reference = True  # the pretrained model's step means, once per epoch (EpochData.ref_means)
    needs_means = True  # loss() gets the current policy's step means μ_θ

    def __init__(self, config=None):
        super().__init__(config)
        self.value = None

    # -- the value head: built in setup, state checkpointed, identical on every process ---------
    def setup(self, ctx) -> None:
        self.ctx = ctx
        if not self.config.value_baseline:
            return
        model = ctx.model
        text_dim = int(model.text_encoder.config.hidden_size)
        gen = torch.Generator().manual_seed(ctx.seed * 7919 + 23)
        latent_dim = int(np.prod(model.latent_shape))
        self.value = ValueHead(latent_dim, text_dim, ctx.num_steps, self.config.value_hidden, gen).to(ctx.device)
        self.value_optimizer = torch.optim.AdamW(self.value.parameters(), lr=self.config.value_lr)

    def state_dict(self) -> dict:
        if self.value is None:
            return {}
        return {"value": {k: v.detach().cpu().clone() for k, v in self.value.state_dict().items()}, "value_optimizer": self.value_optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        if self.value is None:
            raise ValueError("this DPOK checkpoint holds a value head: resume it with value_baseline=true")
        self.value.load_state_dict(state["value"])
        self.value_optimizer.load_state_dict(state["value_optimizer"])

    def replicated_parameters(self) -> list[torch.Tensor]:
        return list(self.value.parameters()) if self.value is not None else []

    # -- advantages -----------------------------------------------------------------------------
    @staticmethod
    def value_inputs(traj) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every (row, step) state of the epoch, row-major: latents (B·T, C, h, w), mean-pooled
        prompt embeddings (B·T, D) and step indices (B·T,)."""
        b, t = traj.batch_size, traj.num_steps
        latents = traj.latents[:, :t].flatten(0, 1).float()
        text = traj.prompt_embeds.float().mean(1).repeat_interleave(t, 0)
        steps = torch.arange(t, device=latents.device).repeat(b)
        return latents, text, steps

    def advantages(self, rollout) -> EpochData:
        """A = r̃ − V_ψ(x_j, z, j) per (row, step) with the baseline read before V_ψ is fitted to
        this epoch's r̃ (A = r̃ without ``value_baseline``), (B, T)."""
        rewards = self.clip_advantages(rollout.normalize(rollout.final_rewards))
        b, t = rollout.traj.batch_size, rollout.traj.num_steps
        target = rewards[:, None].expand(b, t).to(rollout.traj.latents.device)
        stds = {"stds": rollout.traj.stds}  # σ_j of each step, for the KL
        if self.value is None:
            return EpochData(advantages=target.contiguous(), extra=stds)
        inputs = self.value_inputs(rollout.traj)
        with torch.no_grad():
            baseline = self.value(*inputs).view(b, t)
        info = self.fit_value(inputs, target.reshape(-1))
        info["value_explained_var"] = float(1 - (target - baseline).var() / target.var().clamp(min=1e-8))
        return EpochData(advantages=(target - baseline).contiguous(), extra={"log": info, **stds})

    def fit_value(self, inputs, target: torch.Tensor) -> dict:
        """``value_steps`` full-batch AdamW steps of MSE(V_ψ, r̃), gradients averaged over processes."""
        losses = []
        for _ in range(self.config.value_steps):
            self.value_optimizer.zero_grad(set_to_none=True)
            loss = torch.nn.functional.mse_loss(self.value(*inputs), target)
            loss.backward()
            self.ctx.average_gradients(list(self.value.parameters()))
            self.value_optimizer.step()
            losses.append(float(loss.detach()))
        return {"value_loss": losses[0] if losses else float("nan")}

    # -- updates --------------------------------------------------------------------------------
    def plan(self, batch_size: int, num_steps: int, generator: np.random.Generator) -> list[Items]:
        """DDPO's: all trained steps of train_batch_size × gradient_accumulation_steps images per update."""
        return self.all_steps_plan(batch_size, num_steps, generator)

    def loss(self, items: Items, new_logp, old_logp, data: EpochData, new_means: torch.Tensor | None = None):
        # items (M, G, 1): one step of each of a group's trajectories (G = 1 by default)
        if new_means is None or data.ref_means is None:
            raise ValueError("dpok: the trainer must pass the current and the pretrained step means (needs_means, needs_reference)")
        c = self.config
        std = data.extra["stds"].to(new_logp.device)[items.steps]
        kl = mean_kl(new_means, data.ref_means[items.rows, items.steps].to(new_means.device), std)  # KL_ij, with grad
        adv = data.advantages[items.rows, items.steps]
        log_ratio = new_logp - old_logp
        per = dpok_loss(adv, log_ratio, kl, c.reward_weight, c.kl_weight, c.ratio_clip)
        m = len(items)
        info = {"kl": kl.detach().flatten(1).mean(1), "ratio_clipfrac": ((log_ratio.detach().exp() - 1).abs() > c.ratio_clip).float().flatten(1).mean(1)}
        info.update({k: torch.full((m,), v) for k, v in data.extra.get("log", {}).items()})  # the epoch's value-head figures, logged per update
        return per.flatten(1).mean(1), info
