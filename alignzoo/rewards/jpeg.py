"""JPEG (in)compressibility, the DDPO toy rewards.

The image is quantised with ``round(x * 255)``, encoded by PIL as JPEG at quality 95, and the
reward is the file size in kB (bytes / 1000): negative for ``jpeg_compressibility`` (smaller
files are better), positive for ``jpeg_incompressibility``. Computed outside torch, so there is
no gradient (``supports_grad = False``).
"""

from __future__ import annotations

import io
from typing import Sequence

import torch

from alignzoo.images import to_uint8
from alignzoo.rewards.base import Reward, register_reward

JPEG_QUALITY = 95


def jpeg_sizes_kb(images: torch.Tensor, quality: int = JPEG_QUALITY) -> list[float]:
    """JPEG size in kB (bytes / 1000) of each image of a (B, 3, H, W) [0, 1] batch."""
    from PIL import Image

    arrays = to_uint8(images).permute(0, 2, 3, 1).cpu().numpy()
    sizes = []
    for arr in arrays:
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
        sizes.append(buf.tell() / 1000.0)
    return sizes


class _JpegReward(Reward):
    reads_prompt = False
    weights_source = "none"
    supports_grad = False
    sign = 1.0

    def __init__(self, device=None, differentiable: bool = False, quality: int = JPEG_QUALITY):
        super().__init__(device=device, differentiable=differentiable)
        if not 1 <= int(quality) <= 100:
            raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
        self.quality = int(quality)

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        sizes = jpeg_sizes_kb(images, self.quality)
        return self.sign * torch.tensor(sizes, dtype=torch.float32, device=images.device)


@register_reward("jpeg_compressibility", "DDPO: minus the JPEG size in kB (quality 95); smaller files score higher")
class JpegCompressibility(_JpegReward):
    sign = -1.0


@register_reward("jpeg_incompressibility", "DDPO: the JPEG size in kB (quality 95); larger files score higher")
class JpegIncompressibility(_JpegReward):
    sign = 1.0
