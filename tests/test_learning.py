"""Learning tests: every algorithm measurably improves its reward on the compositional tiny world.

Each (algorithm, model) trains with the shipped suite presets (quick for tiny-sd-v2, tiny-lcm for
tiny-lcm-v2) on a small budget, then is evaluated against the pretrained model (the same UNet with
its LoRA disabled) on the same prompts and held-out noise seeds. The gain must exceed 3 paired
standard errors AND the gain of a control run trained with the same algorithm, settings and
budget on the `random` reward (drift alone moves rewards: TINYWORLD_NOTES). Reward-backprop
algorithms need a reward gradient, which `random` has not: their control is `random_direction`,
its differentiable twin (a pseudo-random gradient direction per image and prompt: the same
back-propagation and optimiser steps, nothing consistent to learn, so it measures their drift).

The reward is tiny_preference, the world's ImageReward analogue: it moves within a test's budget
(ddpo +0.80 +- 0.03 at 1,024 images, its random control +0.02 +- 0.02). tiny_geneval does not
(ddpo -0.011 +- 0.017 at 1,024 images: it needs thousands, `alignzoo bench tiny-calibrate`), so
it is checked by the calibration suite, not here. The first world's cases (tiny-sd / tiny-lcm on
tiny_alignment and jpeg_compressibility) ran here until 2026-12-02. Measurements:
docs/tiny-presets.md ("Learning tests on the compositional world").
"""

import functools
import math

import pytest
import torch

from alignzoo.algos import get_algorithm
from alignzoo.algos.trainer import TrainConfig, Trainer
from alignzoo.benchmarks.evaluation import paired_gains, pretrained_scores
from alignzoo.benchmarks.suites import load_suite
from alignzoo.prompts import get_prompts
from alignzoo.rewards import get_reward

pytestmark = pytest.mark.slow  # trains models / runs suites: `make test` only

TP = "tiny_preference"
CASES = [
    ("ddpo", "tiny-sd-v2", TP),
    ("rebel", "tiny-sd-v2", TP),
    ("d3po", "tiny-sd-v2", TP),
    ("sdpo", "tiny-sd-v2", TP),
    ("grpo", "tiny-sd-v2", TP),
    ("rlcm-ddpo", "tiny-lcm-v2", TP),
    ("rlcm-rebel", "tiny-lcm-v2", TP),
    ("sdpo", "tiny-lcm-v2", TP),
    ("reward-backprop", "tiny-sd-v2", TP),
    ("hybrid", "tiny-sd-v2", TP),
    ("diffusion-nft", "tiny-sd-v2", TP),
    ("dpok", "tiny-sd-v2", TP),
    ("diffusion-dpo", "tiny-sd-v2", TP),
]
SUITE_OF = {"tiny-sd-v2": "quick", "tiny-lcm-v2": "tiny-lcm"}
BUDGET = 384  # generated images per training run (6 epochs of 64)
NUM_STEPS = 4  # the suites' training length
TRAIN_PROMPTS = "geneval_train"
EVAL_PROMPTS = "geneval_seen_small"  # 48 prompts, the six categories balanced
EVAL_IMAGES_PER_PROMPT = 4  # 192 held-out noises per run
_RUNS: dict = {}
_PRETRAINED: dict = {}  # (model, steps) -> per-image scores of the pretrained model, shared by its runs


@functools.lru_cache(maxsize=None)
def _reward(name, differentiable=False):
    return get_reward(name, differentiable=differentiable)


def control_for(algo: str) -> str:
    """The control reward: `random`, or its differentiable twin for algorithms that back-propagate it (reward-backprop, hybrid)."""
    return "random_direction" if get_algorithm(algo).needs_reward_grad else "random"


def setup_for(algo: str, model: str, reward: str):
    """The suite preset (with its per-reward section) and budget a run on ``reward`` uses."""
    cfg = load_suite(SUITE_OF[model]).algo_config(algo, reward).replace(num_steps=NUM_STEPS)
    return cfg, BUDGET


def trained(algo: str, model: str, train_reward: str, cfg, budget: int, tmp_root: str) -> dict:
    """Paired gains of a run trained on ``train_reward`` with ``cfg`` (trained once per worker)."""
    key = (algo, model, train_reward, repr(cfg), budget)
    if key not in _RUNS:
        out = f"{tmp_root}/{algo}_{model}_{train_reward}_{len(_RUNS)}"
        # no 1-step reward for the log (an extra decode and reward query per image: 14% of a ddpo run)
        tr = Trainer(
            TrainConfig(
                algo=algo,
                reward=train_reward,
                model=model,
                out=out,
                samples=budget,
                seed=0,
                prompts=TRAIN_PROMPTS,
                progress=False,
                checkpoint_every=10**6,
                log_first_step_reward=False,
            ),
            cfg,
            reward=_reward(train_reward, get_algorithm(algo).needs_reward_grad),
        )
        tr.train()
        prompts = get_prompts(EVAL_PROMPTS)
        rewards = {TP: _reward(TP)}
        base_key = (model, tr.num_steps)
        if base_key not in _PRETRAINED:
            _PRETRAINED[base_key] = pretrained_scores(tr.model, rewards, prompts, tr.num_steps, images_per_prompt=EVAL_IMAGES_PER_PROMPT)
        _RUNS[key] = paired_gains(tr.model, rewards, prompts, tr.num_steps, images_per_prompt=EVAL_IMAGES_PER_PROMPT, base=_PRETRAINED[base_key])
    return _RUNS[key]


@pytest.fixture(scope="session")
def tmp_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("learning"))


# Cases that do not learn yet with the shipped presets and this budget: they still run and assert,
# and are reported as xfail/xpass. None at present.
NOT_YET: dict[tuple[str, str, str], str] = {}


def _params():
    out = []
    for a, m, r in CASES:
        marks = [pytest.mark.xdist_group(f"{a}-{m}")]
        if (a, m, r) in NOT_YET:
            marks.append(pytest.mark.xfail(reason=f"does not learn yet: {NOT_YET[(a, m, r)]}", strict=False))
        out.append(pytest.param(a, m, r, marks=marks, id=f"{a}-{m}-{r}"))
    return out


@pytest.mark.parametrize("algo,model,reward", _params())
def test_algorithm_learns(algo, model, reward, tmp_root):
    torch.manual_seed(0)
    cfg, budget = setup_for(algo, model, reward)
    result = trained(algo, model, reward, cfg, budget, tmp_root)[reward]
    control = trained(algo, model, control_for(algo), cfg, budget, tmp_root)[reward]  # same settings, a reward with nothing to learn
    print(f"{algo}/{model}/{reward}: {result} control {control}")
    assert result["gain"] > 3 * result["se"], f"{algo} on {model} did not raise {reward} by 3 SE: {result}"
    margin = result["gain"] - control["gain"]  # SEs added in quadrature: conservative, as both gains share the pretrained baseline
    assert margin > 3 * math.hypot(result["se"], control["se"]), f"{algo} on {model}: gain {result} not 3 SE above the random-reward control {control}"
