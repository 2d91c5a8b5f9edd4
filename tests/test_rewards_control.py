"""The `random` control reward: deterministic, in [0, 1), prompt- and image-dependent, no signal."""

from __future__ import annotations

import pytest
import torch

from alignzoo.rewards import get_reward


def _images(b=4, seed=0, h=16, w=16):
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_random_reward_is_deterministic_and_batch_invariant():
    r = get_reward("random")
    x, p = _images(), ["a", "b", "c", "d"]
    s = r(x, p)
    assert s.shape == (4,) and s.dtype == torch.float32
    assert ((s >= 0) & (s < 1)).all()
    assert torch.equal(s, r(x, p))
    assert torch.equal(s, get_reward("random")(x, p))  # a fresh instance: no hidden state
    assert torch.equal(s, torch.cat([r(x[i : i + 1], p[i : i + 1]) for i in range(4)]))


def test_random_reward_depends_on_prompt_image_and_seed():
    r = get_reward("random")
    x = _images(b=1)
    base = r(x, ["a cat"])
    assert r(x, ["a dog"]) != base
    y = x.clone()
    y[0, 0, 0, 0] = (torch.round(y[0, 0, 0, 0] * 255) + (1 if y[0, 0, 0, 0] < 0.5 else -1)) / 255  # one pixel, one level
    assert r(y, ["a cat"]) != base
    assert get_reward("random", seed=1)(x, ["a cat"]) != base
    # sub-quantum changes do not count: the hash is of round(x * 255)
    assert r((torch.round(x * 255) / 255 + 1e-4).clamp(0, 1), ["a cat"]) == r(torch.round(x * 255) / 255, ["a cat"])


def test_random_reward_carries_no_learnable_signal():
    r = get_reward("random")
    x = _images(b=300, seed=3, h=8, w=8)
    s = r(x, ["p"] * 300)
    assert 0.4 < float(s.mean()) < 0.6 and 0.25 < float(s.std()) < 0.33  # ~U(0, 1): std 0.289
    brightness = x.mean(dim=(1, 2, 3))
    assert abs(float(torch.corrcoef(torch.stack([brightness, s]))[0, 1])) < 0.2
    # scores of slightly perturbed images are unrelated to the originals'
    y = (torch.round(x * 255) + 1).clamp(0, 255) / 255
    assert abs(float(torch.corrcoef(torch.stack([s, r(y, ["p"] * 300)]))[0, 1])) < 0.2


def test_random_reward_flags_and_errors():
    r = get_reward("random")
    assert r.reads_prompt and r.supports_grad is False and r.weights_source == "none"
    with pytest.raises(ValueError):
        get_reward("random", differentiable=True)
    with pytest.raises(ValueError):
        r(_images(b=2), ["one"])
    with pytest.raises(ValueError):
        r(_images(b=2))  # reads the prompt: prompts are required
