"""What one demo run is asked to do (:class:`DemoOptions`) and what it found (:class:`DemoRun`).

Its own module so the steps (:mod:`connectors.demo.run`) and the report
(:mod:`connectors.demo.report`) both read it without importing each other.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from connectors.client.analyst import AnalystClient
from connectors.client.http import AdminClient
from connectors.client.verify import Check
from connectors.demo.data import (
    BANK,
    DemoData,
)
from connectors.spaces.space import RunningSpace
from trusted_space.errors import NotReadyError
from trusted_space.policy import PROTOCOLS

__all__ = ["DemoOptions", "DemoRun"]


@dataclass(frozen=True)
class DemoOptions:
    """What to run.

    Attributes:
        entities: enterprises in the city.
        applicants: applicants scored.
        seed: the data's seed.
        out: the output directory (node directories, data, report).
        protocols: protocols to score with.
        keep_running: leave the space up after the run, until SIGINT/SIGTERM.
        timeout: seconds to wait for nodes, negotiations and each query.
    """

    entities: int = 20_000
    applicants: int = 1_000
    seed: int = 2025
    out: Path = Path("demo-output")
    protocols: tuple[str, ...] = tuple(PROTOCOLS)
    keep_running: bool = False
    timeout: float = 300.0


@dataclass
class DemoRun:
    """The state and findings of one run (``summary()`` is what ``--json`` prints)."""

    options: DemoOptions
    say: Callable[[str], None]
    checks: list[Check] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    nodes: dict[str, str] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)
    protocols: list[dict[str, Any]] = field(default_factory=list)
    refusals: list[dict[str, Any]] = field(default_factory=list)
    ledgers: list[dict[str, Any]] = field(default_factory=list)
    plots: dict[str, Any] = field(default_factory=dict)
    receipts: dict[str, int] = field(default_factory=dict)
    space: RunningSpace | None = None
    data: DemoData | None = None
    _vkeys: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def check(self, name: str, ok: bool, detail: str) -> bool:
        self.checks.append(Check(name, bool(ok), detail))
        if not ok:
            self.say(f"  FAILED: {name}: {detail}")
        return ok

    @contextlib.contextmanager
    def step(self, name: str, label: str) -> Iterator[None]:
        self.say(f"{label} …")
        started = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(time.perf_counter() - started, 3)
            self.say(f"  {name}: done in {self.timings[name]:.1f} s")

    def summary(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "what": "a pre-loan review of enterprises by a bank jointly with four government "
            "departments, through a space of six connector nodes",
            "outputDir": str(self.options.out.resolve()),
            "nodes": dict(self.nodes),
            **self.facts,
            "protocols": self.protocols,
            "refusals": self.refusals,
            "ledgers": self.ledgers,
            "receiptsChecked": dict(self.receipts),
            "timings": dict(self.timings),
            "checks": [c.to_json() for c in self.checks],
        }

    # -- helpers ---------------------------------------------------------------------------------
    def node_dir(self, name: str) -> Path:
        if self.space is None:
            raise NotReadyError("the space is not running")
        return self.space[name].dir

    def admin(self, name: str) -> AdminClient:
        if self.space is None:
            raise NotReadyError("the space is not running")
        return self.space[name].admin(timeout=self.options.timeout)

    def analyst(self) -> AnalystClient:
        return AnalystClient.from_dir(self.node_dir(BANK), timeout=self.options.timeout)
