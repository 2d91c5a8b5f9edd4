"""JPEG (in)compressibility: the size PIL writes at quality 95, computed independently here."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from alignzoo.rewards import get_reward


def _images(b=3, h=40, w=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    smooth = torch.nn.functional.interpolate(torch.rand(b, 3, 5, 6, generator=g), size=(h, w), mode="bilinear", align_corners=False)
    noise = torch.rand(b, 3, h, w, generator=g)
    mix = torch.linspace(0, 1, b).view(b, 1, 1, 1)  # from smooth to noisy: sizes differ
    return (1 - mix) * smooth + mix * noise


def _pil_kb(x: torch.Tensor) -> list[float]:
    out = []
    for img in x:
        arr = np.clip(np.round(img.permute(1, 2, 0).numpy() * 255.0), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr, mode="RGB").save(buf, "JPEG", quality=95)
        out.append(len(buf.getvalue()) / 1000.0)
    return out


def test_jpeg_rewards_equal_pil_sizes():
    x = _images()
    expected = torch.tensor(_pil_kb(x))
    comp = get_reward("jpeg_compressibility")(x)
    incomp = get_reward("jpeg_incompressibility")(x, ["a", "b", "c"])
    assert comp.shape == (3,) and comp.dtype == torch.float32
    torch.testing.assert_close(incomp, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(comp, -expected, rtol=0, atol=1e-6)
    assert expected[0] < expected[-1]  # noise is less compressible than a smooth image


def test_jpeg_is_batch_invariant_and_deterministic():
    x = _images(b=4, seed=1)
    r = get_reward("jpeg_incompressibility")
    full = r(x)
    assert torch.equal(full, torch.cat([r(x[i : i + 1]) for i in range(4)]))
    assert torch.equal(full, r(x))
    assert not r.reads_prompt and r.supports_grad is False


def test_jpeg_quality_option_changes_size():
    x = _images(b=1, seed=2)
    assert get_reward("jpeg_incompressibility", quality=50)(x) < get_reward("jpeg_incompressibility")(x)
    with pytest.raises(ValueError):
        get_reward("jpeg_incompressibility", quality=0)


def test_jpeg_refuses_differentiable_and_bad_inputs():
    with pytest.raises(ValueError, match="not differentiable"):
        get_reward("jpeg_compressibility", differentiable=True)
    r = get_reward("jpeg_compressibility")
    x = _images(b=2)
    for bad in (x * 3 - 1, x[0], x[:, :2], torch.full_like(x, float("nan")), (x * 255).byte()):
        with pytest.raises(ValueError):
            r(bad)
    with pytest.raises(ValueError):
        r(x, ["only one prompt"])
