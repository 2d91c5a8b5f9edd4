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
    p.add_argument("--table", action="store_true", help="algos: the Markdown table of objectives, rollouts, needs, sources and defaults (the README's)")
    p.add_argument("--plugin", action="append", default=[], help="Python file that registers extra algorithms (repeatable), listed with the built-ins")


def run(args) -> int:
    if args.plugin:
        from alignzoo.algos.base import load_plugin

        for path in args.plugin:
            load_plugin(path)
    if args.table:
        if args.what != "algos":
            raise ValueError("--table lists algorithms only: alignzoo list algos --table")
        from alignzoo.algos.cards import card_table

        print(card_table())
        return 0
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
