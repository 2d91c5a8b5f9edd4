"""The reward protocol: ``reward(images, prompts) -> scores``.

Images are float tensors in [0, 1] with shape (B, 3, H, W) (the zoo's image convention);
``prompts`` is a list of B strings; the result is a float32 tensor of shape (B,) on the
images' device. Rewards run in inference mode unless built with ``differentiable=True``
(LaSRO and reward-backprop algorithms need gradients through the reward).

Each reward counts the images it scored and the seconds it spent, because the benchmarks
report reward cost (SDPO's point is 3 reward queries per trajectory instead of T).
"""

from __future__ import annotations

import contextlib
import time
from typing import Sequence

import torch

from alignzoo.registry import Registry

REWARDS: Registry = Registry("reward")


def register_reward(name: str, summary: str | None = None):
    """Class decorator: ``@register_reward("aesthetic")`` on a :class:`Reward` subclass."""

    def deco(cls):
        cls.name = name
        return REWARDS.register(name, summary)(cls)

    return deco


def get_reward(name: str, **kwargs) -> "Reward":
    """Builds the reward registered as ``name``; unknown names list the known ones, and an
    argument the reward does not take is a ``ValueError`` listing those it does. A weighted
    combination ``a+b@0.5`` (alignzoo.rewards.combined) takes ``{component: its arguments}``."""
    if _is_combination(name):
        from alignzoo.rewards.combined import build_combination

        return build_combination(name, **kwargs)
    check_reward_kwargs(name, {k: v for k, v in kwargs.items() if k != "device"})
    return REWARDS.get(name)(**kwargs)


def _is_combination(name: str) -> bool:
    from alignzoo.rewards.combined import is_combination

    return is_combination(name)


def reward_arguments(name: str) -> list[str] | None:
    """The keyword arguments reward ``name`` takes besides ``device`` (which the zoo sets);
    None when its constructor takes ``**kwargs`` (anything goes)."""
    import inspect

    _import_builtin_rewards()
    params = inspect.signature(REWARDS.get(name).__init__).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.name not in ("self", "device") and p.kind is not p.VAR_POSITIONAL]


def check_reward_kwargs(name: str, kwargs: dict) -> None:
    """Raises ``ValueError`` for arguments reward ``name`` does not take (before building it, so
    a typo in ``--reward-arg`` or a suite's ``[reward_args]`` fails at once, not as a TypeError)."""
    if _is_combination(name):
        from alignzoo.rewards.combined import check_combination_kwargs

        return check_combination_kwargs(name, kwargs)
    accepted = reward_arguments(name)
    unknown = [k for k in kwargs if accepted is not None and k not in accepted]
    if unknown:
        raise ValueError(f"reward {name!r} does not take {', '.join(map(repr, unknown))}; its arguments: {', '.join(accepted) or '(none)'}")


def list_rewards() -> list[str]:
    _import_builtin_rewards()
    return REWARDS.names()


def _import_builtin_rewards() -> None:
    import alignzoo.rewards  # noqa: F401  (registers the built-in rewards)


class RewardError(RuntimeError):
    """A reward produced an invalid value (NaN/inf); the message names the reward."""


class Reward(torch.nn.Module):
    """Base class. Subclasses implement :meth:`score` on validated inputs.

    Class attributes every reward declares:
      name            registry name (set by ``register_reward``)
      reads_prompt    whether the score depends on the prompt
      weights_source  where its weights come from (hub id, file, "none", "trained by alignzoo")
      supports_grad   whether ``differentiable=True`` can give gradients w.r.t. the images
      feature_space   name of the space :meth:`features` maps images into (the reward's image
                      backbone), None for rewards without one; the benchmarks measure diversity there
    """

    name: str = "reward"
    reads_prompt: bool = False
    weights_source: str = "none"
    supports_grad: bool = True
    feature_space: str | None = None

    def __init__(self, device: str | torch.device | None = None, differentiable: bool = False):
        super().__init__()
        if differentiable and not self.supports_grad:
            raise ValueError(
                f"reward {self.name!r} is not differentiable (it is computed outside torch); use it with an algorithm that needs only reward values"
            )
        self.differentiable = differentiable
        self._device = torch.device(device) if device is not None else torch.device("cpu")
        self.images_scored = 0
        self.seconds = 0.0

    @property
    def device(self) -> torch.device:
        return self._device

    def to(self, *args, **kwargs):  # keep track of the device we were moved to
        out = super().to(*args, **kwargs)
        for a in list(args) + [kwargs.get("device")]:
            if isinstance(a, (str, torch.device)):
                self._device = torch.device(a)
        return out

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, images: torch.Tensor, prompts: Sequence[str] | None = None) -> torch.Tensor:
        prompts = validate_inputs(images, prompts, needs_prompts=self.reads_prompt)
        start = time.perf_counter()
        ctx = contextlib.nullcontext() if self.differentiable else torch.inference_mode()
        with ctx:
            scores = self.score(images, prompts)
        scores = scores.reshape(-1).float()
        if scores.shape[0] != images.shape[0]:
            raise RewardError(f"reward {self.name!r} returned {scores.shape[0]} scores for {images.shape[0]} images")
        if not torch.isfinite(scores).all():
            bad = (~torch.isfinite(scores)).nonzero().flatten().tolist()
            raise RewardError(f"reward {self.name!r} returned NaN/inf scores for images at indices {bad}")
        self.images_scored += int(images.shape[0])
        self.seconds += time.perf_counter() - start
        return scores

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, D) float32 image features of the reward's backbone (no gradients; not counted as
        reward queries). Rewards without a backbone (``feature_space`` None) raise ValueError."""
        if not self.feature_space:
            raise ValueError(f"reward {self.name!r} has no image feature backbone (feature_space is None)")
        validate_inputs(images, None, needs_prompts=False)
        with torch.inference_mode():
            return self.embed_features(images).reshape(images.shape[0], -1).float()

    def embed_features(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def reset_counters(self) -> None:
        self.images_scored = 0
        self.seconds = 0.0


def validate_inputs(images, prompts, needs_prompts: bool = True) -> list[str]:
    """Checks the image convention; returns prompts as a list (empty strings if None)."""
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a torch.Tensor of shape (B, 3, H, W) in [0, 1], got {type(images).__name__}")
    if images.ndim != 4:
        raise ValueError(f"images must have rank 4 (B, 3, H, W), got shape {tuple(images.shape)}")
    if images.shape[1] != 3:
        raise ValueError(f"images must have 3 channels in dim 1 (B, 3, H, W), got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"images must be a float tensor in [0, 1], got dtype {images.dtype}; divide uint8 images by 255")
    with torch.no_grad():
        if not torch.isfinite(images).all():
            raise ValueError("images contain NaN or inf values")
        lo, hi = float(images.min()), float(images.max())
    if lo < -1e-4 or hi > 1 + 1e-4:
        raise ValueError(f"images must lie in [0, 1], got values in [{lo:.3f}, {hi:.3f}]; convert from [-1, 1] with (x + 1) / 2 and clamp")
    if prompts is None:
        if needs_prompts:
            raise ValueError("this reward reads the prompt: pass one prompt per image")
        return [""] * images.shape[0]
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if len(prompts) != images.shape[0]:
        raise ValueError(f"got {len(prompts)} prompts for {images.shape[0]} images: pass one prompt per image")
    return prompts
