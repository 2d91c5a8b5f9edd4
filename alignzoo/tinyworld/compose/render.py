"""Renderer of the compositional tiny world: scenes -> 32x32 RGB floats in [0, 1].

Shapes are drawn anti-aliased from signed distance functions (coverage = clip(0.5 - d, 0, 1)
at pixel centres), in scene order, with the scene's :class:`Style`:

- background: grey of brightness 0.08 + 0.84 x ``background``, tinted towards hue ``bg_hue``
  by 0.35 x ``bg_tint``; with an ``rng`` a faint linear gradient (amplitude <= 0.04) is added;
- object colour: the colour's base RGB pulled towards its own luminance, chroma factor
  0.4 + 0.6 x ``saturation`` (0 stays recognisable); with an ``rng`` a small jitter (sd 0.02);
- outline: a 1 px band inside the edge darkened towards black by ``outline``.

Without ``rng`` a render is a pure function of the scene; ``render_batch(scenes, seed)`` is
deterministic in the seed. Degradations (what generated images look like, for the judges'
augmentation and the degraded accuracy): blur and noise from the first tiny world, and a
colour shift (per-channel gain and offset).
"""

from __future__ import annotations

import colorsys
from typing import Sequence

import numpy as np
import torch

from alignzoo.tinyworld.compose.grammar import IMAGE_SIZE, Scene
from alignzoo.tinyworld.render import SIZE as _FIRST_WORLD_SIZE
from alignzoo.tinyworld.render import _as_severity, _blur, _noise, _sdf

SIZE = IMAGE_SIZE  # 32: four counted shapes fit (BASE_SIZE[4] = 3.8 px half-extent)

COLOUR_RGB: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.13, 0.13),
    "green": (0.13, 0.66, 0.22),
    "blue": (0.14, 0.30, 0.88),
    "yellow": (0.94, 0.80, 0.08),
    "purple": (0.58, 0.18, 0.74),
}
OUTLINE_WIDTH = 1.0
DARK = 0.05

_YY, _XX = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) + 0.5
assert SIZE == _FIRST_WORLD_SIZE, "sdf() draws on the first world's grid"


def sdf(shape: str, cx: float, cy: float, r: float) -> np.ndarray:
    """Signed distance (px, negative inside) of a shape: the first world's shapes, on the same 32-px grid."""
    return _sdf(shape, cx, cy, r)


def object_rgb(colour: str, saturation: float) -> np.ndarray:
    base = np.array(COLOUR_RGB[colour], dtype=np.float32)
    lum = float(base @ np.array([0.299, 0.587, 0.114], dtype=np.float32))
    return lum + (0.4 + 0.6 * saturation) * (base - lum)


def background(style, rng: np.random.Generator | None = None) -> np.ndarray:
    v = 0.08 + 0.84 * style.background
    hue = np.array(colorsys.hsv_to_rgb(style.bg_hue, 0.6, 1.0), dtype=np.float32)
    tinted = np.clip(v * hue / hue.mean(), 0, 1)
    base = v + 0.35 * style.bg_tint * (tinted - v)
    img = np.broadcast_to(base, (SIZE, SIZE, 3)).astype(np.float32)
    if rng is not None:
        angle, amp = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.04)
        ramp = ((_XX - SIZE / 2) * np.cos(angle) + (_YY - SIZE / 2) * np.sin(angle)) / (SIZE / 2)
        img = img + amp * ramp[..., None]
    return img


def render(scene: Scene, rng: np.random.Generator | None = None) -> np.ndarray:
    """(SIZE, SIZE, 3) float32 in [0, 1]."""
    st = scene.style
    img = background(st, rng)
    for ob in scene.objects:
        col = object_rgb(ob.colour, st.saturation)
        if rng is not None:
            col = col + rng.normal(0, 0.02, size=3).astype(np.float32)
        d = sdf(ob.shape, ob.cx, ob.cy, ob.size)
        cover = np.clip(0.5 - d, 0.0, 1.0)[..., None]
        band = cover - np.clip(0.5 - (d + OUTLINE_WIDTH), 0.0, 1.0)[..., None]
        img = img * (1 - cover) + np.clip(col, 0, 1) * cover
        w = st.outline * band
        img = img * (1 - w) + DARK * w
    return np.clip(img, 0, 1).astype(np.float32)


def render_batch(scenes: Sequence[Scene], seed: int = 0) -> torch.Tensor:
    """(N, 3, SIZE, SIZE) float tensor in [0, 1]; deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    if not scenes:
        return torch.zeros(0, 3, SIZE, SIZE)
    arr = np.stack([render(s, rng) for s in scenes])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


# ------------------------------------------------------------------------------ degradations

DEGRADATIONS: tuple[str, ...] = ("blur", "noise", "colour_shift")


def _colour_shift(x: torch.Tensor, s: torch.Tensor, gen) -> torch.Tensor:
    """Per-image channel gains 1 + 0.25 s N(0, 1) and offsets 0.06 s N(0, 1)."""
    b = x.shape[0]
    gain = 1 + 0.25 * s.view(-1, 1, 1, 1) * torch.randn(b, 3, 1, 1, generator=gen, device=x.device)
    off = 0.06 * s.view(-1, 1, 1, 1) * torch.randn(b, 3, 1, 1, generator=gen, device=x.device)
    return (x * gain + off).clamp(0, 1)


_FNS = {"blur": _blur, "noise": _noise, "colour_shift": _colour_shift}


def degrade(images: torch.Tensor, kind: str, severity, generator: torch.Generator | None = None) -> torch.Tensor:
    """One degradation of :data:`DEGRADATIONS` with severity in [0, 1] (one value or one per
    image) on (B, 3, H, W) images in [0, 1]; severity 0 leaves an image unchanged. Blur's
    sigma is 2.2 x severity px, noise's sd 0.3 x severity."""
    if kind not in _FNS:
        raise ValueError(f"unknown degradation {kind!r}; known: {', '.join(DEGRADATIONS)}")
    s = _as_severity(severity, images.shape[0], images.device)
    out = _FNS[kind](images, s, generator)
    keep = (s == 0).view(-1, 1, 1, 1)
    return torch.where(keep, images, out).clamp(0, 1)


def random_degrade(images: torch.Tensor, rng: np.random.Generator, gen: torch.Generator, p_clean: float = 0.3, max_severity: float = 1.0) -> torch.Tensor:
    """Each image: clean with probability ``p_clean``, else one or two random degradations with
    severity U(0, max_severity) (the judges' augmentation)."""
    b = images.shape[0]
    x = images
    for _ in range(2):
        kind = rng.integers(0, len(DEGRADATIONS), size=b)
        active = rng.random(b) >= p_clean
        for k, name in enumerate(DEGRADATIONS):
            sev = np.where(active & (kind == k), rng.uniform(0, max_severity, size=b), 0.0)
            if sev.any():
                x = degrade(x, name, torch.tensor(sev, dtype=torch.float32), gen)
        p_clean = 1 - 0.35 * (1 - p_clean)  # the second degradation is rarer
    return x


def to_pil(image, zoom: int = 1):
    from PIL import Image

    if isinstance(image, torch.Tensor):
        image = image.detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    img = Image.fromarray((np.asarray(image) * 255).round().astype(np.uint8))
    return img.resize((img.width * zoom, img.height * zoom), Image.NEAREST) if zoom > 1 else img
