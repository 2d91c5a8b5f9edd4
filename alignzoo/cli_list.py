"""``alignzoo list {models,rewards,algos,suites,prompts}``."""
from __future__ import annotations

import importlib

KINDS = {
    "models": ("alignzoo.models.base", "list_models", "MODELS"),
    "rewards": ("alignzoo.rewards.base", "list_rewards", "REWARDS"),
    "algos": ("alignzoo.algos.base", "list_algorithms", "ALGORITHMS"),
    "suites": ("alignzoo.benchmarks.suites", "list_suites", "SUITES"),
    "prompts": ("alignzoo.prompts", "list_prompt_sets", "PROMPT_SETS"),
}


def add_arguments(p) -> None:
    p.add_argument("what", choices=sorted(KINDS), help="which registry to list")


def run(args) -> int:
    module, lister, registry = KINDS[args.what]
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError:
        print(f"(no {args.what} in this version)")
        return 0
    names = getattr(mod, lister)()
    reg = getattr(mod, registry)
    width = max((len(n) for n in names), default=0)
    for n in names:
        print(f"{n:<{width}}  {reg.summary(n)}")
    return 0
