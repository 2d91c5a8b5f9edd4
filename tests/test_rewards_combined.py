"""Weighted sums of rewards (alignzoo/rewards/combined.py): the score is Σ_k w_k·r_k of the
component rewards, each computed by its own reward; a single name stays that reward."""

import pytest
import torch

from alignzoo.rewards import get_reward
from alignzoo.rewards.combined import WeightedSum, combination_spec, parse_combination
from alignzoo.rewards.control import RandomReward


def images(n=3, seed=0):
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def test_the_sum_is_the_weighted_sum_of_its_rewards_and_exposes_them():
    x, prompts = images(), ["a cat", "a dog", "a cow"]
    both = get_reward("jpeg_compressibility+random@0.25", random={"seed": 5})
    assert isinstance(both, WeightedSum) and both.component_names == ("jpeg_compressibility", "random") and both.reads_prompt
    jpeg, rand = get_reward("jpeg_compressibility")(x, prompts), get_reward("random", seed=5)(x, prompts)
    scores, comps = both.forward_components(x, prompts)
    assert torch.allclose(comps, torch.stack([jpeg, rand], 1))
    assert torch.allclose(scores, jpeg + 0.25 * rand) and torch.allclose(both(x, prompts), scores)
    assert both.parts["random"].images_scored == 6 and both.images_scored == 6  # forward + forward_components, 3 images each


def test_one_reward_is_the_reward_itself():
    assert combination_spec(["random"]) == "random" and type(get_reward("random")) is RandomReward
    assert combination_spec(["random", "jpeg_compressibility"], "1,0.5") == "random+jpeg_compressibility@0.5"
    assert combination_spec(["random", "jpeg_compressibility"], [2, 1]) == "random@2+jpeg_compressibility"
    assert parse_combination("random@2+jpeg_compressibility") == [("random", 2.0), ("jpeg_compressibility", 1.0)]
    assert parse_combination("random@1e-1") == [("random", 0.1)]  # one reward with a weight: a sum of one


@pytest.mark.parametrize(
    "spec, message",
    [
        ("random+", "an empty reward name"),
        ("random@-1", "reward weight of 'random' must be a finite number > 0, got -1.0"),
        ("random@nan", "reward weight of 'random' must be a finite number > 0, got nan"),
        ("random+random@2", "names a reward twice"),
        ("randm+jpeg_compressibility", "unknown reward 'randm'. Did you mean 'random'?"),
    ],
)
def test_bad_combinations_say_what_is_wrong(spec, message):
    with pytest.raises(ValueError, match=None) as err:
        get_reward(spec)
    assert message in str(err.value)


def test_a_non_differentiable_part_makes_the_sum_non_differentiable():
    with pytest.raises(ValueError, match="reward 'random' is not differentiable"):
        get_reward("random+jpeg_compressibility", differentiable=True)


@pytest.mark.parametrize("algo", ["ddpo", "sdpo"])
def test_train_cli_on_two_weighted_rewards(algo, tiny_random_folders, prompt_file, tmp_path):
    """Any algorithm taking scalar rewards trains on the weighted sum; the log adds each reward's mean."""
    import json

    from alignzoo.cli import main as cli_main

    out = tmp_path / algo
    args = ["train", "--algo", algo, "--model", str(tiny_random_folders["sd"]), "--prompts", str(prompt_file), "--out", str(out), "--no-progress"]
    args += ["--reward", "jpeg_compressibility", "--reward", "random", "--reward-weights", "2,0.5", "--reward-arg", "random.seed=3"]
    args += ["--samples", "4", "--set", "num_steps=3", "--set", "samples_per_epoch=4", "--set", "train_batch_size=2"]
    assert cli_main(args) == 0
    rec = json.loads((out / "log.jsonl").read_text().splitlines()[-1])
    assert rec["reward_mean"] == pytest.approx(2 * rec["reward_mean[jpeg_compressibility]"] + 0.5 * rec["reward_mean[random]"], abs=1e-4)
    assert 0 <= rec["reward_mean[random]"] < 1 and rec["reward_queries"] == (12 if algo == "sdpo" else 8)  # one query per scored image
