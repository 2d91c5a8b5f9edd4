"""tools/seed_gains.py: per-seed gains from the last evaluation of finished cells, judges' agreement."""

import importlib.util
import json
import math
from pathlib import Path

_spec = importlib.util.spec_from_file_location("seed_gains", Path(__file__).parents[1] / "tools" / "seed_gains.py")
seed_gains = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(seed_gains)


def _cell(root: Path, seed: int, gains_by_samples: dict[int, float], done: bool = True) -> None:
    cell = root / f"ddpo__tiny_geneval__seed{seed}"
    cell.mkdir(parents=True)
    rows = [
        {
            "algo": "ddpo",
            "train_reward": "tiny_geneval",
            "seed": seed,
            "samples": n,
            "eval_reward": "strict",
            "prompt_set": "seen",
            "steps": 4,
            "mean": 0.5,
            "diff_mean": g,
        }
        for n, g in gains_by_samples.items()
    ]
    (cell / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (cell / "scores.json").write_text(json.dumps({"seen|strict|4": [1.0, 0.0, 1.0, 0.0], "seen|judge2|4": [1.0, 1.0, 0.0, 0.0]}))
    if done:
        (cell / "DONE").write_text("ok")


def test_gains_take_each_finished_cells_last_evaluation(tmp_path):
    _cell(tmp_path, 0, {1024: 0.9, 8192: 0.10})
    _cell(tmp_path, 1, {8192: 0.20})
    _cell(tmp_path, 2, {8192: 0.60}, done=False)  # unfinished: left out
    got = seed_gains.gains(tmp_path, reward="strict", steps=4)
    assert got == {("ddpo", "tiny_geneval", "strict", "seen", 4): {0: 0.10, 1: 0.20}}
    assert seed_gains.gains(tmp_path, reward="strict", steps=8) == {}


def test_cli_prints_mean_and_across_seed_se(tmp_path, capsys, monkeypatch):
    for seed, g in enumerate([0.1, 0.2, 0.6]):
        _cell(tmp_path, seed, {8192: g})
    monkeypatch.setattr("sys.argv", ["seed_gains", str(tmp_path)])
    seed_gains.main()
    mean = (0.1 + 0.2 + 0.6) / 3
    se = math.sqrt(sum((x - mean) ** 2 for x in (0.1, 0.2, 0.6)) / 2) / math.sqrt(3)
    assert f"+{mean:.3f} ± {se:.3f} [+0.100, +0.200, +0.600]" in capsys.readouterr().out


def test_agreement_counts_images_both_judges_decide_alike(tmp_path):
    _cell(tmp_path, 0, {8192: 0.1})
    (line,) = seed_gains.agreement(tmp_path, "strict", "judge2", steps=4)
    assert "agree on 50.0% of 4 images" in line  # images 0 and 3 alike, 1 and 2 not
