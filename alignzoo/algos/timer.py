"""The trainer's timer: the calls the trainer makes around the work it owns (every backward pass,
through :meth:`~alignzoo.algos.trainer.Trainer.backward`, and the rollout phase), so that
``alignzoo perf`` can time an epoch without patching anything. A run trains with
:class:`NullTimer`; ``alignzoo perf`` sets ``trainer.timer`` to its probe
(``alignzoo.benchmarks.perf.probe.Probe``), which implements the same three methods and times the
model calls with module hooks.
"""

from __future__ import annotations

import contextlib
from typing import ContextManager


class NullTimer:
    """Times nothing: each method returns at once (the trainer's default)."""

    def component(self, name: str, rows: int = 0, count_as: str | None = None) -> ContextManager[None]:
        """A network's work (``"backward"``...); ``rows`` are added to the counter ``count_as``."""
        return contextlib.nullcontext()

    def phase(self, name: str) -> ContextManager[None]:
        """A phase of the epoch (``"sampling"``), timed whole, components included."""
        return contextlib.nullcontext()

    def count(self, counter: str, n: int) -> None:
        """Adds ``n`` to ``counter`` (``"trajectories"``: the rollout's)."""
