"""The public surface is declared: every module has ``__all__``, and it is complete and true."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path
from types import ModuleType

import pytest

PACKAGES = ("crypto", "trusted_space", "connectors")
RECURSIVE = ("crypto", "trusted_space")  # connectors: top level only until its restructuring lands


def _modules() -> list[ModuleType]:
    """Every public module; subpackages too where RECURSIVE (a ``_name`` in the path skips)."""
    found = []
    for package_name in PACKAGES:
        package = importlib.import_module(package_name)
        found.append(package)
        walk = pkgutil.walk_packages if package_name in RECURSIVE else pkgutil.iter_modules
        for info in walk(package.__path__, prefix=f"{package_name}."):
            if not any(part.startswith("_") for part in info.name.split(".")):
                found.append(importlib.import_module(info.name))
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
