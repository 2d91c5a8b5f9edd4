"""Learning tests: every algorithm measurably improves its reward on the tiny world.

Each (algorithm, model) trains with the shipped suite presets (quick for tiny-sd, tiny-lcm for
tiny-lcm) on a small budget, then is evaluated against the pretrained model (the same UNet with
its LoRA disabled) on the same prompts and held-out noise seeds. The gain must exceed 3 paired
standard errors AND the gain of a control run trained with the same budget on the `random`
reward with the same settings (drift alone moves rewards: TINYWORLD_NOTES).

Every algorithm is tested on one reward: the task reward tiny_alignment, except rlcm-ddpo, which
needs twice the budget there (the comment under BUDGET) and is tested on jpeg_compressibility;
ddpo and rebel, whose two rewards share one control run, on both. (Until 2026-12-02 every case ran
on both rewards: 28 runs' worth of training, 25 minutes of `make test`, against 16 now.)
"""
import functools

import pytest
import torch

from alignzoo.algos.trainer import Trainer, TrainConfig
from alignzoo.benchmarks.evaluation import paired_gains, pretrained_scores
from alignzoo.benchmarks.prompts import get_prompts
from alignzoo.benchmarks.suites import load_suite
from alignzoo.rewards import get_reward

TA, JPEG = "tiny_alignment", "jpeg_compressibility"
CASES = [("ddpo", "tiny-sd", TA), ("ddpo", "tiny-sd", JPEG), ("rebel", "tiny-sd", TA), ("rebel", "tiny-sd", JPEG),
         ("d3po", "tiny-sd", TA), ("sdpo", "tiny-sd", TA),
         ("rlcm-ddpo", "tiny-lcm", JPEG), ("rlcm-rebel", "tiny-lcm", TA), ("sdpo", "tiny-lcm", TA)]
SUITE_OF = {"tiny-sd": "quick", "tiny-lcm": "tiny-lcm"}
BUDGET = 1024  # generated images per training run
# rlcm-ddpo's single trajectories carry the initial noise's reward variance that paired methods
# cancel: on tiny_alignment at 1,024 images it passed on seed 0 (+0.013 +- 0.003) but not seed 1
# (+0.005 +- 0.003); at 2,048 both (+0.010 +- 0.002, +0.016 +- 0.003). docs/tiny-presets.md.
# So it is tested on jpeg_compressibility at 1,024 images (CASES).
NUM_STEPS = 2  # shorter trajectories than the suites' 4 keep the whole suite under 15 minutes
EVAL_PROMPTS = 64
EVAL_IMAGES_PER_PROMPT = 8  # 512 held-out noises per run: a paired SE of ~0.003 on tiny_alignment
_RUNS: dict = {}
_PRETRAINED: dict = {}  # (model, steps) -> per-image scores of the pretrained model, shared by its runs


@functools.lru_cache(maxsize=None)
def _reward(name):
    return get_reward(name)


def setup_for(algo: str, model: str, reward: str):
    """The suite preset (with its per-reward section) and budget a run on ``reward`` uses."""
    cfg = load_suite(SUITE_OF[model]).algo_config(algo, reward).replace(num_steps=NUM_STEPS)
    return cfg, BUDGET


def trained(algo: str, model: str, train_reward: str, cfg, budget: int, tmp_root: str) -> dict:
    """Paired gains of a run trained on ``train_reward`` with ``cfg``; runs with identical
    settings (e.g. the random-reward control of both rewards) are trained once per worker."""
    key = (algo, model, train_reward, repr(cfg), budget)
    if key not in _RUNS:
        out = f"{tmp_root}/{algo}_{model}_{train_reward}_{len(_RUNS)}"
        # no 1-step reward for the log (an extra decode and reward query per image: 14% of a ddpo run)
        tr = Trainer(TrainConfig(algo=algo, reward=train_reward, model=model, out=out, samples=budget, seed=0, progress=False,
                                 checkpoint_every=10**6, log_first_step_reward=False), cfg, reward=_reward(train_reward))
        tr.train()
        prompts = get_prompts("seen")[:EVAL_PROMPTS]
        rewards = {name: _reward(name) for name in (TA, JPEG)}
        base_key = (model, tr.num_steps)
        if base_key not in _PRETRAINED:
            _PRETRAINED[base_key] = pretrained_scores(tr.model, rewards, prompts, tr.num_steps, images_per_prompt=EVAL_IMAGES_PER_PROMPT)
        _RUNS[key] = paired_gains(tr.model, rewards, prompts, tr.num_steps, images_per_prompt=EVAL_IMAGES_PER_PROMPT,
                                  base=_PRETRAINED[base_key])
    return _RUNS[key]


@pytest.fixture(scope="session")
def tmp_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("learning"))


# Cases that do not learn yet with the shipped presets and this budget: they still run and assert,
# and are reported as xfail/xpass. None at present; the tiny-lcm x tiny_alignment cases were here
# until tiny-lcm's distillation was shortened to leave headroom at 2 steps (TRAINING.md).
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
    control = trained(algo, model, "random", cfg, budget, tmp_root)[reward]  # same settings, random reward
    print(f"{algo}/{model}/{reward}: {result} control {control}")
    assert result["gain"] > 3 * result["se"], f"{algo} on {model} did not raise {reward} by 3 SE: {result}"
    assert result["gain"] > control["gain"] + 2 * control["se"], f"{algo} on {model}: gain {result} not above the random-reward control {control}"
