"""``alignzoo perf``: one row per algorithm with positive numbers, the reward-query and decode
counts each algorithm's mathematics allows, and the real-size architecture configs (parameter
counts on the meta device; the SD-size random pipelines are never built here). Timings are not
asserted: the budgets are checked by the benchmark itself (docs/perf.md)."""

import json

import pytest
import torch

from alignzoo.algos.base import get_algorithm, list_algorithms
from alignzoo.benchmarks.perf import PerfConfig, run_perf

T = 4
# LaSRO's stage 1 (surrogate pre-training) shrunk to a few steps; the other algorithms ignore them.
LASRO_SMALL = {
    "lasro.pretrain_prompts": 1,
    "lasro.heldout_prompts": 1,
    "lasro.pretrain_steps": 2,
    "lasro.gen_steps": 1,
    "lasro.gen_batch_size": 4,
    "lasro.reg_batch_size": 4,
    "lasro.groups_per_batch": 4,
}


@pytest.fixture(scope="module")
def perf(tiny_random_folders):
    cfg = PerfConfig(model=str(tiny_random_folders["sd"]), steps=T, batch=4, repeats=1, warmup=0, overrides=dict(LASRO_SMALL), quiet=True)
    return run_perf(cfg)


def sd_algorithms():
    return [a for a in list_algorithms() if "sd" in get_algorithm(a).model_kinds]


@pytest.mark.slow
def test_a_row_per_algorithm_with_positive_numbers(perf):
    rows = {r["label"]: r for r in perf["rows"]}
    assert set(sd_algorithms()) <= set(rows)
    for name in sd_algorithms():
        r = rows[name]
        assert r["rollout_traj_per_s"] > 0 and r["train_transitions_per_s"] > 0, name
        assert r["reward_queries_per_traj"] > 0 and r["vae_decodes_per_traj"] > 0, name
        assert all(v > 0 for v in r["sec_per_1k"].values()), (name, r["sec_per_1k"])
        assert r["peak_memory_mb"] > 0 and r["epoch_seconds"] > 0
        assert 0 <= r["overhead_fraction"] < 1
        assert f"| {name} | " in perf["markdown"]
    assert "PASS" in perf["markdown"] or "FAIL" in perf["markdown"]


@pytest.mark.slow
def test_reward_queries_and_decodes_per_trajectory(perf):
    rows = {r["label"]: r for r in perf["rows"]}
    assert rows["ddpo"]["reward_queries_per_traj"] == 1
    assert rows["sdpo"]["reward_queries_per_traj"] == 3  # T >= 3: first, anchor, last
    assert rows["sdpo[all]"]["reward_queries_per_traj"] == T
    for r in perf["rows"]:  # only the requested x̂0 are decoded, each once
        assert r["vae_decodes_per_traj"] == r["reward_queries_per_traj"], r["label"]
    assert rows["ddpo"]["num_steps"] == T
    # one batched UNet call per transition while sampling, one with backward per *rendered*
    # transition in the update (the last one never reaches the image: train_unrendered_step)
    assert rows["ddpo"]["unet_evals_per_traj"] == T + (T - 1)
    assert rows["ddpo"]["train_transitions"] == 4 * (T - 1)
    budgets = perf["budgets"]
    assert set(budgets) == {"trainer_overhead", "sdpo_reward"}
    assert budgets["sdpo_reward"]["limit"] == pytest.approx(3 / T * 1.1)


@pytest.mark.parametrize("key, named", [("lasro.pairs_per_batch", "pairs_per_batch"), ("lsaro.groups_per_batch", "lsaro"), ("no_such_field", "no_such_field")])
def test_an_override_that_would_change_nothing_is_an_error(tiny_random_folders, key, named):
    cfg = PerfConfig(model=str(tiny_random_folders["sd"]), algos=["ddpo", "lasro"], overrides={key: 4}, quiet=True)
    with pytest.raises(ValueError, match=named):
        run_perf(cfg)


@pytest.mark.slow
def test_cli_writes_json_and_markdown(tiny_random_folders, tmp_path, capsys):
    from alignzoo.cli import main

    rc = main(
        [
            "perf",
            "--model",
            str(tiny_random_folders["lcm"]),
            "--algos",
            "ddpo",
            "--steps",
            "2",
            "--batch",
            "2",
            "--repeats",
            "1",
            "--warmup",
            "0",
            "--no-budgets",
            "--channels-last",
            "--grad-checkpointing",
            "--out",
            str(tmp_path),
        ]
    )
    assert rc == 0
    data = json.loads((tmp_path / "perf.json").read_text())
    assert [r["algo"] for r in data["rows"]] == ["ddpo"] and data["model"]["kind"] == "lcm"
    assert data["config"]["channels_last"] and data["machine"]["torch_threads"] >= 1
    assert "| ddpo | 2 |" in (tmp_path / "perf.md").read_text()
    assert "| ddpo | 2 |" in capsys.readouterr().out


def test_unknown_algorithm_for_the_model_kind_is_a_user_error(tiny_random_folders, capsys):
    from alignzoo.cli import main

    if "rlcm-ddpo" not in list_algorithms():
        pytest.skip("no LCM-only algorithm registered")
    assert main(["perf", "--model", str(tiny_random_folders["sd"]), "--algos", "rlcm-ddpo", "--repeats", "1"]) == 2
    assert "lcm" in capsys.readouterr().err


def test_the_probe_times_through_hooks_and_the_trainer_timer_and_leaves_nothing_behind(tiny_random_folders, prompt_file, tmp_path):
    """One epoch under the probe: every backward the trainer runs, the rollout phase and the hooked
    networks are timed and counted; uninstalling removes every hook and restores the no-op timer."""
    from alignzoo.algos.timer import NullTimer
    from alignzoo.algos.trainer import TrainConfig, Trainer
    from alignzoo.benchmarks.perf import Probe

    acfg = get_algorithm("ddpo").Config(num_steps=T, samples_per_epoch=4, train_batch_size=2)
    model = str(tiny_random_folders["sd"])
    tcfg = TrainConfig(algo="ddpo", reward="jpeg_compressibility", model=model, prompts=str(prompt_file), out=str(tmp_path), progress=False)
    trainer = Trainer(tcfg, acfg)
    assert isinstance(trainer.timer, NullTimer)
    probe = Probe(trainer.device)
    probe.install(trainer)
    try:
        trainer.train_epoch()
    finally:
        probe.uninstall()
    c, s = probe.counts, probe.seconds
    assert c["trajectories"] == 4 and c["unet_rows_nograd"] == 4 * T and c["unet_rows_grad"] == 4 * (T - 1)
    assert c["vae_rows"] == c["reward_images"] == 4 + 4 and c["text_rows"] == 4  # + the logged 1-step rewards
    assert all(s[k] > 0 for k in ("phase_sampling", "unet", "backward", "vae", "reward", "text_encoder"))
    assert isinstance(trainer.timer, NullTimer) and probe.depth == 0
    model = trainer.model
    for module in (model.unet, model.vae.decoder, model.vae.post_quant_conv, model.text_encoder, trainer.reward):
        assert not module._forward_pre_hooks and not module._forward_hooks


def test_nested_components_count_once_as_the_outermost():
    from alignzoo.benchmarks.perf import Probe

    inner = torch.nn.Linear(2, 2)
    outer = torch.nn.Sequential(inner)
    probe = Probe(torch.device("cpu"))
    probe.hook(outer, "outer", "outer_rows")
    probe.hook(inner, "inner", "inner_rows")
    outer(torch.zeros(3, 2))
    with probe.component("backward"):
        inner(torch.zeros(5, 2))
    assert set(probe.seconds) == {"outer", "backward"} and dict(probe.counts) == {"outer_rows": 3, "inner_rows": 8}
    probe.uninstall()
    assert not inner._forward_hooks and not outer._forward_pre_hooks


def test_fast_path_options_on_the_adapter(tiny_random_sd):
    model = tiny_random_sd
    model.add_lora(rank=2)
    state = model.enable_fast_paths(channels_last=True, gradient_checkpointing=True)
    assert state == {"channels_last": True, "compile": False, "gradient_checkpointing": True}
    assert model.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    model.unet.train()
    x = torch.randn(2, *model.latent_shape)
    emb = model.encode_prompts(["a red circle", "a blue square"])
    eps, _ = model.predict_noise(x, torch.tensor([999, 999]), emb)
    eps.float().pow(2).mean().backward()
    assert any(p.grad is not None for p in model.trainable_parameters())


# ---------------------------------------------------------------------------- real-size configs
def test_sd_turbo_arch_configs_match_the_real_parameter_counts():
    from alignzoo.models.arch import parameter_counts

    n = parameter_counts("sd-turbo-arch")
    assert n["unet"] == pytest.approx(865.91e6, abs=0.05e6)
    assert n["vae"] == pytest.approx(83.65e6, abs=0.05e6)
    assert n["text_encoder"] == pytest.approx(340.39e6, abs=0.05e6)


def test_lcm_arch_configs_match_the_real_parameter_counts():
    from alignzoo.models.arch import parameter_counts

    n = parameter_counts("lcm-arch")
    sd15_unet = 859_520_964
    assert n["unet"] == sd15_unet + 256 * 320  # + the w-embedding projection (time_cond_proj_dim 256 → 320, no bias)
    assert n["vae"] == pytest.approx(83.65e6, abs=0.05e6)
    assert n["text_encoder"] == pytest.approx(123.06e6, abs=0.05e6)


def test_arch_entries_are_registered_with_lazy_builders():
    from alignzoo.models import get_model_spec, list_models

    assert {"sd-turbo-arch", "lcm-arch"} <= set(list_models())
    sd, lcm = get_model_spec("sd-turbo-arch"), get_model_spec("lcm-arch")
    assert callable(sd.builder) and callable(lcm.builder)  # never called here: building is minutes and GBs
    assert (sd.kind, sd.resolution, sd.train_steps) == ("sd", 512, 50)
    assert (lcm.kind, lcm.guidance_scale, lcm.train_steps) == ("lcm", 8.0, 8)


def test_arch_builder_builds_once_and_loads(tmp_path, monkeypatch):
    """The builder on a tiny stand-in config folder: diffusers layout, cached, loadable."""
    from alignzoo.models import arch, load_model

    src = tmp_path / "configs" / "tiny-arch"
    real = arch.CONFIGS / "sd-turbo"
    for sub in ("unet", "vae", "text_encoder"):
        (src / sub).mkdir(parents=True)
    unet = json.loads((real / "unet" / "config.json").read_text())
    unet.update(
        block_out_channels=[16, 32],
        down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
        attention_head_dim=[2, 4],
        cross_attention_dim=32,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=8,
    )
    vae = json.loads((real / "vae" / "config.json").read_text())
    vae.update(
        block_out_channels=[16, 32], down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2, layers_per_block=1, norm_num_groups=8
    )
    te = json.loads((real / "text_encoder" / "config.json").read_text())
    te.update(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, projection_dim=32)
    for sub, cfg in (("unet", unet), ("vae", vae), ("text_encoder", te)):
        (src / sub / "config.json").write_text(json.dumps(cfg))
    (src / "scheduler").mkdir()
    (src / "scheduler" / "scheduler_config.json").write_text((real / "scheduler" / "scheduler_config.json").read_text())
    (src / "model_index.json").write_text((real / "model_index.json").read_text())
    monkeypatch.setattr(arch, "CONFIGS", tmp_path / "configs")
    monkeypatch.setenv("ALIGNZOO_CACHE", str(tmp_path / "cache"))

    folder = arch.build_arch_pipeline("tiny-arch")
    assert folder == tmp_path / "cache" / "arch" / "tiny-arch"
    stamp = (folder / "alignzoo_build.json").stat().st_mtime_ns
    assert arch.build_arch_pipeline("tiny-arch") == folder and (folder / "alignzoo_build.json").stat().st_mtime_ns == stamp  # cached
    model = load_model(str(folder))
    assert model.tokenizer.model_max_length == 77 and model.text_encoder.config.vocab_size == 49408
    assert model.vae_scale == 2 and model.resolution == 16
    emb = model.encode_prompts(["a photo of a cat"])
    assert emb.shape == (1, 77, 32)
