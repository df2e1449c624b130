"""The layout is the architecture: which package may import which, and no import circles.

Layers point down only (``connectors`` → ``trusted_space`` → ``crypto``); inside ``connectors``
each program has its folder and a direction::

    cli ─→ demo ─→ spaces ─→ node ─→ client ─→ common

(an arrow reads "may import"; every program may also import those further right). Every import
statement counts, also those inside functions and under ``TYPE_CHECKING``: a circle hidden in a
function is still a circle for the reader.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("crypto", "trusted_space", "connectors")

# What each part of the tree may import of ours (a prefix match on dotted module names).
ALLOWED: dict[str, tuple[str, ...]] = {
    "crypto": ("crypto",),
    "trusted_space": ("trusted_space", "crypto"),
    "connectors.common": ("connectors.common", "connectors", "trusted_space", "crypto"),
    "connectors.client": ("connectors.client", "connectors.common", "trusted_space", "crypto"),
    "connectors.node": (
        "connectors.node",
        "connectors.client",
        "connectors.common",
        "trusted_space",
        "crypto",
    ),
    "connectors.spaces": (
        "connectors.spaces",
        "connectors.node",
        "connectors.client",
        "connectors.common",
        "trusted_space",
        "crypto",
    ),
    "connectors.demo": (
        "connectors.demo",
        "connectors.spaces",
        "connectors.node",
        "connectors.client",
        "connectors.common",
        "trusted_space",
        "crypto",
    ),
    "connectors.cli": ("connectors", "trusted_space", "crypto"),
}
# Third-party packages a layer must never import (the web stack stays in the node and clients).
FORBIDDEN_THIRD_PARTY: dict[str, tuple[str, ...]] = {
    "crypto": (
        "fastapi",
        "starlette",
        "httpx",
        "pydantic",
        "typer",
        "rich",
        "uvicorn",
        "sqlalchemy",
    ),
    "trusted_space": ("fastapi", "starlette", "httpx", "pydantic", "typer", "rich", "uvicorn"),
    "connectors.common": ("fastapi", "starlette", "uvicorn", "typer", "rich", "httpx"),
    "connectors.client": ("fastapi", "starlette", "uvicorn", "typer", "rich"),
}


def _modules() -> Iterator[tuple[str, Path]]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            yield ".".join(parts), path


KNOWN = {name for name, _ in _modules()}


def _imports(module: str, path: Path) -> set[str]:
    """Every module this file imports (absolute names; relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # ``from pkg import module`` imports the module; ``from module import name`` the module
            submodules = {f"{base}.{a.name}" for a in node.names} & KNOWN
            found.update(submodules or {base})
    return found


MODULES = dict(_modules())
GRAPH = {
    name: {i for i in _imports(name, path) if i in MODULES and i != name}
    for name, path in MODULES.items()
}


def _part(module: str) -> str:
    for prefix in sorted(list(ALLOWED) + list(FORBIDDEN_THIRD_PARTY), key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return prefix
    return module.split(".")[0]


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down_only(module: str) -> None:
    part = _part(module)
    ours = {i for i in _imports(module, MODULES[module]) if i.split(".")[0] in PACKAGES}
    allowed = ALLOWED.get(part, (part,))
    # ``connectors`` itself (its version) is importable from everywhere in connectors
    wrong = sorted(i for i in ours if not _under(i, allowed) and i != "connectors")
    assert not wrong, f"{module} ({part}) imports {wrong}"
    banned = FORBIDDEN_THIRD_PARTY.get(part, ())
    third = sorted(i for i in _imports(module, MODULES[module]) if _under(i.split(".")[0], banned))
    assert not third, f"{module} imports {third}"


def test_nothing_imports_the_cli() -> None:
    importers = sorted(
        m
        for m, deps in GRAPH.items()
        if not m.startswith("connectors.cli") and any(_under(d, ("connectors.cli",)) for d in deps)
    )
    assert importers == []


def test_no_import_circles() -> None:
    # Tarjan's strongly connected components over the module graph (package __init__ files that
    # only re-export are edges too: a circle through them is still a circle).
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(GRAPH[v]):
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
                circles.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert circles == []


def test_the_layout_test_sees_the_tree() -> None:
    # guard against a silent pass: the walk found the programs and real edges between them
    assert {"connectors.node.app", "connectors.cli.main", "trusted_space.policy"} <= set(MODULES)
    assert "connectors.node.runtime" in GRAPH["connectors.node.app"]
