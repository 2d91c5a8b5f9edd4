"""Procedural renderer of tiny-world scenes (32x32 RGB) and the aesthetic degradations.

Shapes are drawn anti-aliased from signed distance functions (coverage = clip(0.5 - d, 0, 1)
at pixel centres) on a light background with a random tint and a soft gradient. Object size
depends on the count; objects sit on evenly spaced slots along the named region (a column for
left/right, a row for top/bottom/centre) with a small jitter, never overlapping and never cut
by the border.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from alignzoo.tinyworld.grammar import Scene, parse_prompt

SIZE = 32

# base RGB of each colour (0-255); each render jitters it a little
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (35, 160, 55),
    "blue": (35, 75, 215),
    "yellow": (235, 200, 20),
    "purple": (135, 45, 175),
    "orange": (245, 125, 20),
}
# object "radius" range (half-extent in pixels) per count
_RADIUS = {1: (5.6, 6.6), 2: (4.4, 5.2), 3: (3.3, 3.8)}
# slots along the layout axis per count
_SLOTS = {1: (16.0,), 2: (9.5, 22.5), 3: (5.5, 16.0, 26.5)}
# (axis, cross coordinate): axis "x" = a row, "y" = a column
_REGION = {"center": ("x", 16.0), "top": ("x", 8.5), "bottom": ("x", 23.5), "left": ("y", 8.5), "right": ("y", 23.5)}
_JITTER = 1.2  # across the layout axis
_SLOT_JITTER = 0.8  # along it (keeps neighbours apart)
_MARGIN = 1.0

_YY, _XX = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) + 0.5
_TRI_NORMALS = np.array([[0.0, 1.0], [0.8660254, -0.5], [-0.8660254, -0.5]], dtype=np.float32)


def _extent(shape: str, r: float) -> tuple[float, float, float, float]:
    """(left, right, up, down) extent of a shape around its centre."""
    if shape == "circle":
        return r, r, r, r
    if shape == "square":
        s = 0.88 * r
        return s, s, s, s
    big = 1.2 * r  # triangle circumradius; inradius = big / 2
    return 0.866 * big, 0.866 * big, big, big / 2


def _sdf(shape: str, cx: float, cy: float, r: float) -> np.ndarray:
    dx, dy = _XX - cx, _YY - cy
    if shape == "circle":
        return np.sqrt(dx * dx + dy * dy) - r
    if shape == "square":
        s = 0.88 * r
        qx, qy = np.abs(dx) - s, np.abs(dy) - s
        outside = np.sqrt(np.maximum(qx, 0) ** 2 + np.maximum(qy, 0) ** 2)
        return outside + np.minimum(np.maximum(qx, qy), 0)
    big = 1.2 * r
    # centroid at (cx, cy); upward triangle (image y grows downwards)
    d = np.stack([_TRI_NORMALS[i, 0] * dx + _TRI_NORMALS[i, 1] * dy for i in range(3)])
    return d.max(0) - big / 2


def layout(scene: Scene, rng: np.random.Generator) -> list[tuple[float, float, float]]:
    """Object (cx, cy, r) for a scene: slots along the region plus jitter, kept inside the canvas."""
    axis, cross = _REGION[scene.position]
    lo, hi = _RADIUS[scene.count]
    r = float(rng.uniform(lo, hi))
    left, right, up, down = _extent(scene.shape, r)
    objs = []
    for slot in _SLOTS[scene.count]:
        a = slot + rng.uniform(-_SLOT_JITTER, _SLOT_JITTER)
        c = cross + rng.uniform(-_JITTER, _JITTER)
        cx, cy = (a, c) if axis == "x" else (c, a)
        cx = float(np.clip(cx, left + _MARGIN, SIZE - right - _MARGIN))
        cy = float(np.clip(cy, up + _MARGIN, SIZE - down - _MARGIN))
        objs.append((cx, cy, r))
    return objs


def background(rng: np.random.Generator) -> np.ndarray:
    """A light background (float RGB in [0, 255], (32, 32, 3)): random tint plus a soft gradient."""
    base = np.array([234.0, 233.0, 226.0]) + rng.uniform(-12, 10, size=3)
    angle = rng.uniform(0, 2 * np.pi)
    amp = rng.uniform(0, 10)
    ramp = ((_XX - 16) * np.cos(angle) + (_YY - 16) * np.sin(angle)) / 16.0
    return base[None, None, :] + amp * ramp[..., None]


def render(scene: Scene | str, rng: np.random.Generator) -> np.ndarray:
    """Renders a scene (or a prompt) as uint8 RGB (32, 32, 3)."""
    if isinstance(scene, str):
        scene = parse_prompt(scene)
    img = background(rng)
    colour = np.clip(np.array(COLOUR_RGB[scene.colour], dtype=np.float64) + rng.normal(0, 7, size=3), 0, 255)
    cover = np.zeros((SIZE, SIZE), dtype=np.float32)
    for cx, cy, r in layout(scene, rng):
        cover = np.maximum(cover, np.clip(0.5 - _sdf(scene.shape, cx, cy, r), 0.0, 1.0))
    img = img * (1 - cover[..., None]) + colour[None, None, :] * cover[..., None]
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def render_batch(prompts: Sequence[str | Scene], seed: int = 0) -> torch.Tensor:
    """Renders prompts as a float tensor (B, 3, 32, 32) in [0, 1]; deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    arr = np.stack([render(p, rng) for p in prompts])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(255.0)


# --- degradations (what the tiny aesthetic reward learns to dislike) -------------------------

DEGRADATIONS: tuple[str, ...] = ("blur", "noise", "washed", "offcentre")


def _as_severity(severity, b: int, device) -> torch.Tensor:
    s = torch.as_tensor(severity, dtype=torch.float32, device=device).reshape(-1)
    if s.numel() == 1:
        s = s.expand(b)
    if s.numel() != b or (s < 0).any() or (s > 1).any():
        raise ValueError(f"severity must be one value or one per image, in [0, 1]; got {severity!r}")
    return s


def _blur(x: torch.Tensor, s: torch.Tensor, gen) -> torch.Tensor:
    # separable Gaussian as a (B, 32, 32) matrix per image, borders replicated
    n = x.shape[-1]
    idx = torch.arange(n, dtype=torch.float32, device=x.device)
    taps = torch.arange(-4, 5, dtype=torch.float32, device=x.device)
    sigma = (2.2 * s).clamp_min(1e-3)
    w = torch.exp(-0.5 * (taps[None] / sigma[:, None]) ** 2)
    w = w / w.sum(1, keepdim=True)  # (B, 9)
    src = (idx[:, None] + taps[None]).clamp(0, n - 1).long()  # (n, 9): replicate padding
    onehot = torch.nn.functional.one_hot(src, n).float()  # (n, 9, n)
    mat = torch.einsum("bk,ikj->bij", w, onehot)  # (B, n, n): row i mixes source columns j
    mat = mat[:, None]
    return torch.matmul(torch.matmul(mat, x), mat.transpose(-1, -2))


def _noise(x: torch.Tensor, s: torch.Tensor, gen) -> torch.Tensor:
    n = torch.randn(x.shape, generator=gen, device=x.device)
    return (x + 0.3 * s.view(-1, 1, 1, 1) * n).clamp(0, 1)


def _washed(x: torch.Tensor, s: torch.Tensor, gen) -> torch.Tensor:
    s = s.view(-1, 1, 1, 1)
    lum = x.mean(1, keepdim=True)
    y = torch.lerp(x, lum.expand_as(x), 0.75 * s)  # desaturate
    return torch.lerp(y, torch.full_like(y, 0.92), 0.55 * s)  # and fade towards white


def _offcentre(x: torch.Tensor, s: torch.Tensor, gen) -> torch.Tensor:
    """Pushes the content towards the border it is nearest to, so objects get cut off."""
    b = x.shape[0]
    bg = x[:, :, [0, 0, -1, -1], [0, -1, 0, -1]].median(-1).values  # (B, 3)
    sal = (x - bg[:, :, None, None]).abs().sum(1)  # (B, H, W)
    sal = (sal > 0.25).float() + 1e-6
    coords = torch.arange(SIZE, dtype=torch.float32, device=x.device) + 0.5 - SIZE / 2
    mx = (sal.sum(1) * coords).sum(1) / sal.sum((1, 2))
    my = (sal.sum(2) * coords).sum(1) / sal.sum((1, 2))
    rand = torch.rand(b, generator=gen, device=x.device) * 2 * np.pi
    norm = torch.sqrt(mx**2 + my**2)
    use_rand = norm < 2.0
    dx = torch.where(use_rand, torch.cos(rand), mx / norm.clamp_min(1e-6))
    dy = torch.where(use_rand, torch.sin(rand), my / norm.clamp_min(1e-6))
    shift = 14.0 * s
    # translate by (dx, dy) * shift with a replicated border (grid_sample, normalised coords)
    theta = torch.zeros(b, 2, 3, device=x.device)
    theta[:, 0, 0] = 1
    theta[:, 1, 1] = 1
    theta[:, 0, 2] = -dx * shift * 2 / SIZE
    theta[:, 1, 2] = -dy * shift * 2 / SIZE
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


_DEGRADE_FNS = {"blur": _blur, "noise": _noise, "washed": _washed, "offcentre": _offcentre}


def degrade(images: torch.Tensor, kind: str, severity, generator: torch.Generator | None = None) -> torch.Tensor:
    """Applies one degradation (``DEGRADATIONS``) with severity in [0, 1] (one value or one per
    image) to float images (B, 3, 32, 32) in [0, 1]; severity 0 leaves an image unchanged."""
    if kind not in _DEGRADE_FNS:
        raise ValueError(f"unknown degradation {kind!r}; known: {', '.join(DEGRADATIONS)}")
    s = _as_severity(severity, images.shape[0], images.device)
    out = _DEGRADE_FNS[kind](images, s, generator)
    keep = (s == 0).view(-1, 1, 1, 1)
    return torch.where(keep, images, out).clamp(0, 1)


def to_pil(image):
    """A (3, H, W) float tensor in [0, 1] or a (H, W, 3) uint8 array as a PIL image."""
    from PIL import Image

    if isinstance(image, torch.Tensor):
        image = (image.detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(image)
