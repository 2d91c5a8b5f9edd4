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
  μ = √ᾱ_t'·x̂0 + √(1−ᾱ_t'−std²)·ε̂;  x_t' = μ + std·z.  η may differ per step (a list of T
  values: MixGRPO's SDE window, η = 0 outside it); a step with std 0 has no log-prob (NaN).
* LCM-with-logprob (RLCM §3.3): x_τ' ~ N(√ᾱ_τ'·f_θ(x_τ, τ), (1−ᾱ_τ')·I) with τ' the next
  timestep of the schedule; the last step re-noises to its own timestep. No η.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.utils.checkpoint

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
    log_probs: torch.Tensor  # (B, T); NaN for deterministic DDIM steps (eta = 0)
    eta: float
    kernel: str  # "ddim" or "lcm"
    noise: torch.Tensor | None = None  # (B, T, C, h, w): step i's z (x_{i+1} = mean_i + std_i·z_i), for replay()
    step_etas: torch.Tensor | None = None  # (T,) each step's η when they differ (None: eta at every step)
    stds: torch.Tensor | None = None  # (T,) each step's Gaussian std (η·σ_t for DDIM), the same for every row
    means: torch.Tensor | None = None  # (B, T, C, h, w) each transition's mean μ, kept when asked (keep_means)
    eps_coefs: torch.Tensor | None = None  # (T,) ∂μ/∂ε̂ of each step at fixed x_t (eps_coefficient), the same for every row

    def etas(self) -> torch.Tensor:
        """(T,) the η of every step."""
        return self.step_etas if self.step_etas is not None else torch.full((self.num_steps,), float(self.eta))

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
            noise=cat("noise"),
            step_etas=first.step_etas,
            stds=first.stds,
            means=cat("means"),
            eps_coefs=first.eps_coefs,
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


def step_distribution(model, x: torch.Tensor, t: torch.Tensor, prev_t: torch.Tensor, eps: torch.Tensor, x0: torch.Tensor, eta: float | torch.Tensor):
    """Mean and std (per sample, shape (B,1,1,1)) of p(x_t' | x_t) for the model's kernel;
    ``eta`` a float or one per sample, (B,)."""
    a_prev = model.alphas_cumprod[prev_t].view(-1, 1, 1, 1)
    if model.kind == "lcm":
        return a_prev.sqrt() * x0, (1 - a_prev).sqrt()
    a_t = model.alphas_cumprod[t].view(-1, 1, 1, 1)
    variance = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
    if isinstance(eta, torch.Tensor):
        eta = eta.to(variance.device, variance.dtype).view(-1, 1, 1, 1)
    std = eta * variance.clamp(min=0).sqrt()
    mean = a_prev.sqrt() * x0 + (1 - a_prev - std**2).clamp(min=0).sqrt() * eps
    return mean, std


def eps_coefficient(model, t: torch.Tensor, prev_t: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """∂μ/∂ε̂ at fixed x_t: how far a step's mean moves per unit of the UNet's noise prediction,
    (B,) for timesteps t, t' and step stds ``std``. DDIM, with x̂0 = (x − √(1−ᾱ_t)·ε̂)/√ᾱ_t:
    √(1−ᾱ_t'−std²) − √ᾱ_t'·√(1−ᾱ_t)/√ᾱ_t. LCM, μ = √ᾱ_t'·(c_skip·x + c_out·x̂0):
    −√ᾱ_t'·c_out·√(1−ᾱ_t)/√ᾱ_t. (μ_θ − μ_ref = this × (ε_θ − ε_ref), the DPOK/GRPO KL's scale.)"""
    a_t, a_prev = model.alphas_cumprod[t].float(), model.alphas_cumprod[prev_t].float()
    to_x0 = (1 - a_t).sqrt() / a_t.sqrt()
    if model.kind == "lcm":
        _, c_out = model.boundary_coefficients(t)
        return -a_prev.sqrt() * c_out.view(-1).float() * to_x0
    std = torch.as_tensor(std, dtype=torch.float32, device=a_t.device).reshape(-1)
    return (1 - a_prev - std**2).clamp(min=0).sqrt() - a_prev.sqrt() * to_x0


def gaussian_log_prob(sample: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """log N(sample; mean, std²) averaged over all but the batch dimension."""
    lp = -((sample.detach() - mean) ** 2) / (2 * std**2) - torch.log(std) - LOG_SQRT_2PI
    return lp.mean(dim=tuple(range(1, lp.ndim)))


def denoising_step(model, x, t, prev_t, embeds, neg, eta: float, z):
    """One step of the model's kernel from x at timestep t with noise z: (x_t', x̂0, mean, std)."""
    eps, x0 = model.predict_noise(x, t, embeds, neg)
    mean, std = step_distribution(model, x, t, prev_t, eps, x0, eta)
    return mean + std * z, x0, mean, std


def noised(model, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """A draw of the forward process q(x_t | x_0) = N(√ᾱ_t·x0, (1 − ᾱ_t)·I) with noise ``eps``."""
    a = model.alphas_cumprod[t].view(-1, 1, 1, 1)
    return a.sqrt() * x0 + (1 - a).sqrt() * eps


# ----------------------------------------------------------------------------------- sampling
def sample(
    model,
    prompts: Sequence[str],
    num_steps: int,
    eta: float | Sequence[float] = 1.0,
    generator: torch.Generator | None = None,
    init_noise: torch.Tensor | None = None,
    grad: bool = False,
    detach_between_steps: bool = False,
    keep_means: bool = False,
) -> Trajectory:
    """Samples one trajectory per prompt under the model's current parameters.

    ``eta``: DDIM's η at every step, or a list of T values, one per step (the LCM kernel has
    none). ``init_noise`` (B, C, h, w) fixes x_T; otherwise it is drawn from ``generator`` (a CPU
    generator gives bit-identical runs). ``grad=True`` keeps the graph (reward backprop);
    ``detach_between_steps`` then stops it at every re-noised state, so the gradient of a step's
    x̂0 flows through that step's UNet call only (LaSRO's option, DRaFT-1-like). ``keep_means``
    stores every transition's mean μ (detached) in ``Trajectory.means``.
    """
    prompts = list(prompts)
    b = len(prompts)
    etas, step_etas = _etas(model, eta, num_steps)
    timesteps = model.timesteps(num_steps)
    prev = previous_timesteps(model, timesteps)
    x = model.init_noise(b, generator) if init_noise is None else init_noise.to(model.device, torch.float32)
    if x.shape[0] != b:
        raise ValueError(f"init_noise has batch {x.shape[0]} for {b} prompts")
    with torch.set_grad_enabled(grad):
        embeds = model.encode_prompts(prompts)
        neg = model.negative_embeds(b)
        states, x0s, logps, zs, means, stds = [x], [], [], [], [], []
        for i in range(num_steps):
            z = torch.randn(x.shape, generator=generator, dtype=torch.float32).to(model.device)
            x, x0, mean, std = denoising_step(model, x, timesteps[i].expand(b), prev[i].expand(b), embeds, neg, etas[i], z)
            zs.append(z)
            if detach_between_steps:
                x = x.detach()
            logps.append(gaussian_log_prob(x, mean, std) if bool((std > 0).all()) else torch.full((b,), float("nan"), device=model.device))
            states.append(x)
            x0s.append(x0)
            means.append(mean.detach() if keep_means else None)
            stds.append(float(torch.as_tensor(std).reshape(-1)[0]))
    return Trajectory(
        prompts=prompts,
        prompt_embeds=embeds,
        neg_embeds=neg,
        timesteps=timesteps,
        prev_timesteps=prev,
        latents=torch.stack(states, 1),
        pred_x0=torch.stack(x0s, 1),
        log_probs=torch.stack(logps, 1),
        eta=max(etas),
        kernel="lcm" if model.kind == "lcm" else "ddim",
        noise=torch.stack(zs, 1),
        step_etas=step_etas,
        stds=torch.tensor(stds, dtype=torch.float32),
        means=torch.stack(means, 1) if keep_means else None,
        eps_coefs=eps_coefficient(model, timesteps, prev, torch.tensor(stds)).cpu(),
    )


def _etas(model, eta, num_steps: int) -> tuple[list[float], torch.Tensor | None]:
    """(η of each step, the (T,) tensor to store when they differ, else None); checks them."""
    per_step = not isinstance(eta, (int, float))
    etas = [float(e) for e in eta] if per_step else [float(eta)] * num_steps
    if len(etas) != num_steps:
        raise ValueError(f"eta has {len(etas)} values for {num_steps} steps: give one η, or one per step")
    if model.kind == "sd" and min(etas) < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    return etas, (torch.tensor(etas, dtype=torch.float32) if per_step else None)


def sample_groups(
    model,
    prompts: Sequence[str],
    group_size: int,
    num_steps: int,
    eta: float | Sequence[float] = 1.0,
    generator: torch.Generator | None = None,
    shared_noise: bool = True,
    keep_means: bool = False,
) -> Trajectory:
    """G trajectories per prompt, rows prompt-major: row p·G + g is trajectory g of prompt p.

    ``shared_noise``: the G trajectories of a prompt start from one x_T (SDPO, D3PO, DanceGRPO)
    and differ by their per-step noise; otherwise each draws its own x_T (RLCM, Flow-GRPO).
    """
    rows = [p for p in prompts for _ in range(group_size)]
    init = None
    if shared_noise and group_size > 1:
        init = model.init_noise(len(prompts), generator).repeat_interleave(group_size, 0)
    return sample(model, rows, num_steps, eta, generator, init_noise=init, keep_means=keep_means)


def replay(model, traj: Trajectory, rows, grad_from: int, stop: int | None = None, checkpoint: bool = False, from_stored: bool = False) -> torch.Tensor:
    """Re-runs trajectories under the *current* parameters (reward backprop): the clean predictions
    x̂0 of steps ``grad_from`` .. ``stop`` − 1 (default: to the end), (B', S, C, h, w), with gradients.

    Rows ``rows`` start from their stored x_T and take their stored per-step noise (``traj.noise``),
    so under the parameters that sampled them they reproduce the stored trajectory exactly; steps
    before ``grad_from`` run without gradient (DRaFT-K, AlignProp's truncation, ReFL's no-grad
    prefix), or are skipped with ``from_stored``, which starts at the stored state x_{grad_from}
    (computed when the trajectory was sampled). Steps from ``grad_from`` keep the graph through the
    states between them; ``checkpoint`` recomputes each such step's UNet activations during the
    backward pass (AlignProp), so memory holds one step's activations plus the S step inputs.
    """
    if traj.noise is None:
        raise ValueError("replay needs the trajectory's per-step noise: sample it with alignzoo.models.sampling.sample")
    stop = traj.num_steps if stop is None else stop
    if not 0 <= grad_from < stop <= traj.num_steps:
        raise ValueError(f"replay needs 0 <= grad_from < stop <= T = {traj.num_steps}, got grad_from={grad_from}, stop={stop}")
    rows = torch.as_tensor(rows, dtype=torch.long, device=traj.latents.device)
    start = grad_from if from_stored else 0
    x = traj.latents[rows, start].to(model.device)
    embeds = traj.prompt_embeds[rows].to(model.device)
    neg = traj.neg_embeds[rows].to(model.device) if traj.neg_embeds is not None else None
    ts, prev = traj.timesteps.to(model.device), traj.prev_timesteps.to(model.device)
    x0s, etas = [], traj.etas()
    for i in range(start, stop):
        args = (model, x, ts[i].expand(len(rows)), prev[i].expand(len(rows)), embeds, neg, float(etas[i]), traj.noise[rows, i].to(model.device))
        if i < grad_from:
            with torch.no_grad():
                x, *_ = denoising_step(*args)
            continue
        step = torch.utils.checkpoint.checkpoint(denoising_step, *args, use_reentrant=False) if checkpoint else denoising_step(*args)
        x, x0 = step[0], step[1]
        x0s.append(x0)
    return torch.stack(x0s, 1)


def recompute_log_probs(model, traj: Trajectory, steps: torch.Tensor, rows: torch.Tensor | None = None, eta: float | None = None) -> torch.Tensor:
    """log p_θ(x_{i+1} | x_i, c) of stored transitions under the *current* parameters.

    One batched UNet call over K (row, step) pairs, with gradients (the caller decides
    whether to wrap it in no_grad). ``steps``/``rows``: (K,) long tensors; ``rows=None`` means
    row k for pair k (``steps`` then has length B). ``eta``: the trajectory's own by default.
    """
    log_prob, _mean, std = step_moments(model, traj, steps, rows, eta)
    if traj.kernel == "ddim" and not bool((std > 0).all()):
        raise ValueError("log-probs of DDIM transitions need eta > 0 (eta = 0 is deterministic); sample with eta=1 for training")
    return log_prob


def step_moments(model, traj: Trajectory, steps: torch.Tensor, rows: torch.Tensor | None = None, eta: float | None = None):
    """(log-prob (K,), mean μ_θ (K, C, h, w), std (K,)) of stored transitions under the current
    parameters, as :func:`recompute_log_probs` (one batched UNet call, with gradients); the
    log-prob is NaN where the step is deterministic (std 0)."""
    steps = torch.as_tensor(steps, dtype=torch.long, device=traj.latents.device)
    rows = torch.arange(steps.shape[0], device=steps.device) if rows is None else torch.as_tensor(rows, dtype=torch.long, device=steps.device)
    etas = traj.etas()[steps.cpu()] if eta is None else torch.full(steps.shape, float(eta))
    x = traj.latents[rows, steps].to(model.device)
    nxt = traj.latents[rows, steps + 1].to(model.device)
    t = traj.timesteps.to(model.device)[steps.to(model.device)]
    tp = traj.prev_timesteps.to(model.device)[steps.to(model.device)]
    embeds = traj.prompt_embeds[rows].to(model.device)
    neg = traj.neg_embeds[rows].to(model.device) if traj.neg_embeds is not None else None
    eps, x0 = model.predict_noise(x, t, embeds, neg)
    mean, std = step_distribution(model, x, t, tp, eps, x0, etas)
    std = std.reshape(-1, 1, 1, 1).expand(x.shape[0], 1, 1, 1)
    stochastic = std > 0
    log_prob = gaussian_log_prob(nxt, mean, torch.where(stochastic, std, torch.ones_like(std)))
    return torch.where(stochastic.view(-1), log_prob, torch.full_like(log_prob, float("nan"))), mean, std.view(-1)


def mean_kl(mean: torch.Tensor, other: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, σ²I) ‖ N(μ', σ²I)) = ‖μ − μ'‖²/(2σ²) of two Gaussian steps with one variance (both
    kernels: σ does not depend on the UNet), ‖·‖² *averaged* over each step's latent dimensions like
    the log-probs (module docstring): ``mean``/``other`` (..., C, h, w), ``std`` (...) → (...)."""
    return (mean - other).pow(2).flatten(std.ndim).mean(-1) / (2 * std**2)


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
