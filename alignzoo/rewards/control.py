"""Control rewards for learning tests.

``random`` gives every (image, prompt) pair a fixed pseudo-random score in [0, 1): a hash of the
quantised image bytes (``round(x * 255)``), its shape, the prompt and a seed. The same pair
always gets the same score, but nearby images get unrelated scores, so there is nothing a
policy can learn from it: fine-tuning on ``random`` measures pure drift (how far an algorithm
moves the model and how much its reported reward rises by chance alone).
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import torch

from alignzoo.images import to_uint8
from alignzoo.rewards.base import Reward, register_reward


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
