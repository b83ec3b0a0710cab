"""The package's layers, read from its source: no import cycle, and no module importing a
module of a higher layer.

The layers, lowest first: the package root (`errors`, `redaction`, `__init__`: what every layer
shares) < `infra/` < `providers/` < `core/` < `access/` < `runners/` < `frontends/`. Every
import counts, at module level or inside a function, under `TYPE_CHECKING` or not: a lazy
import is still an arrow between two modules.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import imagegw

PACKAGE = Path(imagegw.__file__).parent
LAYERS = ("root", "infra", "providers", "core", "access", "runners", "frontends")
#: the only modules at the package root
ROOT_MODULES = {"imagegw", "imagegw.errors", "imagegw.redaction"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else "root"


def imported(module: str) -> Iterator[str]:
    """The package's modules that `module` imports (`from a import b` counts `a.b` when that is
    a module, else `a`)."""
    path = MODULES[module]
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[: len(package) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            names = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names
            ]
        else:
            continue
        for name in names:
            while name and name not in MODULES:  # `import imagegw.x.y` of a name in a module
                name = name.rpartition(".")[0]
            if name and name != module:
                yield name


GRAPH = {module: sorted(set(imported(module))) for module in MODULES}


def cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """Every group of more than one module that import each other, directly or not (Tarjan's
    strongly connected components)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_the_package_is_read_whole() -> None:
    # the checks below see every layer and the modules that tie them together
    assert {layer(module) for module in MODULES} == set(LAYERS)
    assert "imagegw.infra.config" in GRAPH["imagegw.providers"]
    assert "imagegw.frontends.app" in MODULES


def test_no_import_cycles() -> None:
    assert cycles(GRAPH) == []


def test_no_module_imports_a_higher_layer() -> None:
    upward = [
        f"{module} ({layer(module)}) -> {target} ({layer(target)})"
        for module, targets in GRAPH.items()
        for target in targets
        if LAYERS.index(layer(target)) > LAYERS.index(layer(module))
    ]
    assert upward == []


def test_the_root_keeps_only_what_every_layer_shares() -> None:
    assert {module for module in MODULES if layer(module) == "root"} == ROOT_MODULES


def test_the_cycle_finder_finds_a_cycle() -> None:
    # the checker itself, on a made-up graph: a -> b -> c -> a, and d importing into it
    graph = {"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}
    assert cycles(graph) == [["a", "b", "c"]]
