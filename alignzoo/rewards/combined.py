"""Weighted sums of rewards: training on several at once.

A combination is named by a spec: reward names joined by ``+``, each with an optional
``@WEIGHT`` (1 when left out), e.g. ``tiny_preference+tiny_aesthetic@0.5`` is
1·tiny_preference + 0.5·tiny_aesthetic. ``alignzoo train --reward a --reward b --reward-weights
1,0.5`` builds the spec ``a+b@0.5``; a suite names it in its ``rewards`` list. A spec is a valid
folder name, as run folders are named after their reward. A single name without ``@`` is that
reward itself, unchanged, so one reward trains exactly as before.

:class:`WeightedSum` is a :class:`~alignzoo.rewards.base.Reward`: its score Σ_k w_k·r_k is what
every algorithm taking scalar rewards trains on. :meth:`WeightedSum.forward_components` also
returns the R rewards r_k (GRPO's GDPO aggregation normalises each within its group before
summing). Each component validates, checks and counts its own calls; the trainer counts one
reward query per scored image, whatever R. Weights must be finite and > 0: to drop a reward,
leave it out; to reverse one, use its opposite (jpeg_incompressibility for jpeg_compressibility).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from alignzoo.rewards.base import REWARDS, Reward

SEP, AT = "+", "@"


def is_combination(spec: str) -> bool:
    return SEP in spec or AT in spec


def parse_combination(spec: str) -> list[tuple[str, float]]:
    """``"a+b@0.5"`` → ``[("a", 1.0), ("b", 0.5)]``, every name registered and weight checked."""
    from alignzoo.rewards.base import list_rewards

    list_rewards()  # registers the built-in rewards
    parts = []
    for part in spec.split(SEP):
        name, at, weight = part.strip().partition(AT)
        if not name:
            raise ValueError(f"reward combination {spec!r}: an empty reward name; write NAME or NAME@WEIGHT joined by '+', e.g. a+b@0.5")
        REWARDS.get(name)  # an unknown name lists the known ones
        parts.append((name, _weight(weight, name, spec) if at else 1.0))
    names = [n for n, _ in parts]
    if len(set(names)) < len(names):
        raise ValueError(f"reward combination {spec!r} names a reward twice; give each reward once, with its weight")
    return parts


def _weight(text: str, name: str, spec: str) -> float:
    try:
        w = float(text)
    except ValueError:
        raise ValueError(f"reward combination {spec!r}: the weight of {name!r} is {text!r}, not a number") from None
    check_weight(w, name)
    return w


def check_weight(w: float, name: str) -> None:
    if not (math.isfinite(w) and w > 0):
        raise ValueError(
            f"reward weight of {name!r} must be a finite number > 0, got {w}; leave a reward out to drop it, or use its opposite reward to reverse it"
        )


def combination_spec(names: Sequence[str], weights: Sequence[float] | str | None = None) -> str:
    """The spec of ``names`` with ``weights`` (numbers or ``"1,0.5"``; None: all 1), checked.
    One reward without weights gives its plain name."""
    names = list(names)
    if not names:
        raise ValueError("name at least one reward: --reward NAME")
    if isinstance(weights, str):
        try:
            weights = [float(w) for w in weights.split(",")]
        except ValueError:
            raise ValueError(f"--reward-weights expects comma-separated numbers, e.g. 1,0.5; got {weights!r}") from None
    if weights is not None and len(weights) != len(names):
        raise ValueError(f"--reward-weights gives {len(weights)} weight(s) for {len(names)} reward(s) ({', '.join(names)}): give one weight per --reward")
    if weights is None and len(names) == 1:
        return names[0]
    weights = [1.0] * len(names) if weights is None else [float(w) for w in weights]
    spec = SEP.join(n if w == 1 else f"{n}{AT}{w:g}" for n, w in zip(names, weights))
    for n, w in zip(names, weights):
        check_weight(w, n)
    parse_combination(spec)
    return spec


def component_kwargs(spec: str, args_by_reward: dict) -> dict:
    """The keyword arguments of reward ``spec`` from per-reward ones (a suite's ``[reward_args]``):
    a reward's own, or for a combination ``{component: its arguments}``."""
    if not is_combination(spec):
        return dict(args_by_reward.get(spec, {}))
    return {name: dict(args_by_reward[name]) for name, _ in parse_combination(spec) if name in args_by_reward}


def check_combination_kwargs(spec: str, kwargs: dict) -> None:
    """A combination's arguments are ``{component: {key: value}}``; each checked by its reward."""
    from alignzoo.rewards.base import check_reward_kwargs

    names = [n for n, _ in parse_combination(spec)]
    for name, args in kwargs.items():
        if name not in names:
            raise ValueError(
                f"reward arguments for {name!r}, which is not one of the rewards of {spec!r} ({', '.join(names)}); write --reward-arg REWARD.key=value"
            )
        if not isinstance(args, dict):
            raise ValueError(
                f"reward arguments of a combination go to one of its rewards: --reward-arg REWARD.key=value (one of {', '.join(names)}), got {name}={args!r}"
            )
        check_reward_kwargs(name, args)


def build_combination(spec: str, device=None, differentiable: bool = False, **kwargs) -> "WeightedSum":
    """A :class:`WeightedSum` of the spec's rewards; ``kwargs`` maps a component to its arguments."""
    check_combination_kwargs(spec, kwargs)
    parts = parse_combination(spec)
    rewards = {n: REWARDS.get(n)(device=device, differentiable=differentiable, **kwargs.get(n, {})) for n, _ in parts}
    return WeightedSum(rewards, [w for _, w in parts], device=device, differentiable=differentiable, spec=spec)


class WeightedSum(Reward):
    """Σ_k w_k·r_k over named rewards; :meth:`forward_components` also gives the r_k."""

    weights_source = "its rewards'"

    def __init__(self, rewards: dict[str, Reward], weights: Sequence[float], device=None, differentiable: bool = False, spec: str | None = None):
        self.supports_grad = all(r.supports_grad for r in rewards.values())
        self.reads_prompt = any(r.reads_prompt for r in rewards.values())
        super().__init__(device=device, differentiable=differentiable)
        if len(weights) != len(rewards):
            raise ValueError(f"{len(weights)} weight(s) for {len(rewards)} reward(s)")
        for n, w in zip(rewards, weights):
            check_weight(float(w), n)
        self.parts = torch.nn.ModuleDict(rewards)
        self.component_names = tuple(rewards)
        self.register_buffer("weights", torch.tensor([float(w) for w in weights], dtype=torch.float32), persistent=False)
        self.name = spec or SEP.join(f"{n}{AT}{float(w):g}" for n, w in zip(rewards, weights))

    def components(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """(B, R) each reward's scores (each validated, checked and counted by its reward)."""
        return torch.stack([r(images, prompts) for r in self.parts.values()], 1)

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return self.components(images, prompts) @ self.weights.to(images.device)

    def forward_components(self, images: torch.Tensor, prompts: Sequence[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(Σ_k w_k·r_k (B,), r (B, R)) from one call of each reward."""
        comps = self.components(images, prompts)
        self.images_scored += int(images.shape[0])
        return comps @ self.weights.to(comps.device), comps
