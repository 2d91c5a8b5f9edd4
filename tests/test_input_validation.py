"""Bad training input fails at once with one line naming the setting and the fix (exit code 2)."""

import pytest

from alignzoo.benchmarks.suites import parse_suite
from alignzoo.cli import main as cli_main
from alignzoo.rewards import get_reward

from helpers import train_args


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--samples", "0"], "samples must be an integer >= 1 (the total number of images to generate), got 0; set it with --samples N"),
        (["--samples", "-5"], "samples must be an integer >= 1 (the total number of images to generate), got -5; set it with --samples N"),
        (
            ["--set", "num_steps=0"],
            "num_steps must be an integer >= 1 (sampling steps per trajectory), or none for the model's default, got 0; set it with --set num_steps=",
        ),
        (
            ["--set", "samples_per_epoch=-8"],
            "samples_per_epoch must be an integer >= 1 (images generated per epoch), got -8; set it with --set samples_per_epoch=",
        ),
        (["--set", "train_batch_size=0"], "train_batch_size must be an integer >= 1, got 0; set it with --set train_batch_size="),
        (["--set", "gradient_accumulation_steps=-1"], "gradient_accumulation_steps must be an integer >= 1, got -1"),
        (["--set", "learning_rate=0"], "learning_rate must be a finite number > 0, got 0.0"),
        (["--set", "learning_rate=nan"], "learning_rate must be a finite number > 0, got nan"),
        (["--reward-arg", "bogus=1"], "reward 'jpeg_compressibility' does not take 'bogus'; its arguments: differentiable, quality"),
        (["--reward-arg", "device=cpu"], "reward 'jpeg_compressibility' does not take 'device'"),
        (["--reward-arg", "quality"], "--reward-arg expects key=value, got 'quality'"),
        # several rewards (the base command's --reward jpeg_compressibility is the first)
        (
            ["--reward", "random", "--reward-weights", "1"],
            "--reward-weights gives 1 weight(s) for 2 reward(s) (jpeg_compressibility, random): give one weight per --reward",
        ),
        (["--reward", "rnadom"], "unknown reward 'rnadom'. Did you mean 'random'?"),
        (["--reward", "random", "--reward-weights", "1,0"], "reward weight of 'random' must be a finite number > 0, got 0.0; leave a reward out to drop it"),
        (["--reward", "random", "--reward-weights", "1,-0.5"], "reward weight of 'random' must be a finite number > 0, got -0.5"),
        (["--reward", "random", "--reward-weights", "1,inf"], "reward weight of 'random' must be a finite number > 0, got inf"),
        (["--reward", "random", "--reward-weights", "1,half"], "--reward-weights expects comma-separated numbers, e.g. 1,0.5; got '1,half'"),
        (["--reward", "jpeg_compressibility"], "reward combination 'jpeg_compressibility+jpeg_compressibility' names a reward twice"),
        (
            ["--reward", "random", "--reward-arg", "quality=50"],
            "--reward-arg quality=50: with several rewards, name the one it is for: --reward-arg REWARD.quality=50",
        ),
        (
            ["--reward", "random", "--reward-arg", "aesthetic.seed=1"],
            "reward arguments for 'aesthetic', which is not one of the rewards of 'jpeg_compressibility+random' (jpeg_compressibility, random)",
        ),
        (["--reward", "random", "--reward-arg", "random.colour=1"], "reward 'random' does not take 'colour'; its arguments: differentiable, seed"),
    ],
)
def test_train_rejects_bad_input_with_one_line(extra, message, tiny_random_folders, prompt_file, tmp_path, capsys):
    out = tmp_path / "run"
    sets = ["num_steps=2", "samples_per_epoch=4"]
    rc = cli_main(train_args("ddpo", tiny_random_folders["sd"], prompt_file, out, samples=4, sets=sets) + extra)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (out / "final").exists() and not (out / "log.jsonl").exists()  # rejected before any training


def test_reward_arguments_are_checked_where_rewards_are_built():
    with pytest.raises(ValueError, match=r"^reward 'jpeg_compressibility' does not take 'bogus', 'colour'; its arguments: differentiable, quality$"):
        get_reward("jpeg_compressibility", bogus=1, colour=2)
    assert get_reward("jpeg_compressibility", device="cpu", quality=50).quality == 50  # device and real arguments still pass


SUITE = {"model": "tiny-sd", "algorithms": ["ddpo", "sdpo"], "rewards": ["jpeg_compressibility"], "samples": 64}


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            {"reward_args": {"jpeg_compressibility": {"qualty": 80}}},
            "suite 't' [reward_args.jpeg_compressibility]: reward 'jpeg_compressibility' does not take 'qualty'; its arguments",
        ),
        ({"train": {"samples_per_epoch": 0}}, "suite 't', ddpo/jpeg_compressibility: samples_per_epoch must be an integer >= 1"),
        ({"algo": {"sdpo": {"train_batch_size": -2}}}, "suite 't', sdpo/jpeg_compressibility: train_batch_size must be an integer >= 1, got -2"),
        ({"train": {"learning_rate": -1e-4}}, "learning_rate must be a finite number > 0, got -0.0001"),
        ({"samples": 0}, "suite 't': samples must be >= 1, got 0"),
        ({"seeds": [0, -1]}, "suite 't': seeds must be a non-empty list of integers >= 0, got [0, -1]"),
        ({"eval": {"images_per_prompt": 0}}, "suite 't': eval.images_per_prompt must be >= 1, got 0"),
        ({"rewards": ["jpeg_compressibility+random@0"]}, "suite 't': reward weight of 'random' must be a finite number > 0, got 0.0"),
        (
            {"rewards": ["jpeg_compressibility+random@x"]},
            "suite 't': reward combination 'jpeg_compressibility+random@x': the weight of 'random' is 'x', not a number",
        ),
        ({"rewards": ["jpeg_compressibility+rnadom"]}, "unknown reward 'rnadom'. Did you mean 'random'?"),
        (
            {"rewards": ["jpeg_compressibility+random"], "reward_args": {"aesthetic": {}}},
            "suite 't': unknown reward 'aesthetic'; known rewards: jpeg_compressibility, random",
        ),
    ],
)
def test_suites_reject_bad_values_when_loaded(extra, message):
    """`alignzoo bench` and `train --preset` load suites through parse_suite: a bad value fails
    before any cell runs, not hours in."""
    parse_suite({**SUITE, "name": "t"})  # the valid base
    with pytest.raises(ValueError) as err:
        parse_suite({**SUITE, "name": "t", **extra})
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_suite_may_train_on_a_weighted_sum_of_rewards():
    suite = parse_suite({**SUITE, "name": "t", "rewards": ["jpeg_compressibility", "jpeg_compressibility+random@0.5"], "reward_args": {"random": {"seed": 3}}})
    assert suite.cells()[1] == ("ddpo", "jpeg_compressibility+random@0.5", 0)
    from alignzoo.rewards.combined import component_kwargs
    from alignzoo.runlog import cell_name, parse_cell_name

    name = cell_name("ddpo", "jpeg_compressibility+random@0.5", 0)
    assert name == "ddpo__jpeg_compressibility+random@0.5__seed0" and parse_cell_name(name) == ("ddpo", "jpeg_compressibility+random@0.5", 0)
    assert component_kwargs("jpeg_compressibility+random@0.5", suite.reward_args) == {"random": {"seed": 3}}
    assert component_kwargs("random", suite.reward_args) == {"seed": 3} and component_kwargs("jpeg_compressibility", suite.reward_args) == {}


def test_bench_cli_reports_a_bad_suite_in_one_line(tmp_path, capsys):
    suite = tmp_path / "bad.toml"
    suite.write_text('model = "tiny-sd"\nalgorithms = ["ddpo"]\nrewards = ["jpeg_compressibility"]\n[reward_args.jpeg_compressibility]\nbogus = 1\n')
    assert cli_main(["bench", str(suite), "--runs", str(tmp_path / "runs"), "--estimate"]) == 2
    err = capsys.readouterr().err
    assert "[reward_args.jpeg_compressibility]: reward 'jpeg_compressibility' does not take 'bogus'" in err and len(err.strip().splitlines()) == 1


def test_a_bad_device_is_one_line(tiny_random_folders, tmp_path, capsys):
    """`alignzoo eval/bench/score/sample --device` is checked before anything runs (it was a
    RuntimeError traceback from torch)."""
    rc = cli_main(["eval", str(tmp_path), "--model", str(tiny_random_folders["sd"]), "--reward", "jpeg_compressibility", "--device", "cpux"])
    err = capsys.readouterr().err
    assert rc == 2 and err.strip() == "alignzoo eval: error: --device 'cpux' is not a torch device; use cpu, cuda or cuda:N"


@pytest.mark.parametrize(
    "algo,key,text,expected",
    [
        ("reward-backprop", "checkpointing", "false", False),  # bool | None, unset: "false" is not the truthy string
        ("reward-backprop", "checkpointing", "true", True),
        ("reward-backprop", "checkpointing", "none", None),
        ("reward-backprop", "reward_margin", "1", 1.0),  # float | None
        ("diffusion-dpo", "turbo_steps", "4", 4),  # int | None
        ("ddpo", "lora_alpha", "8", 8.0),
    ],
)
def test_set_reads_an_unset_optional_field_as_its_declared_type(algo, key, text, expected):
    from alignzoo.algos import get_algorithm
    from alignzoo.algos.config_strings import config_from_strings

    cls = get_algorithm(algo)
    value = getattr(config_from_strings(cls.Config, cls.Config(), {key: text}), key)
    assert value == expected and type(value) is type(expected)


def test_set_rejects_a_non_bool_for_an_optional_bool():
    from alignzoo.algos import get_algorithm
    from alignzoo.algos.config_strings import config_from_strings

    cls = get_algorithm("reward-backprop")
    with pytest.raises(ValueError, match="checkpointing.*'maybe'"):
        config_from_strings(cls.Config, cls.Config(), {"checkpointing": "maybe"})
