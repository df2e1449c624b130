"""Worker processes for the heavy arithmetic: clean at birth, gone with their parent.

Every process pool of the code base comes from :func:`worker_pool`. Two rules, each learned from
an incident (issue 17):

* **Spawned, never forked.** A forked worker inherits every file descriptor of the node's server
  process: its listening socket, its open client connections and its store. After ``kill -9`` of
  a provider mid-query, forked Paillier workers lived on with PPID 1, held the node's port (it
  could not restart: "address already in use") and the analyst's half-open connection (the query
  hung for the whole read timeout instead of failing at once). ``spawn`` starts a fresh
  interpreter that receives only the pipes the pool needs, and no copy of secrets or locks.
* **Dead with their parent.** Each worker watches its parent's pid from a daemon thread and exits
  the moment it changes (the parent died and the worker was re-parented): an orphan never lingers
  to hold memory or a core. A poll, not ``PR_SET_PDEATHSIG``: Linux sends that signal when the
  parent *thread* that created the worker exits, and pools grow their workers lazily from
  whichever request thread submits first.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

__all__ = ["PARENT_POLL_SECONDS", "worker_pool"]

PARENT_POLL_SECONDS = 0.25
"""How often a worker checks that its parent is alive (its latency to exit after a kill)."""


def worker_pool(
    workers: int,
    initializer: Callable[..., None] | None = None,
    initargs: tuple[Any, ...] = (),
) -> ProcessPoolExecutor:
    """A :class:`ProcessPoolExecutor` of spawned workers that exit when this process dies.

    Args:
        workers: number of worker processes (at least 1).
        initializer: run once in each worker after the watch starts (a module-level function).
        initargs: its arguments (picklable; only this node's own processes see them).
    """
    if workers < 1:
        raise ValueError("workers must be at least 1")
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=get_context("spawn"),
        initializer=_start_worker,
        initargs=(os.getpid(), initializer, initargs),
    )


def _start_worker(
    parent: int, initializer: Callable[..., None] | None, initargs: tuple[Any, ...]
) -> None:
    if os.getppid() != parent:  # the parent died while this worker was starting
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent,), name="parent-watch", daemon=True).start()
    if initializer is not None:
        initializer(*initargs)


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_SECONDS)
    os._exit(1)  # no cleanup to run: the pool's parent, and so its work, are gone
