"""What each algorithm is, in one table row: ``alignzoo list algos --table`` and the README's table.

An algorithm module sets ``card = AlgoCard(...)`` on its class; the rollout shape (G per prompt,
shared or independent x_T, trajectory length) and the default values come from its ``Config``, so
the table cannot drift from the code. A plugin without a card gets its registered summary and its
config's columns; every built-in has one (tests/test_algo_cards.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from alignzoo.algos.base import ALGORITHMS, get_algorithm

COLUMNS = ["algorithm", "objective", "rollouts", "reward", "needs", "source (paper; code)", "defaults"]


@dataclass(frozen=True)
class AlgoCard:
    objective: str  # the update rule, in a few words
    reward: str  # what the reward must give: "scalar", "scalar, differentiable", ...
    needs: str  # "log-probs", "log-probs + reference", "reward gradient", ...
    paper: str  # authors, year, arXiv id
    code: str  # the public code the defaults follow ("—" when none)
    defaults: tuple[str, ...] = ()  # Config fields shown (learning_rate, num_steps and eta always are)


def rollout_shape(config) -> str:
    g, steps = config.group_size, config.num_steps
    shape = "1 per prompt" if g == 1 else f"G = {g} per prompt, {'shared' if config.shared_noise else 'independent'} x_T"
    return f"{shape}; T = {steps if steps else 'the model’s'}"


def _value(v) -> str:
    if isinstance(v, float) and v and abs(v) < 1e-2:  # 0.0003 -> 3e-4, as configs and papers write it
        mantissa, exponent = f"{v:.2e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (tuple, list)):
        return "/".join(map(str, v))
    return str(v)


def default_values(config, fields: tuple[str, ...]) -> str:
    names = ("learning_rate", "eta") + tuple(f for f in fields if f not in ("learning_rate", "eta"))
    short = {"learning_rate": "lr", "eta": "η"}
    return ", ".join(f"{short.get(n, n)} {_value(getattr(config, n))}" for n in names)


def card_row(name: str) -> list[str]:
    cls = get_algorithm(name)
    card: AlgoCard | None = getattr(cls, "card", None)
    if card is None:  # a plugin without a card: its registered summary, the rest from its config
        card = AlgoCard(ALGORITHMS.summary(name), "—", "—", "—", "—")
    config = cls.Config()
    unknown = [f for f in card.defaults if f not in {x.name for x in dataclasses.fields(config)}]
    if unknown:
        raise ValueError(f"algorithm {name!r}: its card names unknown config fields {unknown}")
    source = card.paper + ("" if card.code in ("", "—") else f"; {card.code}")
    return [name, card.objective, rollout_shape(config), card.reward, card.needs, source, default_values(config, card.defaults)]


def card_table(names: list[str] | None = None) -> str:
    """The Markdown table of the given (default: every registered) algorithms."""
    from tabulate import tabulate

    rows = [card_row(n) for n in (names if names is not None else ALGORITHMS.names())]
    return tabulate(rows, headers=COLUMNS, tablefmt="pipe", disable_numparse=True)
