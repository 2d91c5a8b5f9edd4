"""The README's "Adding an algorithm" example is whole and runnable: copied to a file, it is
listed by `alignzoo list algos --plugin` and trained by `alignzoo train --plugin`, and its
group advantages are what its one-line formula says."""

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alignzoo.algos.base import get_algorithm, load_plugin
from alignzoo.algos.rollouts import Rollout
from alignzoo.algos.trainer import read_log
from alignzoo.cli import main as cli_main

from helpers import train_args

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_plugin(tmp_path) -> Path:
    text = README.read_text()
    section = text[text.index("## Adding an algorithm") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) <= 40, "the README's example should stay a short read"
    path = tmp_path / "group_ppo.py"
    path.write_text(code)
    return path


def test_the_readme_plugin_is_listed(tmp_path, capsys):
    assert cli_main(["list", "algos", "--plugin", str(readme_plugin(tmp_path))]) == 0
    listed = capsys.readouterr().out
    assert "group-ppo" in listed and "ddpo" in listed


def test_the_readme_plugin_normalises_within_groups(tmp_path):
    load_plugin(readme_plugin(tmp_path))
    algo = get_algorithm("group-ppo")()
    traj = type("T", (), {"num_steps": 2, "batch_size": 8})()
    rewards = torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0, 10.0, 10.0, 14.0])  # two prompts × G = 4, prompt-major
    data = algo.advantages(Rollout(traj, torch.full((8, 1), 1), rewards[:, None], 4))
    want = torch.cat([(g - g.mean()) / (g.std() + 1e-4) for g in rewards.view(2, 4)])
    assert torch.allclose(data.advantages[:, 0], want) and torch.allclose(data.advantages[:, 1], want)
    assert data.advantages[4:7, 0].tolist() == pytest.approx([-0.5] * 3, rel=1e-3)  # 10, 10, 10, 14: mean 11, std 2


@pytest.mark.slow
def test_the_readme_plugin_trains(tiny_random_folders, prompt_file, tmp_path):
    out = tmp_path / "run"
    sets = ["num_steps=2", "samples_per_epoch=8", "train_batch_size=4", "learning_rate=0.05"]
    rc = cli_main(train_args("group-ppo", tiny_random_folders["sd"], prompt_file, out, samples=16, sets=sets) + ["--plugin", str(readme_plugin(tmp_path))])
    assert rc == 0
    log = read_log(out)
    assert len(log) == 2 and log[-1]["samples"] == 16 and log[-1]["updates"] == 4 and log[-1]["loss"] != 0
    lora = load_file(str(out / "final" / "pytorch_lora_weights.safetensors"))
    assert any(float(v.abs().sum()) > 0 for k, v in lora.items() if "lora_B" in k or "lora.up" in k)
