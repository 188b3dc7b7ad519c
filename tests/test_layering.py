"""The house stays as built (docs/design.md, "The map"): every import in the code, at module level or
inside a function, goes down a floor or stays on its own, and no modules import each other in a
circle. Read from the code's own imports with `ast`, so a new wrong-way import fails here."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

PACKAGES = ("harness", "baselines", "reports", "kernels")
# who may import whom: a module's floor -> the floors it may import (its own included)
ALLOWED = {
    "harness.core": {"harness.core"},
    "harness.run": {"harness.core", "harness.run"},
    "harness": {"harness", "harness.core", "harness.run", "reports"},  # the entry point: cli, scene_cli
    "baselines": {"baselines", "harness.core", "kernels"},
    "reports": {"reports", "harness.core"},
    "kernels": {"kernels"},
}


def floor(module: str) -> str:
    for name in ("harness.core", "harness.run"):
        if module == name or module.startswith(name + "."):
            return name
    return module.split(".")[0]


def modules(root: Path) -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (root / package).rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(module: str, path: Path, known: dict) -> set[str]:
    """The project modules `module` imports anywhere in its file (names resolved to their module)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] not in PACKAGES:
                continue
            while name not in known and "." in name:
                name = name.rpartition(".")[0]
            if name != module:
                found.add(name)
    return found


def graph(root: Path) -> dict[str, set[str]]:
    known = modules(root)
    return {m: imports(m, p, known) for m, p in known.items()}


def wrong_way(edges: dict[str, set[str]]) -> list[str]:
    return sorted(f"{a} -> {b}" for a, targets in edges.items() for b in targets
                  if floor(b) not in ALLOWED[floor(a)])


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], 0
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_every_import_goes_down_a_floor_or_stays_on_it():
    assert wrong_way(graph(ROOT)) == []


def test_no_modules_import_each_other_in_a_circle():
    assert cycles(graph(ROOT)) == []


def test_the_checks_catch_a_wrong_way_import_and_a_circle(tmp_path):
    """The same checks on a small tree with one wrong-way import (the core importing the
    orchestration, lazily inside a function) and one circle (two baselines modules)."""
    files = {
        "harness/__init__.py": "", "harness/core/__init__.py": "", "harness/run/__init__.py": "",
        "harness/core/records.py": "def f():\n    from harness.run.trial import run\n",
        "harness/run/trial.py": "from harness.core import records\n",
        "baselines/__init__.py": "", "baselines/b/__init__.py": "",
        "baselines/b/x.py": "from baselines.b.y import g\n", "baselines/b/y.py": "from . import x\n",
        "reports/__init__.py": "", "kernels/__init__.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    edges = graph(tmp_path)
    assert wrong_way(edges) == ["harness.core.records -> harness.run.trial"]
    assert cycles(edges) == [["baselines.b.x", "baselines.b.y"], ["harness.core.records", "harness.run.trial"]]
