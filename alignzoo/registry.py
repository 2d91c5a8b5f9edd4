"""A small named registry shared by models, rewards, algorithms and suites.

Every registry lists its entries (``alignzoo list ...``) and an unknown name fails with the
list of known ones, so a typo never becomes a raw ``KeyError``.
"""

from __future__ import annotations

import difflib
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError, ValueError):
    """Raised for a name that is not registered; the message lists the known names."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0])


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._summaries: dict[str, str] = {}

    def register(self, name: str, summary: str | None = None) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._entries and self._entries[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = obj
            doc = summary or (getattr(obj, "__doc__", None) or "").strip().split("\n")[0]
            self._summaries[name] = doc
            return obj

        return deco

    def get(self, name: str) -> T:
        if name not in self._entries:
            known = ", ".join(sorted(self._entries)) or "(none)"
            close = difflib.get_close_matches(name, self._entries, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise UnknownNameError(f"unknown {self.kind} {name!r}.{hint} Known {self.kind}s: {known}")
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def summary(self, name: str) -> str:
        self.get(name)
        return self._summaries.get(name, "")

    def __contains__(self, name: str) -> bool:
        return name in self._entries
