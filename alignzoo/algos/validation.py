"""Checks of training settings before anything expensive runs.

One place for the value checks that the trainer (every ``alignzoo train`` and every benchmark
cell) and the suite loader (``alignzoo bench``, ``alignzoo train --preset``) share, so a bad
value fails in a second with one line naming the setting and how to fix it, instead of running
and exiting 0 (``--samples 0`` trained nothing; ``num_steps=0`` silently fell back to the
model's default) or ending in a traceback deep in a loop.

An algorithm whose ``Config`` has settings of its own can check them in a ``validate()`` method
of that dataclass (it should raise ``ValueError``); :func:`validate_algo_config` calls it.
"""

from __future__ import annotations

import math
from typing import Any, Callable


def _int_at_least(low: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low


def _real(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


POSITIVE_INT = (_int_at_least(1), "an integer >= 1")
POSITIVE = (lambda v: _real(v) and v > 0, "a finite number > 0")
NON_NEGATIVE = (lambda v: _real(v) and v >= 0, "a finite number >= 0")
POSITIVE_OR_NONE = (lambda v: v is None or (_real(v) and v > 0), "a finite number > 0, or none")
BETA = (lambda v: _real(v) and 0 <= v < 1, "a number in [0, 1)")

# field -> (test, what it must be); the fields every algorithm shares (alignzoo.algos.base.AlgoConfig)
ALGO_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "num_steps": (lambda v: v is None or _int_at_least(1)(v), "an integer >= 1 (sampling steps per trajectory), or none for the model's default"),
    "eta": NON_NEGATIVE,
    "samples_per_epoch": (_int_at_least(1), "an integer >= 1 (images generated per epoch)"),
    "learning_rate": POSITIVE,
    "adam_beta1": BETA,
    "adam_beta2": BETA,
    "weight_decay": NON_NEGATIVE,
    "adam_epsilon": POSITIVE,
    "lr_schedule_epochs": POSITIVE_INT,
    "max_grad_norm": POSITIVE_OR_NONE,
    "train_batch_size": POSITIVE_INT,
    "gradient_accumulation_steps": POSITIVE_INT,
    "num_inner_epochs": POSITIVE_INT,
    "timestep_fraction": (lambda v: _real(v) and 0 < v <= 1, "a number in (0, 1]"),
    "lora_rank": POSITIVE_INT,
    "lora_alpha": POSITIVE_OR_NONE,
    "adv_clip": POSITIVE_OR_NONE,
    "tracker_buffer": POSITIVE_INT,
    "tracker_min_count": (_int_at_least(0), "an integer >= 0"),
}

# TrainConfig field -> (test, what it must be, how to set it)
TRAIN_RULES: dict[str, tuple[Callable[[Any], bool], str, str]] = {
    "samples": (_int_at_least(1), "an integer >= 1 (the total number of images to generate)", "--samples N (a suite: samples = N)"),
    "seed": (_int_at_least(0), "an integer >= 0", "--seed N"),
    "mixed_precision": (lambda v: v in ("no", "fp16", "bf16"), "one of no, fp16, bf16", "--mixed-precision"),
    "checkpoint_every": (_int_at_least(1), "an integer >= 1 (epochs)", "TrainConfig(checkpoint_every=N)"),
    "keep_checkpoints": (_int_at_least(1), "an integer >= 1", "TrainConfig(keep_checkpoints=N)"),
    "max_transitions_per_forward": (_int_at_least(1), "an integer >= 1", "TrainConfig(max_transitions_per_forward=N)"),
}


def validate_algo_config(cfg):
    """Raises ``ValueError`` naming the first out-of-range shared setting; returns ``cfg``."""
    for name, (ok, must) in ALGO_RULES.items():
        if hasattr(cfg, name) and not ok(getattr(cfg, name)):
            raise ValueError(
                f"{name} must be {must}, got {getattr(cfg, name)!r}; set it with --set {name}=VALUE (in a suite: its [train] or [algo.NAME] section)"
            )
    own = getattr(cfg, "validate", None)
    if callable(own):
        own()
    return cfg


def validate_train_config(cfg, builds_reward: bool = True) -> None:
    """Checks a :class:`~alignzoo.algos.trainer.TrainConfig`, and its reward's keyword arguments
    when the trainer will build the reward from them (a caller may pass a built reward)."""
    for name, (ok, must, how) in TRAIN_RULES.items():
        if not ok(getattr(cfg, name)):
            raise ValueError(f"{name} must be {must}, got {getattr(cfg, name)!r}; set it with {how}")
    if builds_reward:
        from alignzoo.rewards import check_reward_kwargs

        check_reward_kwargs(cfg.reward, cfg.reward_kwargs)


def validate_configs(train_config, algo_config, builds_reward: bool = True):
    """Both checks, before the trainer loads a model; returns ``algo_config``."""
    validate_train_config(train_config, builds_reward)
    return validate_algo_config(algo_config)


def check_reward_gradients(algo_cls, reward_name: str, reward=None) -> None:
    """An algorithm that back-propagates the reward (``needs_reward_grad``) needs one that gives
    gradients w.r.t. the images: a one-line error naming the problem and the fix otherwise, before
    any model loads. ``reward``: a reward object the caller built (it must be differentiable)."""
    if not algo_cls.needs_reward_grad:
        return
    from alignzoo.rewards import REWARDS

    fix = "use a differentiable reward such as tiny_preference, tiny_geneval or aesthetic (`alignzoo list rewards`), or a log-prob algorithm (ddpo, sdpo, ...)"
    name = getattr(reward, "name", reward_name)
    if not (REWARDS.get(reward_name) if reward is None else reward).supports_grad:
        raise ValueError(
            f"{algo_cls.name} back-propagates the reward into the model, but reward {name!r} is not differentiable (computed outside torch); {fix}"
        )
    if reward is not None and not getattr(reward, "differentiable", False):
        raise ValueError(
            f"{algo_cls.name} back-propagates the reward into the model, but the reward {name!r} it was given was built without gradients; build it with get_reward({name!r}, differentiable=True)"
        )
