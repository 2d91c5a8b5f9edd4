"""Checks of a parsed suite (``alignzoo.benchmarks.suites.parse_suite``): every name, key, number
and algorithm/reward pairing, at load time rather than hours into a run."""

from __future__ import annotations

import warnings
from pathlib import Path

MIN_EVAL_IMAGES = 256  # per (cell, step count, prompt set) for seed-level intervals (issue 12)
TOP_KEYS = {
    "name",
    "description",
    "model",
    "model_path",
    "lcm_schedule",
    "algorithms",
    "rewards",
    "seeds",
    "samples",
    "eval_interval",
    "train_prompts",
    "gpus_per_cell",
    "train",
    "algo",
    "algo_reward",
    "eval",
    "reward_args",
}
EVAL_KEYS = {"rewards", "steps", "prompt_sets", "images_per_prompt", "prompts_per_set", "eta", "seed", "grid_images", "batch_size"}


def _model_names():
    from alignzoo.models import list_models

    return list_models()


def base_model(model: str) -> str:
    """The model name or folder without its ``@schedule`` suffix (alignzoo/models/lcm.py)."""
    from alignzoo.models.lcm import split_schedule

    return split_schedule(model)[0]


def registered(model: str) -> bool:
    return base_model(model) in _model_names()


def _check_model(model: str) -> None:
    from alignzoo.models import get_model_spec

    if registered(model):
        get_model_spec(model)  # checks its LCM schedule
    elif not Path(base_model(model)).is_dir():
        raise ValueError(f"unknown model {model!r}; known models: {', '.join(_model_names())} (or a diffusers folder)")


def _check_names(kind: str, names, known, suite: str):
    for n in names:
        if n not in known:
            raise ValueError(f"suite {suite!r}: unknown {kind} {n!r}; known {kind}s: {', '.join(sorted(known))}")


def _check_rewards(specs, known, suite: str) -> list[str]:
    """Checks reward names and weighted combinations (``a+b@0.5``); returns every reward they name."""
    from alignzoo.rewards.combined import is_combination, parse_combination

    names = []
    for spec in specs:
        if not is_combination(spec):
            _check_names("reward", [spec], known, suite)
            names.append(spec)
            continue
        try:
            names += [n for n, _ in parse_combination(spec)]
        except ValueError as err:
            raise ValueError(f"suite {suite!r}: {err}") from None
    return names


def check_keys(data: dict, name: str) -> None:
    unknown = set(data) - TOP_KEYS
    if unknown:
        raise ValueError(f"suite {name!r}: unknown key(s) {', '.join(sorted(unknown))}; known keys: {', '.join(sorted(TOP_KEYS))}")
    for key in ("model", "algorithms", "rewards"):
        if key not in data:
            raise ValueError(f"suite {name!r} lacks the required key {key!r}")
    bad = set(data.get("eval", {})) - EVAL_KEYS
    if bad:
        raise ValueError(f"suite {name!r} [eval]: unknown key(s) {', '.join(sorted(bad))}; known keys: {', '.join(sorted(EVAL_KEYS))}")


def validate(suite) -> None:
    """Checks a parsed :class:`~alignzoo.benchmarks.suites.Suite`; a one-line ValueError names the problem."""
    from alignzoo.algos import get_algorithm, list_algorithms
    from alignzoo.algos.validation import check_reward_gradients
    from alignzoo.prompts import PROMPT_SETS
    from alignzoo.rewards import check_reward_kwargs, list_rewards

    name = suite.name
    if isinstance(suite.gpus_per_cell, bool) or not isinstance(suite.gpus_per_cell, (int, float)) or suite.gpus_per_cell < 0:
        raise ValueError(f"suite {name!r}: gpus_per_cell must be a number >= 0 (GPUs per Ray task), got {suite.gpus_per_cell!r}")
    try:
        _check_model(suite.model)
    except ValueError as err:
        raise ValueError(f"suite {name!r}: {err}") from None
    _check_names("algorithm", suite.algorithms, list_algorithms(), name)
    components = _check_rewards(suite.rewards + suite.eval.rewards, list_rewards(), name)
    _check_names("algorithm", suite.algo, suite.algorithms, name)
    _check_names("reward", suite.reward_args, components, name)
    for r, kwargs in suite.reward_args.items():  # a typo fails now, not as a TypeError when the reward is built
        try:
            check_reward_kwargs(r, kwargs)
        except ValueError as err:
            raise ValueError(f"suite {name!r} [reward_args.{r}]: {err}") from None
    if not suite.seeds or min(suite.seeds) < 0:
        raise ValueError(f"suite {name!r}: seeds must be a non-empty list of integers >= 0, got {suite.seeds}")
    for key, value in (("samples", suite.samples), ("eval.images_per_prompt", suite.eval.images_per_prompt), ("eval.batch_size", suite.eval.batch_size)):
        if value < 1:
            raise ValueError(f"suite {name!r}: {key} must be >= 1, got {value}")
    sets = PROMPT_SETS.names()
    for p in suite.eval.prompt_sets + [suite.train_prompts]:
        if p not in sets and not Path(p).is_file():
            raise ValueError(f"suite {name!r}: unknown prompt set {p!r}; known prompt sets: {', '.join(sets)} (or a file)")
    if not suite.eval.steps or min(suite.eval.steps) < 1:
        raise ValueError(f"suite {name!r}: eval.steps must be positive step counts")
    _check_names("algorithm", suite.algo_reward, suite.algorithms, name)
    for per_reward in suite.algo_reward.values():
        _check_names("reward", per_reward, suite.rewards, name)
    for a, r, _seed in suite.cells():  # validates every override and pairing now, not hours into the run
        suite.algo_config(a, r)
        try:
            check_reward_gradients(get_algorithm(a), suite.trained_reward(a, r))  # reward backprop needs a differentiable reward
        except ValueError as err:
            raise ValueError(f"suite {name!r}: {err}") from None
    _warn_small_eval(suite)


def _warn_small_eval(suite) -> None:
    """A suite with several seeds exists to give intervals over seeds and prompts × noises; a
    prompt set with fewer than MIN_EVAL_IMAGES evaluation images makes them wide: warn."""
    from alignzoo.prompts import get_prompts

    if len(suite.seeds) < 2:
        return
    ev = suite.eval
    small = []
    for p in ev.prompt_sets:
        n = min(len(get_prompts(p)), ev.prompts_per_set or 10**9) * ev.images_per_prompt
        if n < MIN_EVAL_IMAGES:
            small.append(f"{p} ({n})")
    if small:
        warnings.warn(
            f"suite {suite.name!r} runs {len(suite.seeds)} seeds but evaluates fewer than {MIN_EVAL_IMAGES} images per "
            f"prompt set: {', '.join(small)}; raise [eval] images_per_prompt or prompts_per_set",
            UserWarning,
            stacklevel=3,
        )
