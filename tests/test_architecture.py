"""The import graph of ``src/workzone`` follows the layers drawn in ARCHITECTURE.md.

Every import counts: module level, inside a function, and under ``if TYPE_CHECKING:`` (a type-only
import still ties the two modules together for the reader and for a type checker). A module may
import its own layer and the layers below it, never one above; the front ends (server, miner, batch)
never import each other; there is no cycle between modules nor between packages. The lab
(``lab/src/workzone_train``) imports only public runtime names, and the runtime never imports it.
A new module must be placed in a layer here (and in ARCHITECTURE.md).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
LAB = ROOT / "lab" / "src"

#: Bottom to top. A module belongs to the first layer with a prefix equal to it or a package above it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", ("workzone.errors", "workzone.types", "workzone.answer", "workzone._optional", "workzone._loop", "workzone._memory")),
    ("io", ("workzone.io",)),
    ("video", ("workzone.video",)),
    ("accel", ("workzone.accel",)),
    ("stages", ("workzone.stages", "workzone.object_evidence", "workzone.verified_evidence")),
    ("config", ("workzone.config", "workzone.engine_options", "workzone.routing")),
    ("evaluation", ("workzone.evaluation",)),
    ("fusion", ("workzone.fusion",)),
    ("cascade", ("workzone.cascade", "workzone.micro_batcher", "workzone.client_costs", "workzone.image_decoder",
                 "workzone.cascade_process")),
    ("application", ("workzone.api", "workzone.service", "workzone.tuning", "workzone.checking", "workzone.planning",
                     "workzone.throughput")),
    ("public API", ("workzone",)),
    ("training", ("workzone_train",)),
    ("front ends", ("workzone.server", "workzone.miner", "workzone.batch")),
    ("cli", ("workzone.cli",)),
]
#: Packages of one layer that must not import each other.
INDEPENDENT = ("workzone.server", "workzone.miner", "workzone.batch")


def _module_name(path: Path, root: Path = SRC) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_names(tree: ast.AST, top: str = "workzone") -> list[tuple[str, str | None]]:
    """Every ``(module, name)`` imported from package ``top`` (name ``None`` for ``import module``)."""
    found: list[tuple[str, str | None]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] == top:
            found.extend((node.module, a.name) for a in node.names)
        elif isinstance(node, ast.Import):
            found.extend((a.name, None) for a in node.names if a.name.split(".")[0] == top)
    return found


def _imports(tree: ast.AST) -> set[str]:
    return {module for module, _ in _imported_names(tree)}


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in (SRC / "workzone").rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        deps = set()
        for imp in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            # `from workzone.x import y` may name a module y; the edge goes to the deepest module that exists.
            deps.add(imp if imp in modules else imp.rsplit(".", 1)[0])
        graph[name] = deps - {name}
    return graph


def _layer(module: str) -> int | None:
    best: tuple[int, int] | None = None  # (prefix length, layer index): the longest prefix wins
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[0]:
                    best = (len(prefix), i)
    return None if best is None else best[1]


GRAPH = _graph()


def test_every_module_has_a_layer():
    assert not [m for m in GRAPH if _layer(m) is None]


def test_every_import_names_a_module_that_exists():
    # A stale import (even a type-only one) of a module that moved would otherwise pass unnoticed.
    stale = []
    for path in (SRC / "workzone").rglob("*.py"):
        for module, name in _imported_names(ast.parse(path.read_text(encoding="utf-8"))):
            if module not in GRAPH and f"{module}.{name}" not in GRAPH:
                stale.append(f"{_module_name(path)} -> {module}")
    assert not stale, stale


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_upward_import(module):
    here = _layer(module)
    upward = [f"{dep} ({LAYERS[_layer(dep)][0]})" for dep in sorted(GRAPH[module]) if _layer(dep) > here]
    assert not upward, f"{module} ({LAYERS[here][0]}) imports a higher layer: {upward}"


def _under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_front_ends_do_not_import_each_other():
    for a in INDEPENDENT:
        for b in INDEPENDENT:
            if a != b:
                bad = sorted(f"{m} -> {d}" for m, deps in GRAPH.items() if _under(m, a) for d in deps
                             if _under(d, b))
                assert not bad, bad


def _lab_modules() -> dict[str, Path]:
    return {_module_name(p, LAB): p for p in (LAB / "workzone_train").rglob("*.py")}


def test_runtime_never_imports_the_lab():
    bad = sorted(f"{m} -> {module}" for m, path in {_module_name(p): p for p in (SRC / "workzone").rglob("*.py")}.items()
                 for module, _ in _imported_names(ast.parse(path.read_text(encoding="utf-8")), "workzone_train"))
    assert not bad, bad


def test_the_lab_uses_only_public_runtime_names():
    bad = []
    for name, path in _lab_modules().items():
        for module, imported in _imported_names(ast.parse(path.read_text(encoding="utf-8"))):
            if any(part.startswith("_") for part in module.split(".")) or (imported or "").startswith("_"):
                bad.append(f"{name}: {module}" + (f".{imported}" if imported else ""))
    assert _lab_modules(), "lab/src/workzone_train not found"
    assert not bad, f"the lab imports private runtime names (make them public): {bad}"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return cycles


def test_no_import_cycle():
    assert not _cycles(GRAPH)


def _package(module: str) -> str:
    """``workzone.accel.decode`` -> ``workzone.accel``; a top-level module is its own package."""
    return ".".join(module.split(".")[:2])


def test_no_package_cycle():
    # The root package (workzone/__init__.py, the public API) re-exports from below and is imported by nobody
    # inside, so it is left out: every other package must form an acyclic graph.
    packages: dict[str, set[str]] = {}
    for m, deps in GRAPH.items():
        if m != "workzone":
            packages.setdefault(_package(m), set()).update(_package(d) for d in deps if d != "workzone")
    graph = {p: deps - {p} for p, deps in packages.items()}
    assert not _cycles(graph)


def test_architecture_doc_names_every_layer():
    doc = (SRC.parent / "ARCHITECTURE.md").read_text(encoding="utf-8")
    assert not [name for name, _ in LAYERS if name not in doc]
