"""The LCM timestep schedule: modern diffusers' spacing or RLCM's, chosen per model."""

import pytest
import torch

from alignzoo.models import get_model_spec, load_model, sample
from alignzoo.models.sampling import previous_timesteps

# RLCM's scheduler (REFERENCE_NOTES §3.3): c = 1000 // 50 = 20, origin = [19, 39, ..., 999],
# skip = 50 // N, the first N of origin read backwards with stride skip
RLCM = {8: [999, 879, 759, 639, 519, 399, 279, 159], 4: [999, 759, 519, 279], 2: [999, 499], 1: [999], 16: [999 - 60 * k for k in range(16)]}
# modern diffusers' LCMScheduler: indices floor(linspace(0, 50, N, endpoint=False)) of origin backwards
DIFFUSERS = {8: [999, 879, 759, 639, 499, 379, 259, 139], 4: [999, 759, 499, 259]}


@pytest.fixture(scope="module")
def lcm_models(tiny_random_folders):
    folder = str(tiny_random_folders["lcm"])
    return {"diffusers": load_model(folder), "rlcm": load_model(folder + "@rlcm"), "kwarg": load_model(folder, lcm_schedule="rlcm")}


@pytest.mark.parametrize("n", [1, 2, 4, 8, 16])
def test_rlcm_schedule_is_rlcms_list(lcm_models, n):
    assert lcm_models["rlcm"].timesteps(n).tolist() == RLCM[n]
    assert lcm_models["kwarg"].timesteps(n).tolist() == RLCM[n]


@pytest.mark.parametrize("n", [4, 8])
def test_default_schedule_is_modern_diffusers(lcm_models, n):
    assert lcm_models["diffusers"].spec.lcm_schedule == "diffusers"
    assert lcm_models["diffusers"].timesteps(n).tolist() == DIFFUSERS[n]


def test_sampling_follows_the_models_schedule(lcm_models):
    # training rollouts and evaluation both go through sample(), which asks the model
    m = lcm_models["rlcm"]
    traj = sample(m, ["a cat"], 4, generator=torch.Generator().manual_seed(0))
    assert traj.timesteps.tolist() == RLCM[4]
    assert traj.prev_timesteps.tolist() == RLCM[4][1:] + [279]  # LCM: the next timestep; the last re-noises to itself
    assert previous_timesteps(m, m.timesteps(8)).tolist() == RLCM[8][1:] + [159]


def test_schedule_errors_are_one_line():
    with pytest.raises(ValueError, match="unknown LCM schedule 'bogus'"):
        get_model_spec("lcm-dreamshaper-v7@bogus")
    with pytest.raises(ValueError, match="LCM models only"):
        get_model_spec("sd-turbo@rlcm")
    spec = get_model_spec("lcm-dreamshaper-v7@rlcm")
    assert spec.lcm_schedule == "rlcm" and spec.name == "lcm-dreamshaper-v7@rlcm"  # the name keeps it (provenance)
    assert get_model_spec("lcm-dreamshaper-v7").lcm_schedule == "diffusers"


def test_rlcm_schedule_rejects_more_steps_than_distilled(lcm_models):
    with pytest.raises(ValueError, match="1 to 50 steps"):
        lcm_models["rlcm"].timesteps(51)


def test_suites_set_the_schedule():
    from alignzoo.benchmarks.suites import load_suite, parse_suite, suite_to_toml

    suite = load_suite("paper-lcm")
    assert suite.model == "lcm-dreamshaper-v7@rlcm" and get_model_spec(suite.model).lcm_schedule == "rlcm"
    assert 'model = "lcm-dreamshaper-v7@rlcm"' in suite_to_toml(suite)  # the written suite reloads the same
    assert load_suite("tiny-lcm").model == "tiny-lcm-v2"  # the measured tiny suites keep diffusers' schedule
    base = {"model": "tiny-sd", "algorithms": ["ddpo"], "rewards": ["tiny_alignment"]}
    with pytest.raises(ValueError, match="suite 'x': lcm_schedule 'rlcm' applies to LCM models only"):
        parse_suite({**base, "name": "x", "lcm_schedule": "rlcm"})
    with pytest.raises(ValueError, match="suite 'x': unknown LCM schedule"):
        parse_suite({**base, "name": "x", "model": "tiny-lcm", "lcm_schedule": "rlcn"})
    assert parse_suite({**base, "model": "tiny-lcm", "lcm_schedule": "rlcm"}).model == "tiny-lcm@rlcm"
