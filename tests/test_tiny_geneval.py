"""tiny_geneval and tiny_geneval_judge2 (committed weights): accuracy on fresh renders, near
misses rejected, soft score ordering, gradients, metadata, missing weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alignzoo.hub import MissingWeightsError
from alignzoo.rewards import get_reward, list_rewards
from alignzoo.rewards.tiny_compose import TinyGenevalJudge2Reward, TinyGenevalReward, TinyGenevalStrictReward
from alignzoo.tinyworld.compose import grammar as g
from alignzoo.tinyworld.compose.render import render_batch
from alignzoo.tinyworld.training.compose.train_geneval import EVAL_SEED, eval_set

TEST_SEED = 5150  # neither a training pool's seed nor the documented evaluation's
JUDGES = ["tiny_geneval", "tiny_geneval_judge2"]


def _require(name: str) -> None:
    from alignzoo.rewards.tiny import default_weights_dir

    if not (default_weights_dir() / f"{name}.safetensors").is_file():
        pytest.skip(f"{name}: weights not committed yet (`alignzoo tinyworld train --stage geneval`)")


@pytest.fixture(scope="module")
def sample():
    assert TEST_SEED != EVAL_SEED
    return eval_set(seed=TEST_SEED, per_category=18)  # 108 renders, half satisfying


@pytest.fixture(scope="module", params=JUDGES)
def judge(request):
    _require(request.param)
    return get_reward(request.param)


def test_registered_with_metadata():
    assert set(JUDGES + ["tiny_geneval_strict"]) <= set(list_rewards())
    a, s = get_reward("tiny_geneval"), get_reward("tiny_geneval_strict")
    assert isinstance(a, TinyGenevalReward) and isinstance(s, TinyGenevalStrictReward)
    assert a.reads_prompt and a.supports_grad and not s.supports_grad
    assert "alignzoo tinyworld train --stage geneval" in a.weights_source
    assert 0 < a.config["threshold"] < 1 and (a.weights_path.stat().st_size < 500_000)
    with pytest.raises(ValueError):
        get_reward("tiny_geneval_strict", differentiable=True)
    _require("tiny_geneval_judge2")
    b = get_reward("tiny_geneval_judge2")
    assert isinstance(b, TinyGenevalJudge2Reward)
    assert a.config["width"] != b.config["width"] and a.config["seed"] != b.config["seed"]


def test_strict_accuracy_on_a_sample(judge, sample):
    clean, degraded, prompts, cats, truth = sample
    s_clean = judge.details(clean, prompts)["strict"]
    s_deg = judge.details(degraded, prompts)["strict"]
    assert float((s_clean == truth).float().mean()) >= 0.93
    assert float((s_deg == truth).float().mean()) >= 0.85
    assert float(s_clean[truth == 0].mean()) <= 0.08  # near misses rejected
    strict = get_reward("tiny_geneval_strict") if judge.name == "tiny_geneval" else get_reward(judge.name, strict=True)
    torch.testing.assert_close(strict(clean, prompts), s_clean)


def test_soft_score_higher_when_the_prompt_is_satisfied(judge):
    rng = np.random.default_rng(TEST_SEED + 1)
    specs = [s for c in g.CATEGORIES for s in g.all_specs(c)[:6]]
    good = render_batch([g.sample_scene(s, rng) for s in specs], seed=1)
    bad = render_batch([g.sample_violating_scene(s, rng) for s in specs], seed=2)
    prompts = [s.text for s in specs]
    s_good, s_bad = judge(good, prompts), judge(bad, prompts)
    assert float(s_good.min()) >= 0 and float(s_good.max()) <= 1
    assert float((s_good > s_bad).float().mean()) >= 0.9
    assert float(s_good.mean() - s_bad.mean()) > 0.5


def test_details_and_features(judge):
    prompts = ["a circle", "two squares", "a red circle", "a square left of a triangle", "a red circle and a blue square"]
    rng = np.random.default_rng(0)
    images = render_batch([g.sample_scene(p, rng) for p in prompts], seed=0)
    d = judge.details(images, prompts)
    assert d["strict"].shape == d["soft"].shape == (5,)
    assert torch.isnan(d["p:relation"][0]) and 0 <= float(d["p:relation"][3]) <= 1
    assert [g.CATEGORIES[i] for i in d["category"].tolist()] == [g.category_of(p) for p in prompts]
    f = judge.features(images)
    assert f.shape == (5, 4 * judge.config["width"]) and torch.isfinite(f).all()


@pytest.mark.parametrize("name", JUDGES)
def test_gradients_flow_to_the_images(name):
    _require(name)
    reward = get_reward(name, differentiable=True)
    prompts = ["a circle and a square", "three triangles", "a square below a circle"]
    rng = np.random.default_rng(1)
    images = render_batch([g.sample_scene(p, rng) for p in prompts], seed=0).requires_grad_(True)
    scores = reward(images, prompts)
    assert scores.requires_grad
    scores.sum().backward()
    assert torch.isfinite(images.grad).all() and float(images.grad.abs().sum()) > 0
    assert all(not p.requires_grad for p in reward.parameters())


def test_batch_invariance_and_resizing(judge):
    prompts = g.seen_prompts("color_attr")[:6]
    rng = np.random.default_rng(2)
    images = render_batch([g.sample_scene(p, rng) for p in prompts], seed=0)
    together = judge(images, prompts)
    alone = torch.cat([judge(images[i : i + 1], prompts[i : i + 1]) for i in range(6)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
    big = torch.nn.functional.interpolate(images, scale_factor=2, mode="nearest")
    torch.testing.assert_close(judge(big, prompts), together, atol=1e-5, rtol=1e-5)


def test_unknown_prompt_raises(judge):
    images = render_batch([g.sample_scene("a circle", np.random.default_rng(0))], seed=0)
    with pytest.raises(ValueError, match="pink"):
        judge(images, ["a pink circle"])


@pytest.mark.parametrize("cls", [TinyGenevalReward, TinyGenevalJudge2Reward])
def test_missing_weights_give_a_clear_error(cls, tmp_path):
    with pytest.raises(MissingWeightsError) as err:
        cls(weights=tmp_path)
    msg = str(err.value)
    assert cls.judge in msg and "alignzoo tinyworld train --stage geneval" in msg and "weights=" in msg


def test_rules_on_perfect_detections_reproduce_grammar_strict():
    """GenEval's rules on the detector's output format, fed with the ground truth's own
    targets, give exactly grammar.strict (no weights involved)."""
    from alignzoo.tinyworld.compose.judge import judge_outputs, scene_targets

    rng = np.random.default_rng(TEST_SEED + 2)
    specs = g.all_specs()
    scenes, prompts = [], []
    for i in range(300):
        spec = specs[rng.integers(len(specs))]
        scenes.append((g.sample_scene if i % 2 else g.sample_violating_scene)(spec, rng))
        prompts.append(spec.text)
    heat, colour = scene_targets(scenes)
    onehot = torch.nn.functional.one_hot(colour.clamp_min(0), len(g.COLOURS)).permute(0, 3, 1, 2).float()
    out = judge_outputs(torch.cat([heat * 20 - 10, onehot * 20], 1), prompts)
    truth = torch.tensor([g.strict(g.parse_prompt(p), s) for p, s in zip(prompts, scenes)], dtype=torch.float32)
    assert torch.equal(out["strict"], truth)
    assert float(out["soft"][truth == 1].min()) > 0.95 and float(out["soft"][truth == 0].max()) < 0.05
