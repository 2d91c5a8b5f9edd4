"""The suite's cost estimate is what a run's log counts (``Suite.cell_cost`` from each algorithm's
declared costs, alignzoo.algos.costs): every built-in algorithm trains a cell of a few short epochs
on the compositional tiny world (tiny-sd-v2; the LCM-only ones on tiny-lcm-v2), as the benchmark
runner configures it, and the estimate of its images, updates, UNet evaluations (sampling and
updates) and reward queries equals the last log line's counters exactly. The configurations turn
on what changes the counts: inner epochs, timestep fractions, references, windows, noise draws,
re-noisings, LaSRO's stage 1, each reward-backprop mode (at T = 3 ReFL's window is one step and
AlignProp's k is pinned, so no count is random), and classifier-free guidance."""

from __future__ import annotations

import json

import numpy as np
import pytest

from alignzoo.algos import get_algorithm, list_algorithms
from alignzoo.algos.base import Algorithm
from alignzoo.algos.trainer import Trainer, read_log
from alignzoo.benchmarks.runner import BenchmarkRunner
from alignzoo.benchmarks.suites import parse_suite

REWARD = "random_direction"  # differentiable (reward backprop, hybrid), cheap, any image size
TRAIN = {"num_steps": 3, "samples_per_epoch": 8, "train_batch_size": 4, "learning_rate": 1e-4, "lora_rank": 2}
SECTIONS = {  # [algo.NAME] of each algorithm's cell; one not named here runs on [train] alone
    "ddpo": {"num_inner_epochs": 2, "timestep_fraction": 0.5},
    "rebel": {"train_unrendered_step": True},
    "grpo": {"group_size": 4, "kl_beta": 0.01, "sde_window": 1, "num_inner_epochs": 2},
    "hybrid": {"group_size": 4, "num_inner_epochs": 2},
    "dpok": {"value_steps": 1, "num_inner_epochs": 2},
    "reward-backprop": {"mode": "draft-lv", "lv_n": 2, "num_inner_epochs": 2},
    "diffusion-dpo": {"noise_draws": 2, "num_inner_epochs": 2},
    "diffusion-nft": {"group_size": 4, "kl_weight": 1e-4, "num_inner_epochs": 2},
    "lasro": {
        "group_size": 4,
        **{"pretrain_prompts": 2, "heldout_prompts": 1, "pretrain_steps": 1, "surrogate_backbone": "frozen"},
        **{"gen_steps": 2, "gen_batch_size": 2, "k_surr": 1, "reg_batch_size": 2},
    },
}
MORE = [  # further configurations whose counts differ
    ("reward-backprop", {"mode": "refl"}),
    ("reward-backprop", {"mode": "alignprop", "alignprop_k_min": 2, "alignprop_k_max": 2}),
    ("reward-backprop", {"mode": "draft", "draft_k": 2, "prefix": "stored"}),
    ("lasro", {**SECTIONS["lasro"], "reg_form": "trajectory"}),
    ("sdpo", {"update_order": "step_accumulated", "reward_prediction": "one_copy"}),
]


def builtin_algorithms() -> list[str]:
    return [a for a in list_algorithms() if get_algorithm(a).__module__.startswith("alignzoo.algos.")]


def cell_suite(model: str, algo: str, section: dict, samples: int = 16):
    return parse_suite(
        {"name": "cost", "model": str(model), "algorithms": [algo], "rewards": [REWARD], "samples": samples, "train": TRAIN, "algo": {algo: section}}
    )


def logged_counts(suite, algo: str, out, model=None) -> dict:
    """The counters of the last log line of the cell's run, configured as the benchmark runner does."""
    runner = BenchmarkRunner(suite, out, device="cpu", progress=False, log=lambda *_: None)
    Trainer(runner.train_config(algo, REWARD, 0, out / algo), suite.algo_config(algo, REWARD), model=model).train()
    last = read_log(out / algo)[-1]
    return {k: last[k] for k in ("samples", "updates", "unet_evals_sampling", "unet_evals_training", "reward_queries")}


CASES = [(a, SECTIONS.get(a, {})) for a in builtin_algorithms()] + MORE


@pytest.mark.slow
@pytest.mark.parametrize("algo,section", CASES, ids=[f"{a}-{i}" for i, (a, _) in enumerate(CASES)])
def test_the_estimate_is_what_the_log_counts(algo, section, tmp_path):
    model = "tiny-sd-v2" if "sd" in get_algorithm(algo).model_kinds else "tiny-lcm-v2"
    suite = cell_suite(model, algo, section)
    assert suite.cell_cost(algo, REWARD) == logged_counts(suite, algo, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("algo,section", [("ddpo", {}), ("d3po", {}), ("reward-backprop", {"mode": "draft"}), ("diffusion-dpo", {})])
def test_classifier_free_guidance_doubles_what_the_log_doubles(algo, section, tmp_path):
    """A folder whose alignzoo.json sets guidance 2: the log counts every guided UNet row twice
    (Diffusion-DPO's conditional-only forwards once), and so does the estimate."""
    from alignzoo.models.tiny_random import build_tiny_pipeline

    folder = build_tiny_pipeline(tmp_path / "guided", "sd")
    (folder / "alignzoo.json").write_text(json.dumps({"guidance_scale": 2.0}))
    suite = cell_suite(folder, algo, section, samples=8)
    assert suite.uses_cfg()
    assert suite.cell_cost(algo, REWARD) == logged_counts(suite, algo, tmp_path)


def test_every_builtin_algorithm_that_drives_its_own_updates_declares_their_cost():
    own = [a for a in builtin_algorithms() if get_algorithm(a).update_epoch is not None]
    assert {"lasro", "reward-backprop", "diffusion-dpo", "diffusion-nft"} <= set(own)
    for name in own:
        suite = cell_suite("tiny-sd-v2", name, SECTIONS.get(name, {}))
        assert suite.cell_cost(name, REWARD)["unet_evals_training"] > 0, name


def test_an_undeclared_update_epoch_is_a_clear_error():
    class Own(Algorithm):
        name = "own"

        def update_epoch(self, ctx, rollout):
            return {}

    with pytest.raises(NotImplementedError, match=r"own drives its own updates \(update_epoch\): declare"):
        Own().training_unet_evals(3)


@pytest.mark.parametrize(
    "mode,window", [("refl", {"refl_window_start": 0.25, "refl_window_end": 1.0}), ("alignprop", {"alignprop_k_min": 2, "alignprop_k_max": 7})]
)
def test_a_random_first_step_counts_at_its_mean(mode, window):
    """ReFL's and AlignProp's first step with gradient is drawn per update: the declared count is
    the mean of what rewards() counts (the prefix, the calls with gradient, their recomputation
    under checkpointing) over the draws."""
    algo = get_algorithm("reward-backprop")(get_algorithm("reward-backprop").Config(mode=mode, **window))
    t, rng = 8, np.random.default_rng(1)
    stop = lambda s: s + 1 if mode == "refl" else t  # noqa: E731
    per_row = [s + (stop(s) - s) * (2 if algo.checkpointing else 1) for s in (algo.first_grad_step(t, rng) for _ in range(20000))]
    assert algo.training_unet_evals(t) == pytest.approx(np.mean(per_row), rel=0.01)
    assert len(set(per_row)) > 1  # the draw varies at this T
