"""``--set key=value`` strings → config fields: the one parser the CLI, the suites and perf share."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any


def parse_assignments(items: list[str] | None, flag: str = "--set") -> dict[str, str]:
    """``["key=value", ...]`` (the ``--set`` / ``--reward-arg`` flags) → ``{key: value}`` strings."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"{flag} expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def config_from_strings(config_cls, base, assignments: dict[str, str]):
    """Applies ``--set key=value`` strings to a config, converting to each field's type."""
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    kw = {}
    for key, text in assignments.items():
        if key not in fields:
            raise ValueError(f"unknown config key {key!r} for {config_cls.__name__}; known keys: {', '.join(sorted(fields))}")
        current = getattr(base, key)
        if current is None:  # an optional field left unset: convert to the type it declares
            current = _declared_example(config_cls, key)
        kw[key] = _convert(text, current, key)
    return dataclasses.replace(base, **kw)


def _declared_example(config_cls, key: str):
    """A value of the type an ``X | None`` field declares (``False`` for ``bool | None``, …), so
    ``--set checkpointing=false`` reads a bool rather than the truthy string "false"; None where
    the declared type is not one of bool, int, float, str."""
    try:
        hint = typing.get_type_hints(config_cls).get(key)
    except (NameError, TypeError):  # an annotation this module cannot resolve: keep the old guess
        return None
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    for kind in (bool, int, float, str):
        if kind in args:
            return kind()
    return None


def _convert(text: Any, current: Any, key: str):
    if not isinstance(text, str):
        return text
    low = text.strip().lower()
    if low in ("none", "null"):
        return None
    try:
        if isinstance(current, bool):
            if low not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return low in ("true", "1", "yes")
        if isinstance(current, int) and not isinstance(current, bool):
            return int(text)
        if isinstance(current, float):
            return float(text)
        if isinstance(current, (tuple, list)):
            return tuple(s.strip() for s in text.split(",") if s.strip())
        if current is None:
            for conv in (int, float):
                try:
                    return conv(text)
                except ValueError:
                    pass
            return text
    except ValueError:
        raise ValueError(f"config key {key!r}: cannot read {text!r} as {type(current).__name__}") from None
    return text
