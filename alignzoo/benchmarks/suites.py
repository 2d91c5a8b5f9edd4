"""Benchmark suites: TOML files naming a model, algorithms, rewards, seeds, budget and evaluation.

Shipped suites live in ``alignzoo/benchmarks/suites/*.toml`` (``alignzoo list suites``); a
user's own file works too. Schema (every key optional except model, algorithms, rewards)::

    name = "quick"                    description = "..."
    model = "tiny-sd"                 model_path = "/local/folder"      # optional
    lcm_schedule = "rlcm"             # LCM timesteps, "diffusers" (default) or "rlcm": becomes model = "NAME@rlcm"
    algorithms = ["ddpo", "sdpo"]     rewards = ["tiny_alignment"]     # or a weighted sum: "a+b@0.5"
    seeds = [0]                       samples = 512                     # budget per cell (images)
    eval_interval = 256               train_prompts = "seen"
    gpus_per_cell = 0                 # GPUs a cell asks for under --executor ray (may be fractional)
    [train]        shared algorithm-config overrides (num_steps, samples_per_epoch, ...)
    [algo.<name>]  per-algorithm overrides, e.g. [algo.sdpo] learning_rate = 1e-3
    [eval]         steps = [1, 2, 4, 8, 16, 50], prompt_sets = ["seen", "unseen"],
                   images_per_prompt = 2, prompts_per_set = 16, eta = 0.0 (or "train"),
                   seed = 1234, grid_images = 4, batch_size = 64
    [reward_args.<reward>]  keyword arguments of a reward

The reward ``random`` in ``rewards`` adds the random-reward control: every algorithm also trains
on a reward with nothing to learn (reward-backprop algorithms on ``random_direction``,
:meth:`Suite.trained_reward`), and the report puts each gain beside its control's.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import tomllib

from alignzoo.benchmarks.suite_checks import base_model, check_keys, validate
from alignzoo.registry import Registry

SUITE_DIR = Path(__file__).resolve().parent / "suites"
SUITES: Registry = Registry("suite")


@dataclass
class EvalSpec:
    steps: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 50])
    prompt_sets: list[str] = field(default_factory=lambda: ["seen", "unseen"])
    images_per_prompt: int = 2
    prompts_per_set: int | None = None
    eta: float | str = 0.0  # "train": the training eta
    seed: int = 1234
    grid_images: int = 4
    batch_size: int = 64
    # evaluation-only rewards: every cell is also scored by these (no cells train on them), e.g.
    # a strict 0/1 judge beside the soft training reward, or a second, held-out judge
    rewards: list[str] = field(default_factory=list)


@dataclass
class Suite:
    name: str
    model: str
    algorithms: list[str]
    rewards: list[str]
    description: str = ""
    model_path: str | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    samples: int = 512
    eval_interval: int = 0  # 0: evaluate only at the end
    train_prompts: str = "seen"
    train: dict = field(default_factory=dict)
    algo: dict = field(default_factory=dict)
    algo_reward: dict = field(default_factory=dict)  # {algo: {reward: overrides}} (e.g. SDPO's Table 2)
    eval: EvalSpec = field(default_factory=EvalSpec)
    reward_args: dict = field(default_factory=dict)
    source: str | None = None
    gpus_per_cell: float = 0  # a Ray task's num_gpus (0: CPU cells); the local executor ignores it

    def cells(self) -> list[tuple[str, str, int]]:
        return [(a, r, s) for a in self.algorithms for r in self.rewards for s in self.seeds]

    @staticmethod
    def trained_reward(algo: str, reward: str) -> str:
        """The reward a cell trains on: ``reward``, except the control ``random``, which becomes the
        algorithm's own control (``random_direction`` where it back-propagates the reward)."""
        from alignzoo.algos import get_algorithm
        from alignzoo.rewards.control import CONTROL, control_reward

        return control_reward(get_algorithm(algo).needs_reward_grad) if reward == CONTROL else reward

    def algo_config(self, algo: str, reward: str | None = None):
        """The algorithm's Config with the suite's [train], [algo.<name>] and
        [algo_reward.<name>.<reward>] overrides applied, in that order."""
        from alignzoo.algos import get_algorithm
        from alignzoo.algos.config_strings import config_from_strings
        from alignzoo.algos.validation import validate_algo_config

        cls = get_algorithm(algo)
        cfg = cls.Config()
        sections = [("[train]", self.train), (f"[algo.{algo}]", self.algo.get(algo, {}))]
        if reward is not None:
            sections.append((f"[algo_reward.{algo}.{reward}]", self.algo_reward.get(algo, {}).get(reward, {})))
        for section, values in sections:
            try:
                cfg = config_from_strings(cls.Config, cfg, values)
            except ValueError as err:
                raise ValueError(f"suite {self.name!r} {section}: {err}") from None
        try:
            return validate_algo_config(cfg)
        except ValueError as err:
            raise ValueError(f"suite {self.name!r}, {algo}{'/' + reward if reward else ''}: {err}") from None

    def eval_interval_points(self, samples_per_epoch: int) -> list[int]:
        """Cumulative sample counts at which a cell is evaluated (always including the end)."""
        epochs = math.ceil(self.samples / samples_per_epoch)
        ends = [samples_per_epoch * (e + 1) for e in range(epochs)]
        if not self.eval_interval:
            return [ends[-1]]
        points = [s for s in ends if (s - samples_per_epoch) // self.eval_interval < s // self.eval_interval]
        return sorted(set(points + [ends[-1]]))

    def evaluation_due(self, previous: int, samples: int) -> tuple[bool, bool]:
        """(final, due) for an epoch that took a cell's image count from ``previous`` to ``samples``:
        due when it crossed a multiple of eval_interval or spent the budget (final). Counting
        crossings, not exact multiples, also serves algorithms whose epochs generate images beyond
        samples_per_epoch (LaSRO's stage 1 and generator rollouts count towards the budget)."""
        final = samples >= self.samples
        crossed = bool(self.eval_interval) and previous // self.eval_interval < samples // self.eval_interval
        return final, final or crossed

    def num_steps(self, cfg) -> int:
        """The trajectory length T a cell trains on: the config's, else the model's default."""
        from alignzoo.models import model_spec

        return int(cfg.num_steps or model_spec(self.model).train_steps)

    def uses_cfg(self) -> bool:
        """Whether the model samples with classifier-free guidance, which doubles the UNet
        evaluations the log counts (the model's own rule, DiffusionModel.uses_cfg)."""
        from alignzoo.models import model_spec
        from alignzoo.models.base import doubles_batch_for_guidance

        spec = model_spec(self.model)
        return doubles_batch_for_guidance(spec.kind, spec.guidance_scale)

    def compute_table(self, world_size: int = 1, algorithms=None) -> list[dict]:
        """Per (algorithm, reward): epochs, images, optimiser updates and images per update under
        the suite's budget, from the plans alone (alignzoo.algos.fairness), with any declared
        compute exception. ``algorithms`` defaults to the suite's."""
        from alignzoo.algos import get_algorithm
        from alignzoo.algos.fairness import run_compute

        rows = []
        for algo in algorithms or self.algorithms:
            for reward in self.rewards:
                cfg = self.algo_config(algo, reward)
                rows.append({"algo": algo, "reward": reward, **run_compute(get_algorithm(algo)(cfg), self.num_steps(cfg), self.samples, world_size)})
        return rows

    def cell_cost(self, algo: str, reward: str) -> dict:
        """One cell's training, before running it, under the names of its log's counters (the
        last line's): images (``samples``), optimiser ``updates``, UNet evaluations of sampling
        (rollouts and LaSRO's stage 1) and of the updates (``unet_evals_training``), and reward
        queries (the logged 1-step reward's too), from the plan and the algorithm's declared
        costs (alignzoo.algos.costs). ReFL's and AlignProp's random steps count at their mean."""
        from alignzoo.algos import get_algorithm
        from alignzoo.algos.fairness import run_compute

        cfg = self.algo_config(algo, reward)
        t, method, cfg_doubles = self.num_steps(cfg), get_algorithm(algo)(cfg), self.uses_cfg()
        run = run_compute(method, t, self.samples)
        rollouts, first = run["epochs"] * cfg.samples_per_epoch, run["images_before_training"]  # first: LaSRO's stage 1
        per_rollout = method.rollout_reward_queries(t) + method.training_reward_queries(t)
        queries = rollouts * per_rollout + first * method.rollout_reward_queries(t, log_first_step=False)  # stage 1 logs no 1-step reward
        return {
            "samples": run["images"],
            "updates": run["updates"],
            "unet_evals_sampling": (rollouts + first) * t * (2 if cfg_doubles else 1),
            "unet_evals_training": round(rollouts * method.training_unet_evals(t, cfg_doubles)),
            "reward_queries": round(queries),
        }

    def estimated_cost(self) -> dict:
        """Images, optimiser updates, UNet evaluations and reward queries of the whole suite, before
        running (printed by the runner): every cell's :meth:`cell_cost` times the seeds, and the
        evaluations'. ``unet_evals_training`` is all of training, its sampling and its updates
        (``unet_evals_training_sampling``, ``_updates``: the logs' unet_evals_sampling and
        unet_evals_training)."""
        from alignzoo.prompts import get_prompts

        cells = [self.cell_cost(a, r) for a in self.algorithms for r in self.rewards]
        total = lambda key: len(self.seeds) * sum(c[key] for c in cells)  # noqa: E731
        n_images = sum(min(len(get_prompts(p)), self.eval.prompts_per_set or 10**9) for p in self.eval.prompt_sets) * self.eval.images_per_prompt
        evals_per_cell = len(self.eval_interval_points(self.algo_config(self.algorithms[0]).samples_per_epoch))
        n_eval_models = 1 + len(self.cells()) * evals_per_cell
        unet_eval = n_eval_models * n_images * sum(self.eval.steps) * (2 if self.uses_cfg() else 1)
        reward_eval = n_eval_models * n_images * len(self.eval.steps) * len(dict.fromkeys(self.rewards + self.eval.rewards))  # every cell on every reward
        return {
            "cells": len(self.cells()),
            "images_training": total("samples"),
            "updates_training": total("updates"),
            "unet_evals_training": total("unet_evals_sampling") + total("unet_evals_training"),
            "unet_evals_training_sampling": total("unet_evals_sampling"),
            "unet_evals_training_updates": total("unet_evals_training"),
            "unet_evals_evaluation": unet_eval,
            "reward_queries_training": total("reward_queries"),
            "reward_queries_evaluation": reward_eval,
        }


def parse_suite(data: dict, source: str | None = None) -> Suite:
    """A suite from its TOML data, every name, key and number checked now (not hours into a run)."""
    name = data.get("name") or (Path(source).stem if source else "suite")
    check_keys(data, name)
    ev = dict(data.get("eval", {}))
    model = data["model"]
    if data.get("lcm_schedule") is not None:  # it rides on the model name, so training and evaluation share it
        model = f"{base_model(model)}@{data['lcm_schedule']}"
    suite = Suite(
        name=name,
        model=model,
        algorithms=list(data["algorithms"]),
        rewards=list(data["rewards"]),
        description=data.get("description", ""),
        model_path=data.get("model_path"),
        seeds=[int(s) for s in data.get("seeds", [0])],
        samples=int(data.get("samples", 512)),
        eval_interval=int(data.get("eval_interval", 0)),
        train_prompts=data.get("train_prompts", "seen"),
        train=dict(data.get("train", {})),
        algo={k: dict(v) for k, v in data.get("algo", {}).items()},
        algo_reward={a: {r: dict(v) for r, v in rs.items()} for a, rs in data.get("algo_reward", {}).items()},
        eval=EvalSpec(**ev),
        reward_args={k: dict(v) for k, v in data.get("reward_args", {}).items()},
        source=source,
        gpus_per_cell=data.get("gpus_per_cell", 0),
    )
    validate(suite)
    return suite


def load_suite(name_or_path: str) -> Suite:
    path = Path(name_or_path)
    if not path.is_file():
        path = SUITE_DIR / f"{name_or_path}.toml"
        if not path.is_file():
            raise ValueError(f"unknown suite {name_or_path!r}; known suites: {', '.join(list_suites())} (or a path to a .toml file)")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"suite file {path} is not valid TOML: {err}") from None
    return parse_suite(data, str(path))


def list_suites() -> list[str]:
    for p in sorted(SUITE_DIR.glob("*.toml")):
        if p.stem not in SUITES:
            desc = ""
            for line in p.read_text().splitlines():
                if line.startswith("description"):
                    desc = line.split("=", 1)[1].strip().strip('"')
            SUITES.register(p.stem, desc)(str(p))
    return SUITES.names()


def suite_to_toml(suite: Suite) -> str:
    """A TOML rendering of a parsed suite (written beside its results)."""

    def val(v):
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(val(x) for x in v) + "]"
        return repr(v)

    d = dataclasses.asdict(suite)
    lines = [f"{k} = {val(v)}" for k, v in d.items() if k not in ("train", "algo", "algo_reward", "eval", "reward_args", "source") and v is not None]
    lines += ["", "[train]"] + [f"{k} = {val(v)}" for k, v in suite.train.items()]
    lines += ["", "[eval]"] + [f"{k} = {val(v)}" for k, v in d["eval"].items() if v is not None]
    for a, over in suite.algo.items():
        lines += ["", f"[algo.{a}]"] + [f"{k} = {val(v)}" for k, v in over.items()]
    for a, per_reward in suite.algo_reward.items():
        for r, over in per_reward.items():
            lines += ["", f"[algo_reward.{a}.{r}]"] + [f"{k} = {val(v)}" for k, v in over.items()]
    for r, over in suite.reward_args.items():
        lines += ["", f"[reward_args.{r}]"] + [f"{k} = {val(v)}" for k, v in over.items()]
    return "\n".join(lines) + "\n"
