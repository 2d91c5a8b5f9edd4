"""The shared dual-state trajectory sampler and per-step log-probabilities.

Conventions (said once, here):

* **Step index.** Trajectories are stored in *sampling order*: step index i = 0 is the first
  (noisiest) denoising step, i = T−1 the last. In the SDPO paper's notation step i is
  t = T−1−i (the paper counts down). ``latents[:, i]`` is the state x before step i,
  ``latents[:, i+1]`` the action taken by step i; ``latents[:, 0]`` = x_T, ``latents[:, T]`` = x_0.
* **Dual state** (SDPO §3.1). ``pred_x0[:, i]`` is the clean-latent prediction made at step i:
  x̂0 for DDIM, the consistency output f_θ (RLCM's "denoised") for LCM. The x̂0 of step 0 of
  any N-step trajectory is exactly the 1-step sample from the same noise.
* **The sample** of a trajectory is its last clean prediction, ``pred_x0[:, -1]``: for LCM this
  is what RLCM decodes; for DDIM it differs from x_0 only by the final step's tiny
  (σ ≈ 0.03) re-noising, and it makes N-step samples comparable across N.
* **Log-probabilities** are Gaussian log-densities *averaged* over the latent dimensions C×H×W
  (DDPO's convention; the 1e-4 clip ranges of DDPO/SDPO assume it, see jannerm/ddpo#10).

Two batched step kernels:

* DDIM-with-logprob (DDPM/DDIM eq. 12 of Song et al., as in DDPO): previous timestep
  t' = clamp(t − 1000/N, 0, 999);  σ_t² = (1−ᾱ_t')/(1−ᾱ_t)·(1−ᾱ_t/ᾱ_t');  std = η·σ_t;
  μ = √ᾱ_t'·x̂0 + √(1−ᾱ_t'−std²)·ε̂;  x_t' = μ + std·z.
* LCM-with-logprob (RLCM §3.3): x_τ' ~ N(√ᾱ_τ'·f_θ(x_τ, τ), (1−ᾱ_τ')·I) with τ' the next
  timestep of the schedule; the last step re-noises to its own timestep. No η.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


@dataclass
class Trajectory:
    """B trajectories of T steps (sampling order; see the module docstring)."""

    prompts: list[str]
    prompt_embeds: torch.Tensor  # (B, L, D)
    neg_embeds: torch.Tensor | None  # (B, L, D) when CFG is on
    timesteps: torch.Tensor  # (T,) long
    prev_timesteps: torch.Tensor  # (T,) long
    latents: torch.Tensor  # (B, T+1, C, h, w)
    pred_x0: torch.Tensor  # (B, T, C, h, w)
    log_probs: torch.Tensor  # (B, T); NaN for deterministic DDIM (eta = 0)
    eta: float
    kernel: str  # "ddim" or "lcm"

    @property
    def batch_size(self) -> int:
        return self.latents.shape[0]

    @property
    def num_steps(self) -> int:
        return self.timesteps.shape[0]

    @property
    def final(self) -> torch.Tensor:
        """The sample: the last step's clean-latent prediction (B, C, h, w)."""
        return self.pred_x0[:, -1]

    @staticmethod
    def cat(parts: Sequence["Trajectory"]) -> "Trajectory":
        first = parts[0]
        for p in parts[1:]:
            if not torch.equal(p.timesteps, first.timesteps) or p.kernel != first.kernel:
                raise ValueError("cannot concatenate trajectories with different schedules")
        cat = lambda name: None if getattr(first, name) is None else torch.cat([getattr(p, name) for p in parts])  # noqa: E731
        return Trajectory(
            prompts=[q for p in parts for q in p.prompts],
            prompt_embeds=cat("prompt_embeds"),
            neg_embeds=cat("neg_embeds"),
            timesteps=first.timesteps,
            prev_timesteps=first.prev_timesteps,
            latents=cat("latents"),
            pred_x0=cat("pred_x0"),
            log_probs=cat("log_probs"),
            eta=first.eta,
            kernel=first.kernel,
        )


# ----------------------------------------------------------------------------------- schedule
def previous_timesteps(model, timesteps: torch.Tensor) -> torch.Tensor:
    """t' for every step: DDIM clamp(t − 1000/N, 0, 999); LCM the next scheduled timestep."""
    n = timesteps.shape[0]
    if model.kind == "lcm":
        return torch.cat([timesteps[1:], timesteps[-1:]])
    # Clamping *before* choosing ᾱ means the last step uses ᾱ[0] (never final_alpha_cumprod),
    # which keeps its variance non-zero: the DDPO/SDPO code does the same.
    return (timesteps - model.num_train_timesteps // n).clamp(0, model.num_train_timesteps - 1)


def step_distribution(model, x: torch.Tensor, t: torch.Tensor, prev_t: torch.Tensor, eps: torch.Tensor, x0: torch.Tensor, eta: float):
    """Mean and std (per sample, shape (B,1,1,1)) of p(x_t' | x_t) for the model's kernel."""
    a_prev = model.alphas_cumprod[prev_t].view(-1, 1, 1, 1)
    if model.kind == "lcm":
        return a_prev.sqrt() * x0, (1 - a_prev).sqrt()
    a_t = model.alphas_cumprod[t].view(-1, 1, 1, 1)
    variance = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
    std = eta * variance.clamp(min=0).sqrt()
    mean = a_prev.sqrt() * x0 + (1 - a_prev - std**2).clamp(min=0).sqrt() * eps
    return mean, std


def gaussian_log_prob(sample: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """log N(sample; mean, std²) averaged over all but the batch dimension."""
    lp = -((sample.detach() - mean) ** 2) / (2 * std**2) - torch.log(std) - LOG_SQRT_2PI
    return lp.mean(dim=tuple(range(1, lp.ndim)))


# ----------------------------------------------------------------------------------- sampling
def sample(
    model,
    prompts: Sequence[str],
    num_steps: int,
    eta: float = 1.0,
    generator: torch.Generator | None = None,
    init_noise: torch.Tensor | None = None,
    grad: bool = False,
    detach_between_steps: bool = False,
) -> Trajectory:
    """Samples one trajectory per prompt under the model's current parameters.

    ``init_noise`` (B, C, h, w) fixes x_T; otherwise it is drawn from ``generator`` (a CPU
    generator gives bit-identical runs). ``grad=True`` keeps the graph (reward backprop);
    ``detach_between_steps`` then stops it at every re-noised state, so the gradient of a step's
    x̂0 flows through that step's UNet call only (LaSRO's option, DRaFT-1-like).
    """
    prompts = list(prompts)
    b = len(prompts)
    if model.kind == "sd" and eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    timesteps = model.timesteps(num_steps)
    prev = previous_timesteps(model, timesteps)
    x = model.init_noise(b, generator) if init_noise is None else init_noise.to(model.device, torch.float32)
    if x.shape[0] != b:
        raise ValueError(f"init_noise has batch {x.shape[0]} for {b} prompts")
    with torch.set_grad_enabled(grad):
        embeds = model.encode_prompts(prompts)
        neg = model.negative_embeds(b)
        states, x0s, logps = [x], [], []
        for i in range(num_steps):
            t, tp = timesteps[i].expand(b), prev[i].expand(b)
            eps, x0 = model.predict_noise(x, t, embeds, neg)
            mean, std = step_distribution(model, x, t, tp, eps, x0, eta)
            z = torch.randn(x.shape, generator=generator, dtype=torch.float32).to(model.device)
            x = mean + std * z
            if detach_between_steps:
                x = x.detach()
            logps.append(gaussian_log_prob(x, mean, std) if bool((std > 0).all()) else torch.full((b,), float("nan"), device=model.device))
            states.append(x)
            x0s.append(x0)
    return Trajectory(
        prompts=prompts,
        prompt_embeds=embeds,
        neg_embeds=neg,
        timesteps=timesteps,
        prev_timesteps=prev,
        latents=torch.stack(states, 1),
        pred_x0=torch.stack(x0s, 1),
        log_probs=torch.stack(logps, 1),
        eta=float(eta),
        kernel="lcm" if model.kind == "lcm" else "ddim",
    )


def sample_groups(
    model, prompts: Sequence[str], group_size: int, num_steps: int, eta: float = 1.0, generator: torch.Generator | None = None, shared_noise: bool = True
) -> Trajectory:
    """G trajectories per prompt, rows prompt-major: row p·G + g is trajectory g of prompt p.

    ``shared_noise``: the G trajectories of a prompt start from one x_T (SDPO, D3PO, DanceGRPO)
    and differ by their per-step noise; otherwise each draws its own x_T (RLCM, Flow-GRPO).
    """
    rows = [p for p in prompts for _ in range(group_size)]
    init = None
    if shared_noise and group_size > 1:
        init = model.init_noise(len(prompts), generator).repeat_interleave(group_size, 0)
    return sample(model, rows, num_steps, eta, generator, init_noise=init)


def transition_distribution(model, traj: Trajectory, steps: torch.Tensor, rows: torch.Tensor | None = None, eta: float | None = None):
    """(next, mean, std) of stored transitions under the *current* parameters: the stored next
    state x_{i+1} and the Gaussian p_θ(·|x_i, c) it was drawn from, one batched UNet call over K
    (row, step) pairs, with gradients (the caller decides whether to wrap it in no_grad).
    ``steps``/``rows``: (K,) long tensors; ``rows=None`` means row k for pair k."""
    steps = torch.as_tensor(steps, dtype=torch.long, device=traj.latents.device)
    rows = torch.arange(steps.shape[0], device=steps.device) if rows is None else torch.as_tensor(rows, dtype=torch.long, device=steps.device)
    eta = traj.eta if eta is None else eta
    if traj.kernel == "ddim" and eta <= 0:
        raise ValueError("log-probs of DDIM transitions need eta > 0 (eta = 0 is deterministic); sample with eta=1 for training")
    x = traj.latents[rows, steps].to(model.device)
    nxt = traj.latents[rows, steps + 1].to(model.device)
    t = traj.timesteps.to(model.device)[steps.to(model.device)]
    tp = traj.prev_timesteps.to(model.device)[steps.to(model.device)]
    embeds = traj.prompt_embeds[rows].to(model.device)
    neg = traj.neg_embeds[rows].to(model.device) if traj.neg_embeds is not None else None
    eps, x0 = model.predict_noise(x, t, embeds, neg)
    mean, std = step_distribution(model, x, t, tp, eps, x0, eta)
    return nxt, mean, std


def recompute_log_probs(model, traj: Trajectory, steps: torch.Tensor, rows: torch.Tensor | None = None, eta: float | None = None) -> torch.Tensor:
    """log p_θ(x_{i+1} | x_i, c) of stored transitions under the *current* parameters (K,): see
    :func:`transition_distribution` for the arguments."""
    return gaussian_log_prob(*transition_distribution(model, traj, steps, rows, eta))


def mean_kl(mean_p: torch.Tensor, mean_q: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL(N(μ_p, σ²I) ‖ N(μ_q, σ²I)) = ‖μ_p − μ_q‖²/(2σ²) of two Gaussian steps with one variance
    (both kernels: σ does not depend on the UNet), *averaged* over the latent dimensions like the
    log-probs (module docstring): (B,)."""
    kl = (mean_p - mean_q) ** 2 / (2 * std**2)
    return kl.mean(dim=tuple(range(1, kl.ndim)))


def log_probs_and_reference_kl(model, traj: Trajectory, steps: torch.Tensor, rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p_θ, KL(p_θ ‖ p_ref)) of stored transitions, (K,) each, with gradients: the reference is
    the pretrained model (``model.reference()``, the LoRA disabled), evaluated without grad. Two
    UNet calls over the K pairs (the caller counts them)."""
    nxt, mean, std = transition_distribution(model, traj, steps, rows)
    with torch.no_grad(), model.reference():
        _, ref_mean, _ = transition_distribution(model, traj, steps, rows)
    return gaussian_log_prob(nxt, mean, std), mean_kl(mean, ref_mean.detach(), std)


def decode_steps(model, traj: Trajectory, steps: Sequence[int], rows: Sequence[int] | None = None, chunk: int = 64) -> torch.Tensor:
    """Decodes the clean predictions x̂0 of the requested steps only, batched.

    Returns images (B', S, 3, H, W) in [0, 1]; step −1 is the sample.
    """
    idx = torch.as_tensor([s % traj.num_steps for s in steps], dtype=torch.long)
    lat = traj.pred_x0 if rows is None else traj.pred_x0[torch.as_tensor(rows, dtype=torch.long)]
    sel = lat[:, idx]
    b, s = sel.shape[:2]
    with torch.no_grad():
        imgs = model.decode(sel.reshape(b * s, *sel.shape[2:]).to(model.device), chunk=chunk)
    return imgs.reshape(b, s, *imgs.shape[1:])


@torch.no_grad()
def generate(model, prompts: Sequence[str], num_steps: int, eta: float = 0.0, generator=None, init_noise=None) -> torch.Tensor:
    """Images (B, 3, H, W) for evaluation: deterministic by default (eta = 0)."""
    traj = sample(model, prompts, num_steps, eta=eta, generator=generator, init_noise=init_noise)
    return decode_steps(model, traj, [-1])[:, 0]
