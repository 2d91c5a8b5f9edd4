"""The algorithm table (``alignzoo list algos --table``): every built-in has a card, the README
shows the generated table, and the rollout/default columns follow the configs."""

from pathlib import Path

import pytest

import alignzoo.algos  # noqa: F401  (registers the built-ins)
from alignzoo.algos import cards
from alignzoo.algos.base import ALGORITHMS, AlgoConfig, Algorithm

README = Path(__file__).resolve().parents[1] / "README.md"


def builtin_names() -> list[str]:
    """The built-in algorithms (a plugin another test loaded into the registry is not one)."""
    return [n for n in ALGORITHMS.names() if ALGORITHMS.get(n).__module__.startswith("alignzoo.algos.")]


def test_readme_shows_the_generated_table():
    table = cards.card_table(builtin_names())
    assert len(table.splitlines()) == 2 + len(builtin_names())
    assert table in README.read_text(), "README's algorithm table is stale: paste `alignzoo list algos --table` into README.md"


def test_rows_follow_each_config():
    for name in builtin_names():
        cls = ALGORITHMS.get(name)
        row = dict(zip(cards.COLUMNS, cards.card_row(name)))
        c = cls.Config()
        assert row["rollouts"].startswith("1 per prompt" if c.group_size == 1 else f"G = {c.group_size} per prompt"), name
        assert cards._value(c.learning_rate) in row["defaults"], name
    assert cards.rollout_shape(AlgoConfig(group_size=8, shared_noise=False, num_steps=4)) == "G = 8 per prompt, independent x_T; T = 4"
    assert cards.rollout_shape(AlgoConfig()) == "1 per prompt; T = the model’s"
    assert [cards._value(v) for v in (3e-4, 1e-4, 0.1, 1.0, 2.5e-5, ("a", "b"))] == ["3e-4", "1e-4", "0.1", "1", "2.5e-5", "a/b"]


def test_every_builtin_has_a_card_and_a_plugin_without_one_still_lists(monkeypatch):
    missing = [n for n in builtin_names() if not isinstance(getattr(ALGORITHMS.get(n), "card", None), cards.AlgoCard)]
    assert not missing, f"built-ins without a card: {missing}"

    class NoCard(Algorithm):
        pass

    class BadField(Algorithm):
        card = cards.AlgoCard("o", "scalar", "log-probs", "p", "c", defaults=("no_such_field",))

    monkeypatch.setattr(cards, "get_algorithm", {"ddpo": NoCard, "y": BadField}.__getitem__)
    row = cards.card_row("ddpo")  # NoCard under a registered name: the registry's summary
    assert row[1] == ALGORITHMS.summary("ddpo") and row[3:6] == ["—", "—", "—"] and row[2] == "1 per prompt; T = the model’s"
    with pytest.raises(ValueError, match=r"unknown config fields \['no_such_field'\]"):
        cards.card_row("y")
