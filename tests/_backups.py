"""SQLite's online backup, as docs/operations.md §7 has an operator take it while a node runs."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def sqlite_backup(db: Path, target: Path) -> None:
    """Copy the store ``db`` to ``target`` with SQLite's backup API (WAL contents included)."""
    src, dst = sqlite3.connect(db), sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()
