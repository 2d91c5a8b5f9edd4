"""tiny_preference (committed weights) and the hidden utility it learns: accuracy, scale, ordering,
prompt independence, gradients, missing weights; the utility on hand-made scenes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from alignzoo.hub import MissingWeightsError
from alignzoo.rewards import get_reward, list_rewards
from alignzoo.rewards.tiny_preference import TRAIN_CMD, TinyPreferenceReward
from alignzoo.tinyworld.compose import preference as pref
from alignzoo.tinyworld.compose.grammar import Obj, Scene, Style, seen_prompts, unseen_prompts
from alignzoo.tinyworld.training.compose.train_preference import hack_figures, render_pool

HELD_OUT_SEED = 4242  # training uses seed 0 (pool) and 1000 (evaluation)
N = 96


@pytest.fixture(scope="module")
def reward():
    return TinyPreferenceReward()


@pytest.fixture(scope="module")
def random_renders(reward):
    scenes = pref.random_scenes(N, HELD_OUT_SEED, seen_prompts() + unseen_prompts())
    images = render_pool(scenes, HELD_OUT_SEED)
    return scenes, images, reward(images)


def _style(**kw) -> Style:
    base = dict(size_scale=1.0, saturation=0.5, offset=0.0, outline=0.5, background=0.5, bg_tint=0.5)
    return Style(**{**base, **kw})


# ------------------------------------------------------------------ the utility (no network)


def test_utility_on_hand_made_scenes():
    # on a 32 px canvas: "big" saturates at half-extent 0.24 * 32 = 7.68 px, "centred" reaches 0
    # at a mean distance of 0.4 * 32 = 12.8 px from the centre
    assert (pref.BIG_FRACTION, pref.CENTRE_FRACTION, pref.BETA) == (0.24, 0.4, 2.0)
    st = _style(saturation=0.4, outline=0.2, background=0.7, bg_tint=0.1)
    # style terms: 0.75 * 0.4 + 0.75 * 0.2 + 1.0 * (1 - 0.7) + 0.5 * (1 - 0.1) = 1.2
    # one circle of half-extent 8 at the centre: big 1, centred 1, single 1
    one = Scene((Obj("circle", "red", 16.0, 16.0, 8.0),), st)
    assert pref.utility(one, size=32) == pytest.approx(4.2)
    # two objects, half-extents 4 and 2 (areas 16 and 4), 4 and 6 px from the centre:
    # dbar = (16 * 4 + 4 * 6) / 20 = 4.4 -> centred 1 - 4.4 / 12.8 = 0.65625;
    # big 4 / 7.68 = 0.5208333; single 1 / 2
    two = Scene((Obj("square", "blue", 20.0, 16.0, 4.0), Obj("circle", "red", 16.0, 10.0, 2.0)), st)
    terms = pref.utility_terms(two, size=32)
    assert terms["centred"] == pytest.approx(0.65625) and terms["big"] == pytest.approx(0.5208333)
    assert terms["single"] == pytest.approx(0.5)
    assert pref.utility(two, size=32) == pytest.approx(1.2 + 0.5208333 + 0.65625 + 0.5)
    # 19.8 px from the centre earns no "centred"; style terms at their best give 3.0
    far = Scene((Obj("circle", "red", 2.0, 2.0, 3.0),), _style(saturation=1, outline=1, background=0, bg_tint=0))
    assert pref.utility_terms(far, size=32)["centred"] == 0.0
    assert pref.utility(far, size=32) == pytest.approx(3.0 + 3 / 7.68 + 0 + 1)
    # an empty scene earns only the style terms
    assert pref.utility(Scene((), st), size=32) == pytest.approx(1.2)
    assert pref.U_MAX == pytest.approx(6.0)


def test_utility_maximising_scene_and_style():
    st = pref.maximising_style()
    assert (st.saturation, st.outline, st.background, st.bg_tint) == (1.0, 1.0, 0.0, 0.0)
    scene = pref.maximising_scene(np.random.default_rng(0))
    assert len(scene.objects) == 1
    u = pref.utility(scene)
    rand = pref.utilities(pref.random_scenes(200, 7))
    assert u >= 5.5 and u > np.quantile(rand, 0.99)


def test_preference_pairs_follow_bradley_terry():
    u = np.array([0.0, 0.5, 1.0, 3.0])
    ia, ib, y, p = pref.sample_pairs(u, 40000, np.random.default_rng(0))
    assert (ia != ib).all()
    np.testing.assert_allclose(p, 1 / (1 + np.exp(-pref.BETA * (u[ia] - u[ib]))))
    for a, b in [(1, 0), (2, 0), (3, 1)]:
        sel = (ia == a) & (ib == b)
        expect = 1 / (1 + math.exp(-pref.BETA * (u[a] - u[b])))
        assert abs(y[sel].mean() - expect) < 0.05, (a, b)


# ------------------------------------------------------------------ the reward (committed weights)


def test_registered_prompt_free_with_metadata():
    assert "tiny_preference" in list_rewards()
    r = get_reward("tiny_preference")
    assert isinstance(r, TinyPreferenceReward)
    assert not r.reads_prompt and r.supports_grad and TRAIN_CMD in r.weights_source


def test_pairwise_accuracy_on_held_out_renders(random_renders):
    scenes, _, s = random_renders
    u = pref.utilities(scenes)
    i, j = np.triu_indices(len(scenes), 1)
    decided = np.abs(u[i] - u[j]) > 1e-9
    s = s.numpy()
    acc = ((s[i] > s[j]) == (u[i] > u[j]))[decided].mean()
    assert acc >= 0.85, acc  # measured in docs/tinyworld-preference.md on 8,192 pairs
    assert np.corrcoef(s, u)[0, 1] >= 0.85


def test_standardised_scale_and_ordering(reward, random_renders):
    _, _, s = random_renders
    assert abs(float(s.mean())) < 0.35 and 0.7 < float(s.std()) < 1.3
    rng = np.random.default_rng(HELD_OUT_SEED + 1)
    neutral = [pref.random_scene(rng, style=Style.neutral()) for _ in range(32)]
    top = [pref.maximising_scene(rng) for _ in range(32)]
    s_neu = reward(render_pool(neutral, HELD_OUT_SEED + 1))
    s_top = reward(render_pool(top, HELD_OUT_SEED + 2))
    assert float(s_neu.mean()) < float(s.mean()) < float(s_top.mean())
    assert float(s_top.mean()) > 1.5 and float((s_top[:, None] > s[None, :]).float().mean()) > 0.9


def test_prompt_independence(reward, random_renders):
    _, images, s = random_renders
    x = images[:8]
    a = reward(x, [seen_prompts()[0]] * 8)
    b = reward(x, unseen_prompts()[:8])
    c = reward(x)
    assert torch.equal(a, b) and torch.equal(a, c) and torch.allclose(a, s[:8], atol=1e-5)


def test_gradients_flow_to_the_image_and_features():
    r = TinyPreferenceReward(differentiable=True)
    x = render_pool(pref.random_scenes(4, HELD_OUT_SEED + 3), HELD_OUT_SEED + 3).requires_grad_(True)
    r(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in r.parameters())
    f = r.features(x.detach())
    assert f.shape == (4, r.config["hidden"]) and torch.isfinite(f).all()


def test_larger_images_are_area_resized(reward, random_renders):
    _, images, s = random_renders
    big = images[:4].repeat_interleave(2, -1).repeat_interleave(2, -2)  # 64 px, exact 2x2 blocks
    assert torch.allclose(reward(big), s[:4], atol=1e-4)


def test_missing_weights_error_names_the_command(tmp_path):
    with pytest.raises(MissingWeightsError) as err:
        TinyPreferenceReward(weights=tmp_path)
    msg = str(err.value)
    assert "tiny_preference" in msg and TRAIN_CMD in msg and str(tmp_path) in msg


def test_the_intended_hack_is_visible(reward):
    # best style, one object (the prompt's first) vs a correct multi-object scene: the reward
    # prefers the object that GenEval fails
    figs = hack_figures(lambda x: reward(x).numpy(), seed=HELD_OUT_SEED + 4, per_category=12)
    for cat, f in figs.items():
        assert f["hacked_strict"] == 0.0, cat
        assert f["hacked"] > f["correct"] and f["hack_wins"] >= 0.75, (cat, f)
