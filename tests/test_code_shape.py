"""Modules a newcomer can read: none over 400 lines, no function over 60 (issue 14)."""

from __future__ import annotations

import ast
from pathlib import Path

import alignzoo

PACKAGE = Path(alignzoo.__file__).parent
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def long_functions(source: str, limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, int, int]]:
    """(name, first line, lines) of every function or method longer than ``limit`` lines,
    decorators excluded, nested functions counted inside their parent and on their own."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = node.end_lineno - node.lineno + 1
            if lines > limit:
                found.append((node.name, node.lineno, lines))
    return found


def test_no_module_over_400_lines():
    big = [f"{p.relative_to(PACKAGE.parent)}: {n} lines" for p in sorted(PACKAGE.rglob("*.py")) if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES]
    assert not big, "split these along their seams:\n" + "\n".join(big)


def test_no_function_over_60_lines():
    long = [
        f"{p.relative_to(PACKAGE.parent)}:{line} {name} ({n} lines)" for p in sorted(PACKAGE.rglob("*.py")) for name, line, n in long_functions(p.read_text())
    ]
    assert not long, "split these into named steps:\n" + "\n".join(long)


def test_the_function_measure_counts_body_lines():
    body = "\n".join(f"    x{i} = {i}" for i in range(61))
    source = f"@decorator\ndef big():\n{body}\n\n\ndef small():\n    return 1\n"
    assert long_functions(source) == [("big", 2, 62)]
    assert long_functions(source, limit=62) == []
