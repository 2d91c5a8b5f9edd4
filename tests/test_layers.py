"""The package graph is one-way (docs/architecture.md): every ``alignzoo`` import, function-local
ones included, goes from a layer to one it may use, and the layers form no cycle.

The layers, bottom up::

    foundation   registry, hub, prompts, images, runlog, health, the tiny world's definitions
    models, rewards                          (neither imports the other)
    algos
    benchmarks, tinyworld-training, reports  (reports read results: foundation only)
    cli          alignzoo.cli, alignzoo.cli_list, every */cli.py (may use anything; nothing uses it)
"""

from __future__ import annotations

import ast
from pathlib import Path

import alignzoo

PACKAGE = Path(alignzoo.__file__).parent

# The tiny world's training stages (alignzoo.tinyworld.training, the compositional world's in its
# compose/ subpackage) use models and rewards; its definitions (grammar, renderer, tokenizer, small
# nets) are data the rewards and prompt sets need, so they sit at the bottom.
TINYWORLD_TRAINING = "alignzoo.tinyworld.training"

MAY_USE = {
    "foundation": set(),
    "models": {"foundation"},
    "rewards": {"foundation"},
    "algos": {"foundation", "models", "rewards"},
    "benchmarks": {"foundation", "models", "rewards", "algos"},
    "tinyworld-training": {"foundation", "models", "rewards"},
    "reports": {"foundation"},
    "cli": {"foundation", "models", "rewards", "algos", "benchmarks", "tinyworld-training", "reports"},
}


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def layer_of(module: str) -> str:
    parts = module.split(".")
    if parts[-1] in ("cli", "cli_list", "__main__"):
        return "cli"
    if _within(module, TINYWORLD_TRAINING):
        return "tinyworld-training"
    if len(parts) > 1 and parts[1] in ("models", "rewards", "algos", "benchmarks", "reports"):
        return parts[1]
    return "foundation"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, module: str) -> list[tuple[str, int]]:
    """Every alignzoo module that ``path`` (the source of ``module``) imports, at any depth of the
    file (function-local imports too), with its line."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # ``from alignzoo.algos import ddpo`` imports a submodule; ``import name`` of a function
            # resolves to its package, which is the same layer.
            found += [
                (
                    f"{base}.{a.name}"
                    if (PACKAGE.parent / f"{base}.{a.name}".replace(".", "/")).exists()
                    or (PACKAGE.parent / (f"{base}.{a.name}".replace(".", "/") + ".py")).exists()
                    else base,
                    node.lineno,
                )
                for a in node.names
            ]
    return [(name, line) for name, line in found if name == "alignzoo" or name.startswith("alignzoo.")]


def all_edges() -> list[tuple[str, str, str]]:
    edges = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = module_name(path)
        for target, line in imports_of(path, source):
            edges.append((source, target, f"{path.relative_to(PACKAGE.parent)}:{line}"))
    return edges


def test_layer_names_cover_every_module():
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    assert {layer_of(m) for m in modules} <= set(MAY_USE)
    # the classification is not vacuous: each layer holds modules
    assert {layer_of(m) for m in modules} == set(MAY_USE)


def test_every_import_goes_down_the_layers():
    wrong = []
    for source, target, where in all_edges():
        a, b = layer_of(source), layer_of(target)
        if a != b and b not in MAY_USE[a]:
            wrong.append(f"{where}: {source} ({a}) imports {target} ({b})")
    assert not wrong, "wrong-way imports (move the shared code down a layer):\n" + "\n".join(wrong)


def test_the_layer_graph_has_no_cycle():
    # MAY_USE itself is acyclic, so any import that obeys it cannot close a cycle between layers
    order, seen = [], set()

    def visit(layer, stack):
        assert layer not in stack, f"cycle in MAY_USE: {' -> '.join(stack + [layer])}"
        if layer not in seen:
            for lower in MAY_USE[layer]:
                visit(lower, stack + [layer])
            seen.add(layer)
            order.append(layer)

    for layer in MAY_USE:
        visit(layer, [])
    assert order.index("foundation") == 0


def test_the_checker_sees_function_local_and_relative_imports(tmp_path):
    """A wrong-way import hidden inside a function (how the old cycles hid) is found, and a
    relative import resolves to its absolute module."""
    probe = tmp_path / "probe.py"
    probe.write_text("from . import sampling\n\ndef f():\n    from alignzoo.benchmarks.runner import BenchmarkRunner\n    return BenchmarkRunner\n")
    found = imports_of(probe, "alignzoo.models.probe")
    assert found == [("alignzoo.models.sampling", 1), ("alignzoo.benchmarks.runner", 4)]
    assert layer_of("alignzoo.models.probe") == "models" and "benchmarks" not in MAY_USE["models"]


def test_the_edges_found_include_the_known_downward_ones():
    edges = {(s, t) for s, t, _ in all_edges()}
    assert ("alignzoo.algos.trainer", "alignzoo.prompts") in edges  # function-local today
    assert ("alignzoo.reports.flags", "alignzoo.health") in edges
