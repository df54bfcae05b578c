"""The package's import structure: no cycles, nothing imported from a higher layer or
sideways, no private helper of another package.

Every ``import`` of ``src/fvr_bench`` counts, also those inside functions (a lazy import
is still a dependency). Components are the top-level modules and packages of fvr_bench;
each has a layer, and a module may import only from lower layers (and its own component).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "fvr_bench"

# low → high; one component per name, each imports only from lower layers
LAYERS = [
    {"fvr_bench", "errors"},
    {"config", "io", "state_dicts", "video", "weights"},
    {"degradations", "data", "faces"},
    {"metrics"},
    {"methods", "results", "scoring"},
    {"curation", "evaluate", "training"},
    {"sharding", "tables"},
    {"cli"},
    {"__main__"},
]
LAYER = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imports(name: str, path: Path, known: set[str]) -> list[tuple[str, str, int]]:
    """``(imported module, imported name or "", line)`` of every fvr_bench import in ``path``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, "", node.lineno) for alias in node.names if alias.name.startswith("fvr_bench")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if not source.startswith("fvr_bench"):
                continue
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                found.append((submodule, "", node.lineno) if submodule in known else (source, alias.name, node.lineno))
    return found


def component(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def graph() -> dict[str, list[tuple[str, str, int]]]:
    found = modules()
    return {name: imports(name, path, set(found)) for name, path in found.items()}


def test_every_component_has_a_layer():
    assert {component(name) for name in modules()} <= set(LAYER), "add new components to LAYERS"


def test_no_import_from_a_higher_layer_or_sideways():
    wrong = []
    for name, targets in graph().items():
        own = component(name)
        for target, _, line in targets:
            other = component(target)
            if other != own and LAYER[other] >= LAYER[own]:
                wrong.append(f"{name}:{line} imports {target} (layer {LAYER[other]} >= {LAYER[own]})")
    assert not wrong, "\n".join(wrong)


def test_no_private_helper_of_another_component():
    wrong = [f"{name}:{line} imports {target}.{item}" for name, targets in graph().items()
             for target, item, line in targets
             if item.startswith("_") and component(target) != component(name)]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle():
    edges = {name: sorted({target for target, _, _ in targets if target in modules() and target != name})
             for name, targets in graph().items()}
    # Tarjan's strongly connected components
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, []):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            members = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                members.append(member)
                if member == node:
                    break
            if len(members) > 1:
                cycles.append(sorted(members))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    assert not cycles, cycles
