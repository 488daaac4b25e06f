"""Imports run one way: configs ← pipeline ← {models ← losses, shards} ← launch, and no module cycle.

Read from the source with `ast` (every import statement, also those inside functions), so a
violation fails here before it can surface as an import-order bug.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("configs", "pipeline", "models", "losses", "shards", "launch")
# What each package may import from the project besides itself.
ALLOWED = {
    "configs": set(),
    "pipeline": {"configs"},
    "models": {"configs", "pipeline"},
    "losses": {"configs", "pipeline", "models"},
    "shards": {"configs", "pipeline"},
    "launch": {"configs", "pipeline", "models", "losses", "shards"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports() -> dict[str, set[str]]:
    """Module name → the project modules it imports (the longest name that is a module or package)."""
    files = {_module_name(p): p for package in PACKAGES for p in (REPO / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                # `from a.b import c`: c may be a module (a.b.c) or a name in a.b.
                names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
            else:
                continue
            for imported in names:
                if imported.split(".")[0] in PACKAGES:
                    while imported not in files and "." in imported:
                        imported = imported.rsplit(".", 1)[0]
                    if imported in files and imported != name:
                        targets.add(imported)
        graph[name] = targets
    return graph


def test_lower_packages_never_import_the_ones_above():
    wrong = [
        f"{module} imports {target}"
        for module, targets in project_imports().items()
        for target in targets
        if (top := target.split(".")[0]) != module.split(".")[0] and top not in ALLOWED[module.split(".")[0]]
    ]
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_cycles_between_modules():
    graph = project_imports()
    state: dict[str, int] = {}
    cycles: list[str] = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                cycles.append(" → ".join(trail[trail.index(target) :] + [target]))
            elif target not in state:
                visit(target, [*trail, target])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(cycles)
