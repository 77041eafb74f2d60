"""The house rules, checked: packages import only downwards, no module imports itself back
(through any chain of module-level imports), and the domain and dataflow modules stay small.

Layers, lowest first: ``schemas`` < ``features`` < ``models`` < ``dataflows``, ``serving`` <
``nextbest`` (the shell) < ``bench``. ``serving`` and ``dataflows`` do not import each other;
``serving`` takes settings values passed in, never the shell's settings.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

from tests.conftest import REPO

PACKAGES = ("schemas", "features", "models", "dataflows", "serving", "nextbest", "bench")
ALLOWED = {
    "schemas": set(),
    "features": {"schemas"},
    "models": {"schemas", "features"},
    "dataflows": {"schemas", "features", "models"},
    "serving": {"schemas", "features", "models"},
    "nextbest": {"schemas", "features", "models", "dataflows", "serving"},
    "bench": {"schemas", "features", "models", "dataflows", "serving", "nextbest"},
}
#: Packages whose modules stay under ~400 lines unless their docstring says why not.
SMALL = ("schemas", "features", "models", "dataflows", "serving")
MAX_LINES = 410


def _modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for pkg in PACKAGES:
        for path in (REPO / pkg).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def _imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module-level imports between our modules (imports inside functions are deferred on
    purpose and do not count)."""

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    edges: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        for node in ast.parse(path.read_text()).body:
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            for target in targets:
                got = resolve(target)
                if got is not None and got != name:
                    edges[name].add(got)
    return edges


def test_packages_import_only_downwards() -> None:
    edges = _imports(_modules())
    wrong = sorted(
        (a, b)
        for a, targets in edges.items()
        for b in targets
        if a.split(".")[0] != b.split(".")[0] and b.split(".")[0] not in ALLOWED[a.split(".")[0]]
    )
    assert wrong == []


def test_no_import_cycles() -> None:
    edges = _imports(_modules())
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, path)
        path.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [])
    assert cycles == []


def test_domain_and_dataflow_modules_stay_small() -> None:
    long = []
    for name, path in _modules().items():
        if name.split(".")[0] not in SMALL:
            continue
        lines = len(path.read_text().splitlines())
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        if lines > MAX_LINES and "long on purpose" not in doc.lower():
            long.append((name, lines))
    assert long == []


def test_every_sink_operation_is_routed_to_the_sink() -> None:
    """An effect type missing from ``SINK_OPS`` would be dropped on its way to Redis."""
    from typing import get_args

    from dataflows.effects import SINK_OPS
    from dataflows.records import SinkOp

    assert set(get_args(SinkOp)) == set(SINK_OPS)
