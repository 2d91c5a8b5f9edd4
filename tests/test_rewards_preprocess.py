"""Tensor preprocessing against the reference processors (transformers, open_clip, torchvision)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from alignzoo.rewards.preprocess import CLIP_STD, ImageTransform, center_crop, resized_shape

STD = torch.tensor(CLIP_STD).view(3, 1, 1)
SIZES = [(40, 56), (300, 261), (512, 512), (97, 224)]


def _image(h, w, seed=0):
    """uint8-exact [0, 1] image with smooth regions and sharp edges (bicubic overshoot)."""
    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.rand(1, 3, max(h // 10, 2), max(w // 10, 2), generator=g), size=(h, w), mode="bilinear")
    x[..., h // 3 : h // 2, :] = (x[..., h // 3 : h // 2, :] > 0.5).float()
    return torch.round(x.clamp(0, 1) * 255) / 255


def _pil(x):
    return Image.fromarray((x[0] * 255).round().byte().permute(1, 2, 0).numpy())


def _pixel_diff(ours, ref):
    d = ((ours.reshape(3, *ours.shape[-2:]) - ref.reshape(3, *ref.shape[-2:])) * STD).abs() * 255
    return float(d.max()), float(d.mean())


@pytest.mark.parametrize("h,w", SIZES)
def test_matches_transformers_clip_processors(h, w):
    from transformers import CLIPImageProcessor, CLIPImageProcessorPil

    x = _image(h, w)
    ours = ImageTransform(crop_rounding="floor")(x)
    assert ours.shape == (1, 3, 224, 224) and ours.dtype == torch.float32
    for proc in (CLIPImageProcessorPil(), CLIPImageProcessor()):
        ref = torch.as_tensor(np.asarray(proc(_pil(x), return_tensors="pt")["pixel_values"]))
        mx, mean = _pixel_diff(ours, ref)
        assert mx <= 1.5 and mean < 0.5, (type(proc).__name__, mx, mean)


@pytest.mark.parametrize("h,w", SIZES)
def test_matches_open_clip_transform(h, w):
    import open_clip

    x = _image(h, w, seed=1)
    ref = open_clip.image_transform(224, is_train=False)(_pil(x))
    mx, mean = _pixel_diff(ImageTransform(crop_rounding="round")(x), ref)
    assert mx <= 1.5 and mean < 0.5, (mx, mean)


def test_crop_rounding_follows_each_library_exactly():
    """224 x 227: no resize, a 3-pixel margin: transformers floors (offset 1), torchvision rounds (2)."""
    import open_clip
    from transformers import CLIPImageProcessorPil

    x = _image(224, 227, seed=2)
    ref_hf = torch.as_tensor(np.asarray(CLIPImageProcessorPil()(_pil(x), return_tensors="pt")["pixel_values"]))
    ref_tv = open_clip.image_transform(224, is_train=False)(_pil(x))
    floor, rnd = ImageTransform(crop_rounding="floor")(x), ImageTransform(crop_rounding="round")(x)
    assert _pixel_diff(floor, ref_hf)[0] < 1e-3
    assert _pixel_diff(rnd, ref_tv)[0] < 1e-3
    assert _pixel_diff(floor, ref_tv)[0] > 1  # the rules really differ here
    with pytest.raises(ValueError):
        center_crop(x, (224, 224), rounding="nearest")


def test_resized_shape_rule():
    assert resized_shape(512, 512, 224) == (224, 224)
    assert resized_shape(300, 261, 224) == (257, 224)  # int(224 * 300 / 261) = 257
    assert resized_shape(40, 56, 224) == (224, 313)


def test_batched_differentiable_and_on_device():
    x = torch.cat([_image(64, 80, seed=s) for s in range(3)]).requires_grad_(True)
    t = ImageTransform()
    out = t(x)
    assert out.shape == (3, 3, 224, 224)
    torch.testing.assert_close(out[1:2], t(x[1:2].detach()))
    out.square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_from_processor_config():
    cfg = {
        "size": {"shortest_edge": 256},
        "crop_size": {"height": 240, "width": 240},
        "image_mean": [0.5] * 3,
        "image_std": [0.25] * 3,
        "resample": 3,
        "do_center_crop": True,
    }
    t = ImageTransform.from_processor_config(cfg)
    assert (t.size, t.crop, t.mean, t.std) == (256, (240, 240), (0.5,) * 3, (0.25,) * 3)
    assert t(torch.full((1, 3, 300, 400), 0.5)).shape == (1, 3, 240, 240)
    with pytest.raises(ValueError, match="bicubic"):
        ImageTransform.from_processor_config(dict(cfg, resample=2))
