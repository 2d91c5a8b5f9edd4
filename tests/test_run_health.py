"""The trainer's compute counters and health fields in log.jsonl (CONTRACT.md), on a tiny random
model: first_log_ratio_abs per epoch, a non-finite loss logged as a JSON string and then a clear
error, and alignzoo.health's flags printed and written to health.json."""

from __future__ import annotations

import json
import sys
import types

import pytest

from alignzoo.algos import get_algorithm
from alignzoo.algos.trainer import TrainConfig, Trainer, read_log


def _trainer(folder, prompts, out, algo="ddpo", samples=8, **kw):
    cfg = get_algorithm(algo).Config(**{"num_steps": 3, "samples_per_epoch": 4, "train_batch_size": 2, "gradient_accumulation_steps": 1, **kw})
    return Trainer(
        TrainConfig(algo=algo, reward="jpeg_compressibility", model=str(folder), prompts=str(prompts), out=str(out), samples=samples, progress=False, cpu=True),
        cfg,
    )


def test_counters_and_first_ratio_in_every_record(tiny_random_folders, prompt_file, tmp_path):
    tr = _trainer(tiny_random_folders["sd"], prompt_file, tmp_path / "d3po", algo="d3po")
    tr.train()
    log = read_log(tmp_path / "d3po")
    cfg = 2 if tr.model.uses_cfg else 1
    # per epoch: 4 images (2 pairs) sampled at T = 3; D3PO's reference pass and the update
    # recompute the 2 rendered transitions of each; 2 images per update = 1 pair → 2 updates
    assert [r["samples"] for r in log] == [4, 8] and [r["updates"] for r in log] == [2, 4]
    assert log[-1]["unet_forward"] == cfg * 8 * (3 + 2 + 2) and log[-1]["unet_backward"] == cfg * 8 * 2
    assert log[-1]["vae_decodes"] == log[-1]["reward_queries"] == 16 and log[-1]["log_reward_queries"] == 8
    assert all(0 <= r["first_log_ratio_abs"] < 1e-4 for r in log)  # sampling and recomputation: the same network
    assert all(isinstance(r["seconds_total"], float) for r in log)


def test_a_nonfinite_loss_is_logged_as_a_string_then_stops_the_run(tiny_random_folders, prompt_file, tmp_path):
    tr = _trainer(tiny_random_folders["sd"], prompt_file, tmp_path / "nan", samples=16)
    loss = tr.algo.loss
    tr.algo.loss = lambda items, new, old, data: (loss(items, new, old, data)[0] * float("nan"), {})
    with pytest.raises(RuntimeError, match=r"^ddpo: non-finite loss \(nan\) at epoch 1 .*lower learning_rate"):
        tr.train()
    lines = (tmp_path / "nan" / "log.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["loss"] == "nan" and "NaN" not in lines[0]  # valid JSON, one epoch


def test_health_flags_are_printed_and_written(tiny_random_folders, prompt_file, tmp_path, monkeypatch, capsys):
    """With a stand-in for the health module (written on another branch; the trainer guards its
    import): run_flags gets the whole log and the clip range; each flag is printed; health.json."""
    seen = {}

    def run_flags(records, clip_range=None):
        seen.update(epochs=[r["epoch"] for r in records], clip_range=clip_range)
        return [{"flag": "clip_never_fires", "message": "clipfrac was 0 in every epoch"}]

    monkeypatch.setitem(sys.modules, "alignzoo.health", types.SimpleNamespace(run_flags=run_flags))
    _trainer(tiny_random_folders["sd"], prompt_file, tmp_path / "h", clip_range=0.2).train()
    assert seen == {"epochs": [1, 2], "clip_range": 0.2}
    assert "warning: clip_never_fires: clipfrac was 0 in every epoch" in capsys.readouterr().err
    assert json.loads((tmp_path / "h" / "health.json").read_text()) == {"flags": [{"flag": "clip_never_fires", "message": "clipfrac was 0 in every epoch"}]}
