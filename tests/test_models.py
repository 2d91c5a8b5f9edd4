"""Model adapters: loading real layouts, LoRA round trips, reference policy, offline errors."""

import subprocess
import sys

import pytest
import torch

from alignzoo.hub import MissingWeightsError
from alignzoo.models import list_models, load_model, sample
from alignzoo.models.lcm import LatentConsistencyModel
from alignzoo.models.stable_diffusion import StableDiffusionModel


def test_registered_models():
    assert {"sd-turbo", "lcm-dreamshaper-v7", "tiny-sd", "tiny-lcm"} <= set(list_models())


def test_folder_kind_detection(tiny_random_sd, tiny_random_lcm):
    assert isinstance(tiny_random_sd, StableDiffusionModel) and tiny_random_sd.scheduler.config.timestep_spacing == "trailing"
    assert isinstance(tiny_random_lcm, LatentConsistencyModel)


def test_to_pipeline_is_the_kinds_diffusers_pipeline_of_the_same_modules(tiny_random_sd, tiny_random_lcm):
    for model, name in ((tiny_random_sd, "StableDiffusionPipeline"), (tiny_random_lcm, "LatentConsistencyModelPipeline")):
        pipe = model.to_pipeline()
        assert type(pipe).__name__ == name and pipe.safety_checker is None
        assert pipe.unet is model.unet and pipe.vae is model.vae and pipe.scheduler is model.scheduler


@pytest.mark.parametrize("kind", ["sd", "lcm"])
def test_registered_class_loads_local_folder_like_hub_model(kind, tiny_random_folders):
    # the sd-turbo / lcm entries load any local folder in their layout through the same class
    name = "sd-turbo" if kind == "sd" else "lcm-dreamshaper-v7"
    m = load_model(name, model_path=tiny_random_folders[kind], resolution=16)
    assert m.spec.name == name and m.resolution == 16
    tr = sample(m, ["a red cat"], 2, eta=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(tr.log_probs).all()


def _perturb_lora(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("kind", ["sd", "lcm"])
def test_reference_context_is_exactly_the_base_model(kind, tiny_random_folders):
    m = load_model(str(tiny_random_folders[kind]))
    x = m.init_noise(2, torch.Generator().manual_seed(0))
    emb = m.encode_prompts(["a cat", "a dog"])
    t = torch.tensor([999, 500])
    with torch.no_grad():
        base = m.predict_noise(x, t, emb)[0]
        m.add_lora(rank=4)
        _perturb_lora(m)
        tuned = m.predict_noise(x, t, emb)[0]
        with m.reference():
            ref = m.predict_noise(x, t, emb)[0]
        after = m.predict_noise(x, t, emb)[0]
    assert not torch.allclose(tuned, base, atol=1e-4)
    assert torch.equal(ref, base)
    assert torch.equal(after, tuned)


@pytest.mark.parametrize("kind", ["sd", "lcm"])
def test_lora_round_trip_through_diffusers_load_lora_weights(kind, tiny_random_folders, tmp_path):
    m = load_model(str(tiny_random_folders[kind]))
    m.add_lora(rank=4, target_modules=["to_q", "to_k", "to_v", "to_out.0", "conv1"])
    _perturb_lora(m, seed=1)
    m.save_lora(tmp_path / "lora")
    x = m.init_noise(1, torch.Generator().manual_seed(0))
    emb = m.encode_prompts(["a red cat"])
    t = torch.tensor([600])
    with torch.no_grad():
        want = m.predict_noise(x, t, emb)[0]
    # 1) our own loader into a fresh model
    m2 = load_model(str(tiny_random_folders[kind]))
    m2.load_lora(tmp_path / "lora")
    with torch.no_grad():
        got = m2.predict_noise(x, t, emb)[0]
    assert torch.allclose(got, want, atol=1e-5)
    # 2) diffusers' own pipeline loader
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(tiny_random_folders[kind]))
    pipe.load_lora_weights(str(tmp_path / "lora"))
    m3 = load_model(str(tiny_random_folders[kind]))
    m3.unet = pipe.unet
    with torch.no_grad():
        got3 = m3.predict_noise(x, t, emb)[0]
    assert torch.allclose(got3, want, atol=1e-5)


def test_offline_error_names_files_option_and_env(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_cache"))
    with pytest.raises(MissingWeightsError) as err:
        load_model("sd-turbo")
    msg = str(err.value)
    for needle in ("stabilityai/sd-turbo", "unet/config.json", "--model-path", "ALIGNZOO_SD_TURBO", "HF_HUB_OFFLINE"):
        assert needle in msg


def test_cli_offline_error_is_one_message_not_a_traceback(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-m", "alignzoo", "sample", "--model", "lcm-dreamshaper-v7", "--prompt", "a cat", "--steps", "1", "--out", str(tmp_path / "g.png")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and "SimianLuo/LCM_Dreamshaper_v7" in out.stderr


def test_unknown_model_lists_known():
    with pytest.raises(KeyError) as err:
        load_model("sd-trubo")
    assert "sd-turbo" in str(err.value) and "tiny-sd" in str(err.value)
