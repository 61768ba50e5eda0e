"""The import graph of ``src/workzone`` follows the layers drawn in ARCHITECTURE.md.

Every import counts (module level or inside a function), except those under ``if TYPE_CHECKING:``.
A module may import its own layer and the layers below it, never one above; the front ends (server,
miner) never import each other; there is no import cycle. A new module must be placed in a layer here
(and in ARCHITECTURE.md).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

#: Bottom to top. A module belongs to the first layer with a prefix equal to it or a package above it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", ("workzone.errors", "workzone.types", "workzone._optional", "workzone._loop", "workzone._memory")),
    ("io", ("workzone.io",)),
    ("stages", ("workzone.stages", "workzone.accel")),
    ("config", ("workzone.config", "workzone.engine_options", "workzone.routing")),
    ("evaluation", ("workzone.evaluation",)),
    ("fusion", ("workzone.fusion",)),
    ("cascade", ("workzone.cascade", "workzone.batching")),
    ("application", ("workzone.api", "workzone.service", "workzone.tuning", "workzone.checking", "workzone.planning",
                     "workzone.bench", "workzone.accel.configure")),
    ("public API", ("workzone",)),
    ("training", ("workzone.training",)),
    ("front ends", ("workzone.server", "workzone.miner", "workzone.batch", "workzone.video")),
    ("cli", ("workzone.cli",)),
]
#: Packages of one layer that must not import each other.
INDEPENDENT = ("workzone.server", "workzone.miner", "workzone.batch")


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> set[str]:
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] == "workzone":
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "workzone")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


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


def test_runtime_never_imports_training():
    training = _layer("workzone.training")
    bad = sorted(f"{m} -> {d}" for m, deps in GRAPH.items() if _layer(m) < training
                 for d in deps if d.startswith("workzone.training"))
    assert not bad, bad


def test_no_import_cycle():
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def strongconnect(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH.get(v, ()):
            if w not in GRAPH:
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

    for v in sorted(GRAPH):
        if v not in index:
            strongconnect(v)
    assert not cycles, cycles


def test_architecture_doc_names_every_layer():
    doc = (SRC.parent / "ARCHITECTURE.md").read_text(encoding="utf-8")
    assert not [name for name, _ in LAYERS if name not in doc]
