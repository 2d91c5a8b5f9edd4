"""Control rewards for learning tests.

``random`` gives every (image, prompt) pair a fixed pseudo-random score in [0, 1): a hash of the
quantised image bytes (``round(x * 255)``), its shape, the prompt and a seed. The same pair
always gets the same score, but nearby images get unrelated scores, so there is nothing a
policy can learn from it: fine-tuning on ``random`` measures pure drift (how far an algorithm
moves the model and how much its reported reward rises by chance alone).

``random_direction`` is its differentiable twin, the control for reward-backprop algorithms
(which need a reward gradient, so cannot train on ``random``): r(x, c) = ⟨u, 2x − 1⟩ / √(3HW), with
u ~ N(0, I) drawn from a generator seeded by the same hash of (quantised image, prompt, seed). Its
gradient 2u/√(3HW) is a fixed pseudo-random direction per (image, prompt), unrelated between
images, so the expected gradient is zero: the same back-propagation and optimiser steps as a real
reward, with nothing consistent to learn (values ≈ N(0, mean of (2x − 1)²)).
"""

from __future__ import annotations

import hashlib
import math
from typing import Sequence

import torch

from alignzoo.images import to_uint8
from alignzoo.rewards.base import Reward, register_reward
from alignzoo.runlog import CONTROL


def control_reward(needs_reward_grad: bool) -> str:
    """The reward a control cell trains on: ``random``, or its differentiable twin
    ``random_direction`` for algorithms that back-propagate the reward (reward-backprop, hybrid)."""
    return "random_direction" if needs_reward_grad else CONTROL


def hash_score(image_u8: bytes, shape: tuple[int, ...], prompt: str, seed: int = 0) -> float:
    """A float in [0, 1) from a SHA-256 of the image bytes, its shape, the prompt and the seed."""
    h = hashlib.sha256()
    h.update(f"alignzoo-random/{seed}/{'x'.join(map(str, shape))}/".encode())
    h.update(prompt.encode("utf-8"))
    h.update(b"\x00")
    h.update(image_u8)
    return int.from_bytes(h.digest()[:8], "big") / 2.0**64


@register_reward("random", "control: a fixed pseudo-random score per (image, prompt); no learnable signal")
class RandomReward(Reward):
    """Deterministic hash-based noise in [0, 1); training on it measures pure drift."""

    reads_prompt = True
    weights_source = "none"
    supports_grad = False

    def __init__(self, device=None, differentiable: bool = False, seed: int = 0):
        super().__init__(device=device, differentiable=differentiable)
        self.seed = int(seed)

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        u8 = to_uint8(images).cpu().contiguous()
        vals = [hash_score(u8[i].numpy().tobytes(), tuple(u8[i].shape), prompts[i], self.seed) for i in range(u8.shape[0])]
        return torch.tensor(vals, dtype=torch.float32, device=images.device)


@register_reward("random_direction", "control for reward backprop: a pseudo-random linear score per (image, prompt); differentiable, no learnable signal")
class RandomDirectionReward(RandomReward):
    """⟨u, 2x − 1⟩ / √(3HW) with a direction u seeded per (image, prompt); training on it measures the drift of gradient methods."""

    supports_grad = True

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        u8 = to_uint8(images).cpu().contiguous()
        out = []
        for i in range(u8.shape[0]):
            seed = int(hash_score(u8[i].numpy().tobytes(), tuple(u8[i].shape), prompts[i], self.seed) * 2.0**53)
            u = torch.randn(images.shape[1:], generator=torch.Generator().manual_seed(seed)).to(images.device)
            out.append((u * (2 * images[i] - 1)).sum() / math.sqrt(u.numel()))
        return torch.stack(out)
