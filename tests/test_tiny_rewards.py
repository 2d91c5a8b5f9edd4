"""The tiny world's reward models (committed weights): accuracy, ranking, gradients, invariances."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alignzoo.rewards import get_reward, list_rewards
from alignzoo.rewards.tiny import TinyAestheticReward, TinyAlignmentReward, evaluate_attribute_accuracy
from alignzoo.tinyworld.grammar import COLOURS, Scene, all_scenes, make_prompt, seen_prompts
from alignzoo.tinyworld.render import DEGRADATIONS, degrade, render_batch

HELD_OUT_SEED = 90210  # never used in training (training renders come from seeds 0..4)


@pytest.fixture(scope="module")
def alignment():
    return TinyAlignmentReward()


@pytest.fixture(scope="module")
def aesthetic():
    return TinyAestheticReward()


def test_registered_with_metadata():
    assert {"tiny_alignment", "tiny_aesthetic"} <= set(list_rewards())
    a, b = get_reward("tiny_alignment"), get_reward("tiny_aesthetic")
    assert isinstance(a, TinyAlignmentReward) and isinstance(b, TinyAestheticReward)
    assert a.reads_prompt and not b.reads_prompt
    assert a.supports_grad and b.supports_grad
    assert "alignzoo tinyworld train --stage rewards" in a.weights_source


def test_alignment_accuracy_on_fresh_renders(alignment):
    scenes = all_scenes() * 2
    prompts = [make_prompt(s) for s in scenes]
    images = render_batch(scenes, seed=HELD_OUT_SEED)
    acc = evaluate_attribute_accuracy(images, prompts, reward=alignment)
    for head in ("colour", "shape", "count", "position"):
        assert acc[head] >= 0.95, (head, acc)
    assert acc["all"] >= 0.9 and acc["n"] == len(scenes)
    scores = alignment(images, prompts)
    assert scores.shape == (len(scenes),) and float(scores.min()) >= 0 and float(scores.max()) <= 1
    assert float(scores.mean()) > 0.8


def test_alignment_prefers_the_prompted_colour(alignment):
    scenes = all_scenes()
    prompts = [make_prompt(s) for s in scenes]
    right = render_batch(scenes, seed=HELD_OUT_SEED + 1)
    other = [Scene(COLOURS[(COLOURS.index(s.colour) + 1) % len(COLOURS)], s.shape, s.count, s.position) for s in scenes]
    wrong = render_batch(other, seed=HELD_OUT_SEED + 1)
    s_right, s_wrong = alignment(right, prompts), alignment(wrong, prompts)
    assert float((s_right > s_wrong).float().mean()) >= 0.98
    assert float((s_right - s_wrong).mean()) > 0.15


def test_alignment_score_falls_as_attributes_go_wrong(alignment):
    p = "two blue squares on the left"
    imgs = render_batch([p, "two red squares on the left", "two red circles on the left", "three red circles at the top"] * 4, seed=HELD_OUT_SEED)
    s = alignment(imgs, [p] * 16).view(4, 4).mean(0)
    assert s[0] > s[1] > s[2] > s[3]


def test_aesthetic_ranks_clean_above_degraded(aesthetic):
    rng = np.random.default_rng(HELD_OUT_SEED)
    gen = torch.Generator().manual_seed(HELD_OUT_SEED)
    clean = render_batch([make_prompt(all_scenes()[i]) for i in rng.integers(0, 270, size=128)], seed=HELD_OUT_SEED)
    s_clean = aesthetic(clean)
    wins = []
    for kind in DEGRADATIONS:
        sev = torch.tensor(rng.uniform(0.3, 1.0, size=128), dtype=torch.float32)
        s_bad = aesthetic(degrade(clean, kind, sev, gen))
        win = s_clean > s_bad
        assert float(win.float().mean()) >= 0.9, kind
        wins.append(win)
    assert float(torch.cat(wins).float().mean()) >= 0.95
    assert float(s_clean.mean()) > 0.8


def test_aesthetic_is_smooth_in_severity(aesthetic):
    clean = render_batch(seen_prompts()[:32], seed=HELD_OUT_SEED)
    for kind in ("blur", "washed"):
        means = [float(aesthetic(degrade(clean, kind, s)).mean()) for s in (0.0, 0.25, 0.5, 0.75, 1.0)]
        assert all(a > b for a, b in zip(means, means[1:])), (kind, means)


@pytest.mark.parametrize("name", ["tiny_alignment", "tiny_aesthetic"])
def test_gradients_flow_to_the_images(name):
    reward = get_reward(name, differentiable=True)
    prompts = seen_prompts()[:4]
    images = render_batch(prompts, seed=HELD_OUT_SEED).requires_grad_(True)
    scores = reward(images, prompts)
    assert scores.requires_grad
    scores.sum().backward()
    g = images.grad
    assert g is not None and torch.isfinite(g).all() and float(g.abs().sum()) > 0
    assert all(not p.requires_grad for p in reward.parameters())


def test_not_differentiable_by_default(alignment):
    images = render_batch(seen_prompts()[:2], seed=0).requires_grad_(True)
    assert not alignment(images, seen_prompts()[:2]).requires_grad


@pytest.mark.parametrize("name", ["tiny_alignment", "tiny_aesthetic"])
def test_batch_size_invariance(name):
    reward = get_reward(name)
    prompts = seen_prompts()[:8]
    images = render_batch(prompts, seed=HELD_OUT_SEED)
    together = reward(images, prompts)
    alone = torch.cat([reward(images[i : i + 1], prompts[i : i + 1]) for i in range(8)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


def test_other_resolutions_are_resized(alignment, aesthetic):
    prompts = seen_prompts()[:8]
    images = render_batch(prompts, seed=HELD_OUT_SEED)
    big = torch.nn.functional.interpolate(images, scale_factor=4, mode="nearest")
    torch.testing.assert_close(alignment(big, prompts), alignment(images, prompts), atol=1e-4, rtol=0)
    torch.testing.assert_close(aesthetic(big), aesthetic(images), atol=1e-4, rtol=0)
    smooth = torch.nn.functional.interpolate(images, size=(48, 48), mode="bilinear", align_corners=False)
    torch.testing.assert_close(alignment(smooth, prompts), alignment(images, prompts), atol=0.05, rtol=0)
    small = torch.nn.functional.interpolate(images, size=(24, 24), mode="area")
    assert alignment(small, prompts).shape == (8,)


def test_prompt_errors(alignment):
    images = render_batch(["a red circle"], seed=0)
    with pytest.raises(ValueError, match="pink"):
        alignment(images, ["a pink circle"])
    with pytest.raises(ValueError):
        alignment(images, None)


def test_weights_option(tmp_path):
    from alignzoo.hub import MissingWeightsError
    from alignzoo.rewards.tiny import default_weights_dir

    r = TinyAlignmentReward(weights=default_weights_dir())
    assert r.weights_path.name == "tiny_alignment.safetensors"
    r2 = TinyAestheticReward(weights=default_weights_dir() / "tiny_aesthetic.safetensors")
    assert r2.weights_path.is_file()
    with pytest.raises(MissingWeightsError, match="alignzoo tinyworld train --stage rewards"):
        TinyAlignmentReward(weights=tmp_path)


def test_evaluate_attribute_accuracy_detects_wrong_images(alignment):
    prompts = ["a red circle"] * 16
    good = evaluate_attribute_accuracy(render_batch(prompts, seed=1), prompts, reward=alignment)
    bad = evaluate_attribute_accuracy(render_batch(["three blue squares on the left"] * 16, seed=1), prompts, reward=alignment)
    assert good["colour_and_shape"] == 1.0 and good["all"] >= 0.9
    assert bad["colour"] == bad["shape"] == bad["colour_and_shape"] == bad["all"] == 0.0
    assert bad["score"] < good["score"]
