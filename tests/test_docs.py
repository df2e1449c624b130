"""The docs name real things: every module, file and dotted name the architecture guide cites.

A guide that sends a reader to a file that moved is worse than none; this fails when a path or a
``package.module.name`` in ``docs/architecture.md`` no longer exists.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "architecture.md"
OURS = ("crypto", "trusted_space", "connectors")

_PATH = re.compile(r"`((?:crypto|trusted_space|connectors|tests)/[\w/.-]+)`")
_DOTTED = re.compile(r"`((?:crypto|trusted_space|connectors)(?:\.\w+)+)")


def _paths() -> list[str]:
    return sorted(set(_PATH.findall(GUIDE.read_text(encoding="utf-8"))))


def _dotted() -> list[str]:
    return sorted(set(_DOTTED.findall(GUIDE.read_text(encoding="utf-8"))))


def _resolves(name: str) -> bool:
    """``a.b.c.d``: the longest importable module prefix, then attributes for the rest."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


@pytest.mark.parametrize("path", _paths())
def test_every_cited_path_exists(path: str) -> None:
    assert (ROOT / path.rstrip("/")).exists(), f"docs/architecture.md cites {path}"


@pytest.mark.parametrize("name", _dotted())
def test_every_cited_dotted_name_resolves(name: str) -> None:
    assert _resolves(name), f"docs/architecture.md cites {name}"


def test_the_guide_cites_enough_to_be_checked() -> None:
    assert len(_paths()) >= 10 and len(_dotted()) >= 10
