"""Dense rewards from a few queried steps (SDPO paper, §3.2, eqs. 9–11), their discounted
returns (eq. 13) and the stepwise importance weights (eq. 14).

A trajectory's reward is queried at a few steps' clean predictions x̂0 (first, an anchor, last);
every other step gets the similarity-weighted mean of the queried rewards. Sampling order
(index 0 = the first, noisiest step), as everywhere in the zoo (alignzoo/models/sampling.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cosine_to(x0: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """cos(x̂0_i, ref) for every step: x0 (B, T, ...) and ref (B, ...) → (B, T)  (eq. 9)."""
    return F.cosine_similarity(x0.flatten(2), ref.flatten(1)[:, None, :], dim=2)


def adaptive_anchor(x0: torch.Tensor) -> torch.Tensor:
    """argmin over interior steps of Sim_first + Sim_last (eq. 10): (B,) sampling-order index.

    Eq. 10 restricts t to {1..T−2}; the public code (pipeline_with_logprob_sdpo.py) takes the
    argmin over all T steps. The two differ when every interior x̂0 lies "between" the ends
    (e.g. Sim(first, last) ≈ 0 and all interior sums > 1): the end steps' sum is
    1 + Sim(first, last), so the public code then picks the first or last step as anchor and its
    third query duplicates one of the other two. We keep the paper's interior-only anchor."""
    t = x0.shape[1]
    total = cosine_to(x0, x0[:, 0]) + cosine_to(x0, x0[:, -1])
    return total[:, 1 : t - 1].argmin(1) + 1


def similarity_weighted_rewards(x0: torch.Tensor, query_steps: torch.Tensor, query_rewards: torch.Tensor, floor: float = 0.0) -> torch.Tensor:
    """Eq. 11 generalised to Q queries: R̂_i = Σ_q R_q·Sim(i, q) / Σ_q Sim(i, q); query steps keep R_q.

    x0 (B, T, ...); query_steps, query_rewards (B, Q). Returns (B, T).
    """
    b = x0.shape[0]
    refs = x0[torch.arange(b)[:, None], query_steps]  # (B, Q, ...)
    sims = torch.stack([cosine_to(x0, refs[:, q]) for q in range(query_steps.shape[1])], 2)  # (B, T, Q)
    w = sims.clamp(min=floor)
    den = w.sum(2, keepdim=True)
    w = torch.where(den > 1e-8, w / den.clamp(min=1e-8), torch.full_like(w, 1.0 / w.shape[2]))
    dense = (w * query_rewards[:, None, :]).sum(2)
    dense[torch.arange(b)[:, None], query_steps] = query_rewards  # query steps keep their real reward
    return dense


def discounted_returns(rewards: torch.Tensor, gamma: float | None) -> torch.Tensor:
    """Eq. 13 in sampling order: G_i = Σ_{k≥0} γ^k R̂_{i+k}; ``gamma=None`` returns R̂."""
    if gamma is None:
        return rewards.clone()
    out = torch.empty_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for i in range(rewards.shape[1] - 1, -1, -1):
        running = rewards[:, i] + gamma * running
        out[:, i] = running
    return out


def importance_weights(num_steps: int, lam: float, weighting: str = "decay") -> torch.Tensor:
    """λ^(T−t−1) = λ^i for sampling index i ("decay"), or the reversed λ^(T−1−i)."""
    i = torch.arange(num_steps, dtype=torch.float32)
    if weighting == "decay":
        return lam**i
    if weighting == "reversed":
        return lam ** (num_steps - 1 - i)
    raise ValueError(f"unknown weighting {weighting!r}: choose decay or reversed")
