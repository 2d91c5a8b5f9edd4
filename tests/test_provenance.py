"""Evaluation provenance (what determines a number, hashed) and the diversity measure."""

import itertools
import math

import numpy as np
import pytest
import torch

from alignzoo.benchmarks import evaluation
from alignzoo.benchmarks.provenance import ProvenanceBuilder, hashes, model_checksum, reward_checksum
from alignzoo.rewards import get_reward

SETS = {"s": ["a red cat", "a blue dog"]}


def _line(model, rewards=None, reward_args=None, sets=SETS, ipp=2, eta=0.0, seed=1234, steps=2, reward="jpeg_compressibility"):
    rewards = rewards or {"jpeg_compressibility": get_reward("jpeg_compressibility")}
    return ProvenanceBuilder(model, rewards, reward_args or {}, sets, ipp, eta, seed, 64).line("s", reward, steps)


def test_each_ingredient_changes_the_hash(tiny_random_sd):
    m = tiny_random_sd
    base = _line(m)
    assert base == _line(m)  # deterministic
    assert len(base["hash"]) == len(base["setting_hash"]) == 16
    p = base["provenance"]
    assert p["lora_checksum"] is None and p["reward_checksum"] is None and p["scheduler"] == "ddim-trailing"
    assert {
        "model",
        "model_checksum",
        "lora_checksum",
        "reward",
        "reward_checksum",
        "reward_args",
        "steps",
        "eta",
        "guidance",
        "resolution",
        "prompts_checksum",
        "images_per_prompt",
        "noise_seed",
        "scheduler",
    } <= set(p)
    variants = {
        "steps": _line(m, steps=4),
        "eta": _line(m, eta=0.5),
        "reward_args": _line(m, reward_args={"jpeg_compressibility": {"quality": 90}}),
        "prompts_checksum": _line(m, sets={"s": ["a red cat", "a blue cat"]}),
        "noise_seed": _line(m, seed=1235),
        "images_per_prompt": _line(m, ipp=3),
    }
    for key, v in variants.items():
        assert v["provenance"][key] != p[key], key
        assert v["hash"] != base["hash"] and v["setting_hash"] != base["setting_hash"], key
    # LoRA weights: the hash changes, the setting (what a table column must share) does not
    assert model_checksum(m) == p["model_checksum"]
    m.add_lora(4)
    assert model_checksum(m) == p["model_checksum"]  # cached, and independent of the adapter wrapping
    assert m._alignzoo_model_checksum == p["model_checksum"]
    del m._alignzoo_model_checksum
    assert model_checksum(m) == p["model_checksum"]  # recomputed through PEFT's base_layer names
    zero_lora = _line(m)
    with torch.no_grad():
        m.trainable_parameters()[0].add_(0.01)
    moved = _line(m)
    assert zero_lora["provenance"]["lora_checksum"] != moved["provenance"]["lora_checksum"]
    assert len({base["hash"], zero_lora["hash"], moved["hash"]}) == 3
    assert base["setting_hash"] == zero_lora["setting_hash"] == moved["setting_hash"]


def test_reward_weights_change_the_reward_checksum():
    a, b = get_reward("tiny_aesthetic"), get_reward("tiny_aesthetic")
    assert reward_checksum(a) == reward_checksum(b) is not None
    with torch.no_grad():
        next(b.parameters()).add_(1e-3)
    del b._alignzoo_reward_checksum  # the cache is per loaded object
    assert reward_checksum(a) != reward_checksum(b)
    assert reward_checksum(get_reward("jpeg_compressibility")) is None


def test_hash_is_canonical():
    # key order and float spelling do not matter; values do
    assert hashes({"a": 1.0, "b": [1, 2]}) == hashes({"b": [1, 2], "a": 1.0})
    assert hashes({"a": 1.0, "lora_checksum": "x"})["setting_hash"] == hashes({"a": 1.0, "lora_checksum": "y"})["setting_hash"]
    assert hashes({"a": 1.0})["hash"] != hashes({"a": 1.5})["hash"]


# The same setting in two processes: test_bench's resume test runs the suite in two processes
# (uninterrupted; killed and resumed) and asserts identical lines, hashes included.


# ---------------------------------------------------------------------------- diversity


def _by_hand(feats: list[list[float]], k: int) -> float:
    """Mean over prompts of the mean over pairs of 1 - cos, with plain Python arithmetic."""
    per_prompt = []
    for p in range(len(feats) // k):
        group = feats[p * k : (p + 1) * k]
        dists = []
        for u, v in itertools.combinations(group, 2):
            dot = sum(a * b for a, b in zip(u, v))
            dists.append(1 - dot / (math.sqrt(sum(a * a for a in u)) * math.sqrt(sum(b * b for b in v))))
        per_prompt.append(sum(dists) / len(dists))
    return sum(per_prompt) / len(per_prompt)


def test_pairwise_diversity_equals_hand_computation():
    feats = [
        [1.0, 0.0],
        [0.0, 2.0],
        [3.0, 3.0],  # prompt 0: 1-cos = 1, 1-1/√2, 1-1/√2
        [1.0, 1.0],
        [2.0, 2.0],
        [-1.0, -1.0],
    ]  # prompt 1: 0, 2, 2
    d = evaluation.pairwise_diversity(torch.tensor(feats), 3)
    assert d.shape == (2,)
    assert d[0] == pytest.approx((1 + 2 * (1 - 1 / math.sqrt(2))) / 3, abs=1e-12)
    assert d[1] == pytest.approx(4 / 3, abs=1e-12)
    assert d.mean() == pytest.approx(_by_hand(feats, 3), abs=1e-12)
    rng = np.random.default_rng(0)
    rand = rng.normal(size=(5 * 4, 7)).tolist()
    assert evaluation.pairwise_diversity(torch.tensor(rand, dtype=torch.float64), 4).mean() == pytest.approx(_by_hand(rand, 4), abs=1e-10)
    same = torch.tensor([[0.3, -1.2, 5.0]] * 4)
    assert np.abs(evaluation.pairwise_diversity(same, 2)).max() < 1e-12  # identical images: 0
    assert evaluation.pairwise_diversity(same, 1) is None
    grey = evaluation.pixel_features(torch.full((2, 3, 8, 8), 0.5))  # all-zero features: still 0, not 1
    assert grey.abs().max() == 0 and evaluation.pairwise_diversity(grey, 2)[0] == 0
    with pytest.raises(ValueError, match="n_prompts"):
        evaluation.pairwise_diversity(torch.zeros(5, 3), 2)


def test_identical_images_have_zero_diversity_in_every_space():
    img = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    other = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    for name in ("tiny_alignment", "tiny_aesthetic"):
        r = get_reward(name)
        assert r.feature_space == f"{name}.backbone"
        f = r.features(torch.cat([img, img, img, other]))
        assert f.shape == (4, 128) and f.dtype == torch.float32
        d = evaluation.pairwise_diversity(f, 2)
        assert abs(d[0]) < 1e-6 and d[1] > 1e-4
    px = evaluation.pixel_features(torch.cat([img, img]))
    assert px.shape == (2, 768) and abs(evaluation.pairwise_diversity(px, 2)[0]) < 1e-12
    with pytest.raises(ValueError, match="no image feature backbone"):
        get_reward("jpeg_compressibility").features(img)


def test_feature_space_is_the_first_reward_with_a_backbone():
    jpeg, aes, ali = (get_reward(n) for n in ("jpeg_compressibility", "tiny_aesthetic", "tiny_alignment"))
    assert evaluation.feature_space({"jpeg_compressibility": jpeg, "tiny_aesthetic": aes, "tiny_alignment": ali})[0] == "tiny_aesthetic.backbone"
    assert evaluation.feature_space({"tiny_alignment": ali, "tiny_aesthetic": aes})[0] == "tiny_alignment.backbone"
    assert evaluation.feature_space({"jpeg_compressibility": jpeg})[0] == evaluation.PIXEL_SPACE


def test_evaluate_gives_one_diversity_per_prompt_set_and_steps(tiny_random_sd):
    rewards = {"jpeg_compressibility": get_reward("jpeg_compressibility"), "tiny_aesthetic": get_reward("tiny_aesthetic")}
    space = evaluation.feature_space(rewards)
    res, _ = evaluation.evaluate(tiny_random_sd, rewards, {"s": ["a red cat", "a blue dog", "a green circle"]}, [1, 2], 2, features=space)
    assert len(res) == 4
    for n in (1, 2):
        lines = [r.summary() for r in res if r.steps == n]
        assert len({x["diversity"] for x in lines}) == 1 and lines[0]["diversity"] > 0
        assert all(x["diversity_space"] == "tiny_aesthetic.backbone" and x["diversity_se"] >= 0 for x in lines)
    assert res[0].diversity.shape == (3,)
    single, _ = evaluation.evaluate(tiny_random_sd, rewards, {"s": ["a red cat"]}, [1], 1, features=space)
    assert single[0].summary()["diversity"] is None and single[0].summary()["diversity_space"] == "tiny_aesthetic.backbone"


def test_runner_evaluates_every_suite_reward_with_provenance(tiny_random_folders, tmp_path):
    """A cell trained on one reward is scored on every reward of the suite (held-out included), in
    the suite's feature space (the first reward with a backbone, whatever the cell trained on)."""
    from alignzoo.benchmarks.runner import BenchmarkRunner
    from alignzoo.benchmarks.suites import parse_suite
    from alignzoo.models import load_model

    prompts = tmp_path / "p.txt"
    prompts.write_text("a red cat\na blue dog\n")
    suite = parse_suite(
        {
            "name": "t",
            "model": str(tiny_random_folders["sd"]),
            "algorithms": ["ddpo"],
            "rewards": ["jpeg_compressibility", "tiny_aesthetic"],
            "reward_args": {"jpeg_compressibility": {"quality": 80}},
            "eval": {"steps": [1, 2], "prompt_sets": [str(prompts)], "images_per_prompt": 2},
        },
        None,
    )
    runner = BenchmarkRunner(suite, root=tmp_path / "runs", device="cpu", progress=False)
    fields = {"cell": "ddpo__jpeg_compressibility__seed0", "algo": "ddpo", "train_reward": "jpeg_compressibility", "seed": 0, "samples": 8}
    model = load_model(str(tiny_random_folders["sd"]))
    out = runner.run_eval(model, 0.0, False, fields)
    lines, scores, diversity = out.lines, out.scores, out.diversity
    assert {(r["eval_reward"], r["steps"]) for r in lines} == {(w, n) for w in suite.rewards for n in (1, 2)}
    assert all(r["train_reward"] == "jpeg_compressibility" and r["diversity_space"] == "tiny_aesthetic.backbone" for r in lines)
    jpeg = next(r for r in lines if r["eval_reward"] == "jpeg_compressibility")
    assert jpeg["provenance"]["reward_args"] == {"quality": 80} and jpeg["provenance"]["reward_checksum"] is None
    assert set(scores) == {f"{prompts}|{w}|{n}" for w in suite.rewards for n in (1, 2)} and all(len(v) == 4 for v in scores.values())
    assert set(diversity) == {f"{prompts}|{n}" for n in (1, 2)} and all(len(v) == 2 for v in diversity.values())
    # drift: against its own images the model has none; a changed model drifts, per image
    assert out.drift == {} and all(r["drift"] is None for r in lines)
    baseline = {"scores": scores, "thumbnails": out.thumbnails}
    same = runner.run_eval(model, 0.0, False, fields, baseline=baseline)
    assert set(same.drift) == set(diversity) and all(v == [0.0] * 4 for v in same.drift.values())
    assert all(r["drift"] == 0 and r["diff_mean"] == 0 for r in same.lines)
    model.add_lora(4)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(0.3)
    moved = runner.run_eval(model, 0.0, False, fields, baseline=baseline)
    assert all(len(v) == 4 and min(v) > 0 for v in moved.drift.values())
    assert all(0 < r["drift"] < 1 and r["drift_se"] > 0 for r in moved.lines)


def test_drift_is_the_rms_pixel_distance_of_thumbnails():
    a = torch.zeros(2, 3, 64, 64)
    b = a.clone()
    b[1, :, :32, :] = 1.0  # image 1: half of the pixels from black to white
    ta, tb = evaluation.thumbnails(a), evaluation.thumbnails(b)
    assert ta.shape == (2, 3, 32, 32) and ta.dtype == torch.uint8
    d = evaluation.image_drift(tb, ta)
    assert d[0] == 0 and d[1] == pytest.approx(math.sqrt(0.5), abs=1e-12)
    grey = evaluation.thumbnails(torch.full((1, 3, 8, 8), 0.2))  # upsampled to 32x32: 0.2 * 255 = 51
    assert int(grey.min()) == int(grey.max()) == 51
    assert evaluation.image_drift(grey, evaluation.thumbnails(torch.full((1, 3, 8, 8), 0.6)))[0] == pytest.approx(102 / 255, abs=1e-12)
    with pytest.raises(ValueError, match="delete <suite>/pretrained"):
        evaluation.image_drift(ta, ta[:1])
