"""The committed tiny-world models, sampled with alignzoo's own sampler (issue 2's quality bar)."""

import functools

import pytest
import torch

from alignzoo.benchmarks.evaluation import evaluation_noise
from alignzoo.models import load_model
from alignzoo.models.sampling import generate
from alignzoo.rewards.tiny import evaluate_attribute_accuracy
from alignzoo.tinyworld import seen_prompts


@functools.lru_cache(maxsize=None)
def _model(name):
    return load_model(name)


@functools.lru_cache(maxsize=None)
def accuracy(name: str, steps: int) -> dict:
    model = _model(name)
    prompts = seen_prompts()
    noise = evaluation_noise(model.latent_shape, len(prompts), 2, seed=777, prompt_set="quality")
    expanded = [p for p in prompts for _ in range(2)]
    images = torch.cat([generate(model, expanded[i : i + 64], steps, eta=0.0, init_noise=noise[i : i + 64]) for i in range(0, len(expanded), 64)])
    return evaluate_attribute_accuracy(images, expanded)


@pytest.mark.xdist_group("tiny-quality")
def test_tiny_sd_16_steps_shows_colour_and_shape():
    acc = accuracy("tiny-sd", 16)
    print("tiny-sd 16 steps", acc)
    assert acc["colour_and_shape"] >= 0.80, acc


@pytest.mark.xdist_group("tiny-quality")
def test_tiny_sd_one_step_is_measurably_worse():
    one, sixteen = accuracy("tiny-sd", 1), accuracy("tiny-sd", 16)
    print("tiny-sd 1 step", one)
    assert one["score"] < sixteen["score"] - 0.02, (one, sixteen)


@pytest.mark.xdist_group("tiny-quality")
def test_tiny_lcm_4_steps_close_to_tiny_sd_16():
    lcm4, sd16 = accuracy("tiny-lcm", 4), accuracy("tiny-sd", 16)
    print("tiny-lcm 4 steps", lcm4)
    assert lcm4["colour_and_shape"] >= sd16["colour_and_shape"] - 0.10, (lcm4, sd16)


def test_tiny_models_load_through_the_registered_classes():
    sd, lcm = _model("tiny-sd"), _model("tiny-lcm")
    assert sd.kind == "sd" and lcm.kind == "lcm"
    assert sd.scheduler.config.timestep_spacing == "trailing" and sd.guidance_scale == 1.0
    assert lcm.unet.config.time_cond_proj_dim is not None
    assert sd.resolution == 32 and lcm.resolution == 32
