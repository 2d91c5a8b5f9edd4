"""Images as files: the uint8 rule, labelled grids and side-by-side strips, written with PIL.

Bottom floor of the package graph: rewards (their preprocessing), the sampler CLI, the benchmark
runner and the reports all turn [0, 1] float images into pixels here, with one rounding rule.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats -> uint8 with ``round(x * 255)``, the rule DDPO and the reference scorers use."""
    return (images.detach() * 255).round().clamp(0, 255).to(torch.uint8)


def to_pixels(img: torch.Tensor) -> np.ndarray:
    """(3, H, W) float in [0, 1] → (H, W, 3) uint8 array for PIL."""
    return to_uint8(img.float()).permute(1, 2, 0).cpu().numpy()


def image_grid(
    images: torch.Tensor, row_labels: Sequence[str], col_labels: Sequence[str], out: str | Path, cell: int | None = None, title: str | None = None
) -> Path:
    """``images``: (R, C, 3, H, W) in [0, 1]. Small images are upscaled (nearest) to ``cell`` px."""
    r, c = images.shape[:2]
    if len(row_labels) != r or len(col_labels) != c:
        raise ValueError(f"grid of {r}x{c} images needs {r} row labels and {c} column labels")
    h, w = images.shape[-2:]
    cell = cell or max(h, 96)  # cell height; the width keeps the images' aspect ratio
    cell_w = int(round(cell * w / h))
    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max([int(measure.textlength(s, font=font)) for s in row_labels] + [0]) + 12
    top = 20 + (18 if title else 0)
    pad = 4
    canvas = Image.new("RGB", (label_w + c * (cell_w + pad) + pad, top + r * (cell + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((pad, 2), title, fill="black", font=font)
    for j, lab in enumerate(col_labels):
        x = label_w + pad + j * (cell_w + pad)
        draw.text((x + (cell_w - measure.textlength(lab, font=font)) / 2, top - 16), lab, fill="black", font=font)
    for i, lab in enumerate(row_labels):
        y = top + pad + i * (cell + pad)
        draw.text((4, y + cell / 2 - 6), lab, fill="black", font=font)
        for j in range(c):
            tile = Image.fromarray(to_pixels(images[i, j])).resize((cell_w, cell), Image.NEAREST)
            canvas.paste(tile, (label_w + pad + j * (cell_w + pad), y))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out


def save_strip(images: torch.Tensor, path: Path) -> None:
    """(K, 3, H, W) in [0, 1] → one PNG, the K images side by side (written atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    strip = np.concatenate([to_pixels(img) for img in images], axis=1)
    tmp = path.with_name(path.name + ".tmp.png")
    Image.fromarray(strip).save(tmp)
    os.replace(tmp, path)
