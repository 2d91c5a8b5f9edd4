"""``--set key=value`` strings → config fields: the one parser the CLI, the suites and perf share."""

from __future__ import annotations

import dataclasses
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
        kw[key] = _convert(text, current, key)
    return dataclasses.replace(base, **kw)


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
