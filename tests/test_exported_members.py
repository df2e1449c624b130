"""The public surface is declared: every module has ``__all__``, and it is complete and true."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from types import ModuleType

import pytest

PACKAGES = ("crypto", "trusted_space", "connectors")
ROOT = Path(__file__).resolve().parents[1]


def _modules() -> list[ModuleType]:
    """Every public module and package, at any depth (a ``_name`` anywhere in the path skips).

    The walk goes by files rather than ``pkgutil`` so that a folder without ``__init__.py`` (a
    namespace package, such as ``connectors/client``) is still searched.
    """
    found = []
    for package_name in PACKAGES:
        for path in sorted((ROOT / package_name).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            if not any(part.startswith("_") for part in parts):
                found.append(importlib.import_module(".".join(parts)))
    return found


MODULES = _modules()


@pytest.mark.parametrize("module", MODULES, ids=[m.__name__ for m in MODULES])
def test_all_is_declared_and_resolves(module: ModuleType) -> None:
    declared = getattr(module, "__all__", None)
    assert declared is not None, f"{module.__name__} has no __all__"
    missing = [name for name in declared if not hasattr(module, name)]
    assert not missing, f"{module.__name__}.__all__ names undefined {missing}"
    assert len(set(declared)) == len(declared)


@pytest.mark.parametrize("module", MODULES, ids=[m.__name__ for m in MODULES])
def test_public_definitions_are_declared(module: ModuleType) -> None:
    declared = set(getattr(module, "__all__", ()))
    undeclared = [
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and getattr(value, "__module__", None) == module.__name__
        and name not in declared
    ]
    assert not undeclared, f"{module.__name__} defines public {undeclared} outside __all__"


def test_crypto_imports_nothing_of_ours_and_core_no_web() -> None:
    for module in MODULES:
        source = Path(str(module.__file__)).read_text(encoding="utf-8")
        if module.__name__.startswith("crypto"):
            assert "import trusted_space" not in source and "from trusted_space" not in source
            assert "from connectors" not in source
        if module.__name__.startswith("trusted_space"):
            for web in ("fastapi", "httpx", "pydantic", "starlette", "uvicorn"):
                assert f"import {web}" not in source and f"from {web}" not in source
