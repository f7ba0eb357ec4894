"""Imports run one way (docs/architecture.md): every import of every module, read with `ast` (lazy
imports inside functions included), goes to a lower floor or stays in its own package, and no files
import each other, directly or round a longer loop."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Floor of each package, bottom first. Packages on one floor never import each other.
FLOORS = {
    "minimind": 0,
    "contract": 1, "runtime": 1,
    "rollout": 2, "reward": 2, "learner": 2,
    "serving": 3,
    "recipes": 4,
    "experiments": 5, "bench": 5, "scripts": 5,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    found = {}
    for package in FLOORS:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[module_name(path)] = path
    return found


def imported_modules(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules `name` imports; `from pkg import mod` counts as importing pkg.mod."""
    is_package = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module
            targets = [f"{stem}.{alias.name}" if f"{stem}.{alias.name}" in known else stem for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import a.b.c` of a project module, or a symbol of one
                target = target.rpartition(".")[0]
            if target and target.split(".")[0] in FLOORS and target != name:
                out.add(target)
    return out


def import_graph() -> dict[str, set[str]]:
    known = project_modules()
    return {name: imported_modules(name, path, known) for name, path in known.items()}


def test_every_package_has_a_floor_and_the_graph_is_not_empty():
    top_level = {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert top_level - {"tests"} <= set(FLOORS), f"packages without a floor: {top_level - set(FLOORS)}"
    graph = import_graph()
    assert "contract.batch" in graph["learner.learner"] | graph["learner.stages.grpo"]
    assert sum(len(v) for v in graph.values()) > 100


def test_imports_only_go_down_or_stay_in_their_package():
    upward = []
    for name, targets in import_graph().items():
        here = name.split(".")[0]
        for target in targets:
            there = target.split(".")[0]
            if there != here and FLOORS[there] >= FLOORS[here]:
                upward.append(f"{name} -> {target} ({here} floor {FLOORS[here]}, {there} floor {FLOORS[there]})")
    assert not upward, "imports that do not go down:\n" + "\n".join(sorted(upward))


def test_the_leaf_imports_nothing_of_ours_but_minimind():
    graph = import_graph()
    leaf = {t for name, targets in graph.items() if name.startswith("contract") for t in targets}
    assert {t.split(".")[0] for t in leaf} <= {"minimind", "contract"}, leaf


def test_no_import_cycles():
    graph = import_graph()
    # Tarjan's strongly connected components: any component of two or more modules is a cycle.
    index, low, on_stack, stack, cycles = {}, {}, set(), [], []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"modules that import each other: {cycles}"
