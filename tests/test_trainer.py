"""The shared trainer: exact resume after a kill, plugins, fairness, multi-process runs."""

import json
import signal
import subprocess
import time

import pytest
import torch
from safetensors.torch import load_file

from alignzoo.algos import get_algorithm
from alignzoo.algos.trainer import TrainConfig, Trainer, read_log
from alignzoo.cli import main as cli_main

from helpers import alignzoo_command, launch_command, launch_env, subprocess_env, train_args

FAST = ["num_steps=3", "samples_per_epoch=8", "train_batch_size=2", "learning_rate=0.01"]


def _env():
    return subprocess_env(PYTHONUNBUFFERED="1")


def _train_args(folder, prompts, out):
    return train_args("sdpo", folder, prompts, out, samples=48, sets=FAST)


@pytest.mark.slow
def test_resume_after_kill_equals_uninterrupted_run(tiny_random_folders, prompt_file, tmp_path):
    folder = tiny_random_folders["sd"]
    full = tmp_path / "full"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the uninterrupted run in this process, on one thread like the subprocesses
    try:
        assert cli_main(_train_args(folder, prompt_file, full)) == 0
    finally:
        torch.set_num_threads(threads)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(alignzoo_command(*_train_args(folder, prompt_file, killed)), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list((killed / "checkpoints").glob("epoch_00002")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "final").exists()
    n_before = len(read_log(killed))
    assert 2 <= n_before < 6
    subprocess.run(alignzoo_command(*_train_args(folder, prompt_file, killed)), check=True, env=_env(), capture_output=True, timeout=600)
    a, b = read_log(full), read_log(killed)
    assert [r["epoch"] for r in b] == list(range(1, 7))
    drop = lambda r: {k: v for k, v in r.items() if not k.startswith("seconds")}  # noqa: E731
    assert [drop(r) for r in a] == [drop(r) for r in b]
    wa = load_file(str(full / "final" / "pytorch_lora_weights.safetensors"))
    wb = load_file(str(killed / "final" / "pytorch_lora_weights.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(float(v.abs().sum()) > 0 for k, v in wa.items() if "lora_B" in k or "lora.up" in k)


def test_cli_errors_are_clear(tiny_random_folders, prompt_file, tmp_path, capsys):
    assert cli_main(["train", "--algo", "nope", "--reward", "jpeg_compressibility", "--out", str(tmp_path / "x")]) == 2
    assert "Known algorithms: d3po, ddpo" in capsys.readouterr().err
    assert cli_main(train_args("sdpo", tiny_random_folders["sd"], prompt_file, tmp_path / "y", sets=["lamda=0.9"])) == 2
    assert "unknown config key 'lamda'" in capsys.readouterr().err
    assert cli_main(train_args("rlcm-ddpo", tiny_random_folders["sd"], prompt_file, tmp_path / "z")) == 2
    assert "runs on lcm models" in capsys.readouterr().err


def test_train_preset_starts_from_a_suites_settings(monkeypatch, tmp_path, capsys):
    """`alignzoo train --preset SUITE` applies [train], [algo.A] and [algo_reward.A.R], then --set."""
    import alignzoo.algos.trainer as trainer_module

    seen = {}

    class Captured(Exception):
        pass

    def fake_trainer(cfg, algo_config):
        seen["cfg"] = algo_config
        raise Captured

    monkeypatch.setattr(trainer_module, "Trainer", fake_trainer)
    suite = tmp_path / "preset.toml"
    suite.write_text(
        'name = "preset"\nmodel = "tiny-lcm"\nalgorithms = ["rlcm-ddpo"]\nrewards = ["tiny_alignment", "jpeg_compressibility"]\n'
        "[train]\nnum_steps = 4\nsamples_per_epoch = 64\ntrain_batch_size = 8\nlearning_rate = 3e-4\nlora_rank = 4\n"
        "[algo.rlcm-ddpo]\nclip_range = 0.1\n"
        "[algo_reward.rlcm-ddpo.tiny_alignment]\nlearning_rate = 2e-4\ntrain_batch_size = 16\nadv_clip = 2.0\n"
    )
    args = ["train", "--algo", "rlcm-ddpo", "--model", "tiny-lcm", "--out", str(tmp_path / "p"), "--preset", str(suite), "--set", "num_steps=2"]
    with pytest.raises(Captured):
        cli_main(args + ["--reward", "tiny_alignment"])
    cfg = seen["cfg"]
    # [train] lr 3e-4 and batch 8, overridden for tiny_alignment by the per-reward section
    assert (cfg.learning_rate, cfg.train_batch_size, cfg.adv_clip, cfg.clip_range) == (2e-4, 16, 2.0, 0.1)
    assert (cfg.num_steps, cfg.samples_per_epoch, cfg.lora_rank) == (2, 64, 4)
    with pytest.raises(Captured):
        cli_main(args + ["--reward", "jpeg_compressibility"])
    assert (seen["cfg"].learning_rate, seen["cfg"].train_batch_size, seen["cfg"].adv_clip) == (3e-4, 8, 10.0)
    assert cli_main(args[:-4] + ["--reward", "tiny_alignment", "--preset", "tiny-lmc"]) == 2
    assert "unknown suite 'tiny-lmc'; known suites:" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["ddpo", "sdpo"])
def test_every_algorithm_uses_the_same_images_per_epoch(algo, tiny_random_folders, prompt_file, tmp_path):
    cfg = get_algorithm(algo).Config(num_steps=4, samples_per_epoch=8)
    tr = Trainer(
        TrainConfig(
            algo=algo,
            reward="jpeg_compressibility",
            model=str(tiny_random_folders["sd"]),
            prompts=str(prompt_file),
            out=str(tmp_path / algo),
            samples=8,
            progress=False,
        ),
        cfg,
    )
    rec = tr.train()[-1]
    assert rec["samples"] == 8
    # SDPO: 3 per trajectory (the first step among them); DDPO: the sample's, plus its 1-step x̂0 for the log
    assert (rec["reward_queries"], rec["log_reward_queries"]) == ((24, 0) if algo == "sdpo" else (16, 8))
    assert rec["vae_decodes"] == rec["reward_queries"] and rec["unet_forward"] == rec["unet_evals_sampling"] + rec["unet_evals_training"]


# two processes with a paired algorithm (agreement, split, per-rank RNG): test_fairness.py's
# test_two_processes_make_the_global_update_count_of_one, which shares its accelerate launch


@pytest.mark.slow
def test_two_processes_lasro_agree_on_lora_and_surrogate(tiny_random_folders, prompt_file, tmp_path):
    """LaSRO averages its surrogate's gradients itself: both processes must end with the same
    surrogate as well as the same LoRA (the trainer checks replicated_parameters and records them)."""
    out = tmp_path / "ddp_lasro"
    sets = [
        "num_steps=2",
        "samples_per_epoch=8",
        "group_size=4",
        "pretrain_prompts=4",
        "heldout_prompts=2",
        "pretrain_steps=2",
        "gen_steps=2",
        "k_surr=1",
        "gen_batch_size=2",
        "groups_per_batch=1",
        "reg_batch_size=4",
        "tie_margin=0.0",
        "learning_rate=0.01",
    ]
    cmd = launch_command(*train_args("lasro", tiny_random_folders["lcm"], prompt_file, out, samples=56, sets=sets), "--cpu")
    res = subprocess.run(cmd, env=launch_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    info = json.loads((out / "final" / "processes.json").read_text())
    assert info["processes"] == 2 and info["prompts_per_process_per_epoch"] == [1.0, 1.0]  # 8 images = 2 prompts × N_s 4
    assert info["lora_checksums"][0] == info["lora_checksums"][1]
    assert info["algo_checksums"][0] == info["algo_checksums"][1] and info["algo_checksums"][0][1] > 0  # the surrogate, non-empty
    log = read_log(out)
    # every image counts: stage 1 (4 + 2 prompts × N_s 4 = 24), then per epoch 8 rollouts + 2 generator steps × 2 × 2 processes
    assert [r["samples"] for r in log] == [24 + 16, 24 + 32] and log[-1]["generator_steps"] >= 2
