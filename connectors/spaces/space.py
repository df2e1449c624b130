"""A local space from one config file: real node processes, admitted and serving their datasets.

``trusted-space space up space.toml`` is how a newcomer, a demo or an integration test gets a
working space on one machine without typing a dozen commands. The config names the space, where
the node directories go, and each node with its roles and the datasets it publishes::

    [space]
    name = "example"
    dir = "space-output"          # node directories (relative to this file)
    host = "127.0.0.1"
    base_port = 18700             # node i listens on base_port + i; 0 = free ports
    tls = false                   # true: HTTPS everywhere, certificates from a throwaway CA
    client_certs = false          # true (with tls): every node requires client certificates

    [[node]]
    name = "city-centre"
    roles = ["operator"]

    [[node]]
    name = "tax-bureau"
    roles = ["provider"]
    [[node.dataset]]
    file = "datasets/tax.json"    # trusted_space.catalog Dataset JSON (offerIds optional)
    source = { kind = "csv", path = "data/tax.csv" }
    offers = ["policies/tax-score.json"]     # ODRL Offer JSON files

:func:`load_config` parses it strictly into frozen dataclasses; every error names the file and the
line (``space.toml:12: node 'tax-bureau': unknown key 'rolls'``), including the JSON files it
points at (a dataset published too openly is refused here, before any process starts).

:func:`up` does what an operator and the institutions' staff would do by hand, over the same
HTTP APIs: ``node init`` for each node (a directory that already holds the node is reused, with
its keys, store and port), ``node serve`` as a separate process for each (its own session, so the
whole process group can be signalled; output to ``<node dir>/logs/node.log``), all started at
once, then admission of every other node by the operator (``GET /identity``, the operator's
``POST /operator/participants``, the node's ``PUT /management/credential``), ``/readyz``, and
finally ``POST /management/datasets`` for every dataset. ``<space dir>/space.json`` records node
names, URLs, directories and process ids for :func:`down`.

With ``tls = true`` the space gets its own CA (``<space dir>/tls/``, from
:class:`~connectors.spaces.certs.CertificateAuthority`) and each node a certificate and the
``tls_*`` settings that make it serve HTTPS and trust only that CA for its peers;
``client_certs = true`` adds ``tls_client_ca``, so every node also requires a client certificate
from it (mutual TLS). The space's own calls (readiness, admission, publishing) use each node's
own TLS settings, as its staff would.

Threats and care taken: admin tokens are read from the node directories (mode 0600) and sent only
to the node they belong to, over loopback by default; nothing secret is printed or written to
``space.json``. :func:`down` only signals a process id it finds in ``space.json`` if that process
is still a ``node serve`` of that node directory (a recycled pid is left alone). If ``up`` fails,
it stops every process it started and names the node that failed with the end of its log.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import ValidationError as PydanticValidationError

from connectors.client.http import AdminClient
from connectors.common.settings import (
    NodeLayout,
    NodeSettings,
    OperatorAnchor,
    init_node,
    load_settings,
    update_node_config,
)
from connectors.common.tls import client_context
from connectors.spaces.certs import CertificateAuthority
from trusted_space.catalog import Dataset, check_grade_floor, validate_offer
from trusted_space.errors import NotReadyError, RemoteError, TrustedSpaceError, ValidationError
from trusted_space.identity import ROLES, check_participant_id
from trusted_space.policy import check_grade_floor as check_policy_floor
from trusted_space.policy import from_odrl

__all__ = [
    "SOURCE_KINDS",
    "SPACE_FILE",
    "DatasetConfig",
    "NodeConfig",
    "RunningNode",
    "RunningSpace",
    "SourceConfig",
    "SpaceConfig",
    "SpaceConfigError",
    "SpaceError",
    "admit",
    "count_steps",
    "down",
    "load_config",
    "read_space_file",
    "up",
]

SPACE_FILE = "space.json"
SOURCE_KINDS = ("csv", "parquet", "sqlite")
DEFAULT_BASE_PORT = 18700
_LOG_TAIL_LINES = 30
# Settings the space decides for each node; the rest of NodeSettings may be set per node.
_SPACE_OWNED_SETTINGS = frozenset({"name", "roles", "dir", "host", "port"})
# Environment variables that would change who a node is; not passed on to node processes.
_IDENTITY_ENV = frozenset(
    {"TS_NAME", "TS_ROLES", "TS_DIR", "TS_HOST", "TS_PORT", "TS_PUBLIC_URL", "TS_STORE_URL"}
)


# -- errors ---------------------------------------------------------------------------------------
class SpaceConfigError(ValidationError):
    """The space config is invalid; ``str()`` is ``FILE:LINE: message``."""

    def __init__(self, path: Path | str, line: int | None, message: str) -> None:
        self.path = str(path)
        self.line = line
        self.message = message
        where = f"{self.path}:{line}" if line else self.path
        super().__init__(f"{where}: {message}")


class SpaceError(TrustedSpaceError):
    """Starting or stopping the space failed; ``node`` names the node, ``log_tail`` its log."""

    def __init__(self, message: str, *, node: str | None = None, log_tail: str = "") -> None:
        self.node = node
        self.log_tail = log_tail
        super().__init__(f"{node}: {message}" if node else message)


# -- config ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SourceConfig:
    """Where a dataset's rows are (``path`` absolute; ``table`` for SQLite)."""

    kind: str
    path: Path
    table: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "path": str(self.path)}
        if self.table is not None:
            out["table"] = self.table
        return out


@dataclass(frozen=True)
class DatasetConfig:
    """One dataset a node publishes: its description, source and offers (already validated)."""

    file: Path
    dataset: Mapping[str, Any] = field(compare=False)
    source: SourceConfig
    offers: tuple[Mapping[str, Any], ...] = field(compare=False)
    offer_files: tuple[Path, ...] = ()

    @property
    def id(self) -> str:
        return str(self.dataset["id"])

    def request_body(self) -> dict[str, Any]:
        """The body of ``POST /management/datasets``."""
        return {
            "dataset": dict(self.dataset),
            "source": self.source.to_json(),
            "offers": [dict(o) for o in self.offers],
        }


@dataclass(frozen=True)
class NodeConfig:
    """One node of the space."""

    name: str
    roles: tuple[str, ...]
    port: int | None = None
    settings: Mapping[str, Any] = field(default_factory=dict, compare=False)
    datasets: tuple[DatasetConfig, ...] = ()

    @property
    def is_operator(self) -> bool:
        return "operator" in self.roles


@dataclass(frozen=True)
class SpaceConfig:
    """A parsed, validated space config (paths absolute)."""

    path: Path
    name: str
    dir: Path
    host: str
    base_port: int
    nodes: tuple[NodeConfig, ...]
    tls: bool = False
    client_certs: bool = False

    @property
    def operator(self) -> NodeConfig:
        return next(n for n in self.nodes if n.is_operator)

    def node(self, name: str) -> NodeConfig:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)


_HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\-\" ]+?)\s*\]\]?\s*(#.*)?$")


class _Locator:
    """Finds the line of a table header or key in the raw TOML text, for error messages.

    tomllib reports syntax errors with their position but forgets where a value came from, so
    semantic errors (unknown key, duplicate node) are located by scanning the text: the n-th
    ``[[node]]`` header, the k-th ``[[node.dataset]]`` below it, and the ``key =`` line between
    that header and the next one. When a key cannot be found (e.g. an inline table), the header
    line is used.
    """

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.headers: list[tuple[int, str]] = []  # (1-based line, table name)
        for number, line in enumerate(self.lines, start=1):
            m = _HEADER.match(line)
            if m and "=" not in line.split("]")[0]:
                self.headers.append((number, m.group(2).replace('"', "").replace(" ", "")))

    def table(self, name: str, index: int = 0, *, within: tuple[int, int] | None = None) -> int:
        """Line of the ``index``-th header ``name`` (inside ``within`` = (start, end) lines)."""
        lo, hi = within or (0, len(self.lines) + 1)
        found = [n for n, h in self.headers if h == name and lo <= n < hi]
        return found[index] if index < len(found) else 0

    def span(self, start: int) -> tuple[int, int]:
        """From a header line to the line before the next header."""
        following = [n for n, _ in self.headers if n > start]
        return start, (following[0] if following else len(self.lines) + 1)

    def node_span(self, start: int) -> tuple[int, int]:
        """From a ``[[node]]`` header to the next ``[[node]]`` (sub-tables included)."""
        following = [n for n, h in self.headers if n > start and h == "node"]
        return start, (following[0] if following else len(self.lines) + 1)

    def key(self, key: str, start: int) -> int:
        """Line of ``key = ...`` in the table whose header is at ``start`` (0: top level)."""
        lo, hi = self.span(start) if start else (0, self.headers[0][0] if self.headers else 10**9)
        pattern = re.compile(rf"^\s*\"?{re.escape(key)}\"?\s*=")
        for number in range(max(lo, 1), min(hi, len(self.lines) + 1)):
            if pattern.match(self.lines[number - 1]):
                return number
        return start


class _Parser:
    def __init__(self, path: Path, text: str, display: Path) -> None:
        self.path = path
        self.display = display
        self.base = path.parent
        self.at = _Locator(text)

    def fail(self, line: int, message: str) -> SpaceConfigError:
        return SpaceConfigError(self.display, line or None, message)

    def check_keys(self, table: Mapping[str, Any], allowed: set[str], line: int, what: str) -> None:
        for key in table:
            if key not in allowed:
                raise self.fail(
                    self.at.key(key, line),
                    f"{what}: unknown key {key!r} (allowed: {', '.join(sorted(allowed))})",
                )

    def text(self, table: Mapping[str, Any], key: str, line: int, what: str) -> str:
        value = table.get(key)
        if not isinstance(value, str) or not value.strip():
            raise self.fail(self.at.key(key, line), f"{what}.{key}: expected a non-empty string")
        return value.strip()

    def file(self, value: object, line: int, what: str) -> Path:
        if not isinstance(value, str) or not value:
            raise self.fail(line, f"{what}: expected a file path")
        path = (self.base / value).resolve()
        if not path.is_file():
            raise self.fail(line, f"{what}: no such file {value!r} (looked at {path})")
        return path

    def json_file(self, value: object, line: int, what: str) -> tuple[Path, dict[str, Any]]:
        path = self.file(value, line, what)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise self.fail(line, f"{what}: {value!r} is not valid JSON ({exc})") from exc
        if not isinstance(doc, dict):
            raise self.fail(line, f"{what}: {value!r} must hold a JSON object")
        return path, doc

    # -- tables --------------------------------------------------------------------------------
    def parse(self, doc: Mapping[str, Any]) -> SpaceConfig:
        self.check_keys(doc, {"space", "node"}, 0, "top level")
        space = doc.get("space")
        space_line = self.at.table("space")
        if not isinstance(space, dict):
            raise self.fail(space_line or 1, "a [space] table is required")
        allowed = {"name", "dir", "host", "base_port", "tls", "client_certs"}
        self.check_keys(space, allowed, space_line, "[space]")
        tls, client_certs = (
            self.flag(space, key, space_line, "space") for key in ("tls", "client_certs")
        )
        if client_certs and not tls:
            raise self.fail(
                self.at.key("client_certs", space_line), "space.client_certs needs tls = true"
            )
        name = self.text(space, "name", space_line, "space")
        directory = (
            self.text(space, "dir", space_line, "space") if "dir" in space else "space-output"
        )
        host = self.text(space, "host", space_line, "space") if "host" in space else "127.0.0.1"
        base_port = space.get("base_port", DEFAULT_BASE_PORT)
        nodes_raw = doc.get("node")
        if not isinstance(nodes_raw, list) or not nodes_raw:
            raise self.fail(space_line or 1, "the space needs [[node]] tables (one operator)")
        if (
            isinstance(base_port, bool)
            or not isinstance(base_port, int)
            or not (base_port == 0 or 1024 <= base_port <= 65535 - len(nodes_raw))
        ):
            raise self.fail(
                self.at.key("base_port", space_line),
                f"space.base_port: expected 0 (free ports) or a port in 1024..65535 with room for "
                f"{len(nodes_raw)} nodes, got {base_port!r}",
            )
        nodes: list[NodeConfig] = []
        seen: dict[str, int] = {}
        ports: dict[int, str] = {}
        operator: str | None = None
        for index, raw in enumerate(nodes_raw):
            line = self.at.table("node", index)
            node = self.node(raw, line, index)
            tls_settings = sorted(k for k in node.settings if k.startswith("tls_"))
            if tls and tls_settings:
                raise self.fail(
                    self.at.key("settings", line),
                    f"node {node.name!r}: settings.{tls_settings[0]} is set by the space "
                    "when [space] tls = true",
                )
            if node.name in seen:
                raise self.fail(
                    self.at.key("name", line),
                    f"duplicate node name {node.name!r} (first at line {seen[node.name]})",
                )
            seen[node.name] = self.at.key("name", line)
            if node.is_operator:
                if operator is not None:
                    raise self.fail(
                        self.at.key("roles", line),
                        f"node {node.name!r}: a space has exactly one operator, "
                        f"and {operator!r} is one already",
                    )
                operator = node.name
            if node.port is not None:
                if node.port in ports:
                    raise self.fail(
                        self.at.key("port", line),
                        f"node {node.name!r}: port {node.port} is also {ports[node.port]!r}'s",
                    )
                ports[node.port] = node.name
            nodes.append(node)
        if operator is None:
            raise self.fail(
                self.at.table("node", 0),
                "no node has the role 'operator': a space has exactly one operator",
            )
        return SpaceConfig(
            path=self.path,
            name=name,
            dir=(self.base / directory).resolve(),
            host=host,
            base_port=base_port,
            nodes=tuple(nodes),
            tls=tls,
            client_certs=client_certs,
        )

    def flag(self, table: Mapping[str, Any], key: str, line: int, what: str) -> bool:
        value = table.get(key, False)
        if not isinstance(value, bool):
            raise self.fail(self.at.key(key, line), f"{what}.{key}: expected true or false")
        return value

    def node(self, raw: object, line: int, index: int) -> NodeConfig:
        if not isinstance(raw, dict):
            raise self.fail(line, f"node #{index + 1}: expected a [[node]] table")
        allowed = {"name", "roles", "port", "settings", "dataset"}
        label = raw.get("name") if isinstance(raw.get("name"), str) else None
        self.check_keys(raw, allowed, line, f"node {label!r}" if label else f"node #{index + 1}")
        name = self.text(raw, "name", line, f"node #{index + 1}")
        try:
            check_participant_id(name)
        except ValidationError as exc:
            raise self.fail(self.at.key("name", line), f"node name {name!r}: {exc}") from exc
        what = f"node {name!r}"
        roles = raw.get("roles")
        roles_line = self.at.key("roles", line)
        if not isinstance(roles, list) or not roles or not all(isinstance(r, str) for r in roles):
            raise self.fail(roles_line, f"{what}: roles must be a non-empty list of strings")
        unknown = [r for r in roles if r not in ROLES]
        if unknown:
            raise self.fail(
                roles_line,
                f"{what}: unknown role {unknown[0]!r} (roles: {', '.join(sorted(ROLES))})",
            )
        if len(set(roles)) != len(roles):
            raise self.fail(roles_line, f"{what}: a role is listed twice")
        port = raw.get("port")
        if port is not None and (
            isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535
        ):
            raise self.fail(self.at.key("port", line), f"{what}: port must be 1..65535")
        settings = raw.get("settings", {})
        settings_line = self.at.key("settings", line)
        if settings_line == line:  # written as a [node.settings] table
            settings_line = (
                self.at.table("node.settings", 0, within=self.at.node_span(line)) or line
            )
        if not isinstance(settings, dict):
            raise self.fail(settings_line, f"{what}: settings must be a table")
        owned = sorted(_SPACE_OWNED_SETTINGS & set(settings))
        if owned:
            raise self.fail(
                settings_line, f"{what}: settings.{owned[0]} is set by the space, not per node"
            )
        try:
            NodeSettings(name=name, roles=list(roles), **settings)
        except PydanticValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
            raise self.fail(settings_line, f"{what}: invalid settings: {problems}") from exc
        datasets_raw = raw.get("dataset", [])
        if not isinstance(datasets_raw, list):
            raise self.fail(line, f"{what}: dataset must be an array of tables ([[node.dataset]])")
        if datasets_raw and "provider" not in roles:
            raise self.fail(
                self.at.table("node.dataset", 0, within=self.at.node_span(line)) or line,
                f"{what}: only a node with the role 'provider' publishes datasets",
            )
        datasets: list[DatasetConfig] = []
        ids: set[str] = set()
        for k, ds_raw in enumerate(datasets_raw):
            ds_line = self.at.table("node.dataset", k, within=self.at.node_span(line)) or line
            ds = self.dataset(ds_raw, ds_line, name, f"{what} dataset #{k + 1}")
            if ds.id in ids:
                raise self.fail(ds_line, f"{what}: dataset {ds.id!r} is listed twice")
            ids.add(ds.id)
            datasets.append(ds)
        return NodeConfig(
            name=name,
            roles=tuple(sorted(roles)),
            port=port,
            settings=dict(settings),
            datasets=tuple(datasets),
        )

    def dataset(self, raw: object, line: int, owner: str, what: str) -> DatasetConfig:
        if not isinstance(raw, dict):
            raise self.fail(line, f"{what}: expected a [[node.dataset]] table")
        self.check_keys(raw, {"file", "source", "offers"}, line, what)
        for key in ("file", "source", "offers"):
            if key not in raw:
                raise self.fail(line, f"{what}: missing key {key!r}")
        file_line = self.at.key("file", line)
        file, doc = self.json_file(raw["file"], file_line, f"{what}.file")
        doc.setdefault("owner", owner)
        if doc["owner"] != owner:
            raise self.fail(
                file_line,
                f"{what}: {raw['file']!r} says owner {doc['owner']!r}, but it is published by "
                f"{owner!r}",
            )
        # Offers.
        offers_line = self.at.key("offers", line)
        offer_paths = raw["offers"]
        if (
            not isinstance(offer_paths, list)
            or not offer_paths
            or not all(isinstance(p, str) for p in offer_paths)
        ):
            raise self.fail(offers_line, f"{what}.offers: a non-empty list of ODRL offer files")
        offers: list[dict[str, Any]] = []
        offer_files: list[Path] = []
        for p in offer_paths:
            path, offer = self.json_file(p, offers_line, f"{what}.offers")
            offer.setdefault("assigner", owner)
            if offer["assigner"] != owner:
                raise self.fail(
                    offers_line,
                    f"{what}.offers: {p!r} names assigner {offer['assigner']!r}, but {owner!r} "
                    "offers this dataset",
                )
            offers.append(offer)
            offer_files.append(path)
        offer_ids = [str(o.get("@id")) for o in offers]
        if len(set(offer_ids)) != len(offer_ids):
            raise self.fail(offers_line, f"{what}.offers: two offers have the same @id")
        # The dataset itself, with the grade floor checked now rather than at publish time.
        described = {k: v for k, v in doc.items() if k != "offerIds"}
        try:
            dataset = Dataset.from_json({**described, "offerIds": offer_ids})
            check_grade_floor(dataset)
        except TrustedSpaceError as exc:
            raise self.fail(file_line, f"{what}: {raw['file']}: {exc}") from exc
        for p, offer in zip(offer_paths, offers, strict=True):
            try:
                validate_offer(offer, p)
                policy = from_odrl(offer, target=dataset.id)
                check_policy_floor(policy, dataset.tier.value, dataset.max_grade)
            except TrustedSpaceError as exc:
                raise self.fail(offers_line, f"{what}.offers: {p}: {exc}") from exc
        # Source.
        source_line = self.at.key("source", line)
        source = raw["source"]
        if not isinstance(source, dict):
            raise self.fail(source_line, f"{what}.source: expected a table {{ kind, path }}")
        self.check_keys(source, {"kind", "path", "table"}, line, f"{what}.source")
        kind = source.get("kind")
        if kind not in SOURCE_KINDS:
            raise self.fail(
                source_line,
                f"{what}.source.kind: expected one of {', '.join(SOURCE_KINDS)}, got {kind!r}",
            )
        table = source.get("table")
        if kind == "sqlite" and (not isinstance(table, str) or not table):
            raise self.fail(source_line, f'{what}.source: a sqlite source needs table = "..."')
        if kind != "sqlite" and table is not None:
            raise self.fail(source_line, f"{what}.source.table: only for sqlite sources")
        data = self.file(source.get("path"), source_line, f"{what}.source.path")
        return DatasetConfig(
            file=file,
            dataset=described,
            source=SourceConfig(str(kind), data, table),
            offers=tuple(offers),
            offer_files=tuple(offer_files),
        )


def load_config(path: str | Path) -> SpaceConfig:
    """Read and validate a space config (TOML) and the dataset and offer files it names.

    Raises:
        SpaceConfigError: the first problem found, as ``FILE:LINE: message``.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpaceConfigError(path, None, f"cannot read the space config: {exc}") from exc
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"line (\d+)", str(exc))
        raise SpaceConfigError(path, int(m.group(1)) if m else None, str(exc)) from exc
    return _Parser(path.resolve(), text, path).parse(doc)


# -- processes ------------------------------------------------------------------------------------
@dataclass
class RunningNode:
    """A node of a running space: where it is, and its process (``None`` when stopped)."""

    config: NodeConfig
    dir: Path
    url: str
    process: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    @property
    def layout(self) -> NodeLayout:
        return NodeLayout(self.dir)

    @property
    def log(self) -> Path:
        return self.layout.logs / "node.log"

    def admin(self, *, timeout: float = 30.0) -> AdminClient:
        """An admin client for this node (token and TLS settings read from its directory)."""
        return AdminClient.from_dir(self.url, self.dir, timeout=timeout)

    @property
    def tls(self) -> ssl.SSLContext:
        """How this node's staff check it (its CA bundle; its certificate, for mutual TLS)."""
        return client_context(load_settings(self.dir))

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _node_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _IDENTITY_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    return env


# `python -c` rather than the console script: the same interpreter and environment as ours.
_SERVE = "import sys; from connectors.cli.main import main; sys.argv[0] = 'trusted-space'; main()"


def _spawn(node: RunningNode) -> subprocess.Popen[bytes]:
    node.layout.logs.mkdir(parents=True, exist_ok=True)
    with node.log.open("ab") as log:
        log.write(f"--- trusted-space space: starting {node.name} at {time.ctime()}\n".encode())
        log.flush()
        return subprocess.Popen(  # noqa: S603 - fixed argv: this interpreter, our own CLI
            [sys.executable, "-c", _SERVE, "node", "serve", "--dir", str(node.dir)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=node.dir,
            env=_node_env(),
            start_new_session=True,
        )


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop_processes(pids: Sequence[tuple[int, Callable[[], bool]]], timeout: float) -> None:
    """SIGTERM each process group, wait up to ``timeout`` for all, then SIGKILL the rest."""
    for pid, _ in pids:
        _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    pending = list(pids)
    while pending and time.monotonic() < deadline:
        pending = [(pid, done) for pid, done in pending if not done()]
        if pending:
            time.sleep(0.05)
    for pid, done in pending:
        _signal_group(pid, signal.SIGKILL)
        end = time.monotonic() + 5
        while not done() and time.monotonic() < end:
            time.sleep(0.05)


def _exited(process: subprocess.Popen[bytes]) -> Callable[[], bool]:
    return lambda: process.poll() is not None


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def count_steps(config: SpaceConfig) -> int:
    """How many progress steps :func:`up` reports (for a progress bar)."""
    others = len(config.nodes) - 1
    # start + healthy per node, admission per non-operator, ready per node, one per dataset
    return 3 * len(config.nodes) + others + sum(len(n.datasets) for n in config.nodes)


class RunningSpace:
    """The nodes of a space started by :func:`up`; a context manager that stops them on exit.

    Attributes:
        config: the space config.
        dir: the space directory (node directories and ``space.json``).
        nodes: node name -> :class:`RunningNode`, operator first.
    """

    def __init__(self, config: SpaceConfig, nodes: Sequence[RunningNode]) -> None:
        self.config = config
        self.dir = config.dir
        self.nodes: dict[str, RunningNode] = {n.name: n for n in nodes}

    def __enter__(self) -> RunningSpace:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    @property
    def urls(self) -> dict[str, str]:
        return {name: node.url for name, node in self.nodes.items()}

    @property
    def operator(self) -> RunningNode:
        return self.nodes[self.config.operator.name]

    def __getitem__(self, name: str) -> RunningNode:
        return self.nodes[name]

    def to_json(self) -> dict[str, Any]:
        """The content of ``space.json`` (no secrets)."""
        return {
            "name": self.config.name,
            "config": str(self.config.path),
            "dir": str(self.dir),
            "operator": self.config.operator.name,
            "nodes": [
                {
                    "name": n.name,
                    "roles": list(n.config.roles),
                    "url": n.url,
                    "dir": str(n.dir),
                    "pid": n.pid,
                    "log": str(n.log),
                }
                for n in self.nodes.values()
            ],
        }

    def save(self) -> None:
        """Write ``<space dir>/space.json`` atomically."""
        target = self.dir / SPACE_FILE
        tmp = target.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")
        tmp.replace(target)

    # -- process control -------------------------------------------------------------------------
    def start_node(self, name: str, *, timeout: float = 60.0) -> RunningNode:
        """(Re)start a stopped node and wait until it is ready (``/readyz``)."""
        node = self.nodes[name]
        if node.process is not None and node.process.poll() is None:
            return node
        node.process = _spawn(node)
        self.save()
        _wait_http(node, "/healthz", time.monotonic() + timeout)
        _wait_http(node, "/readyz", time.monotonic() + timeout)
        return node

    def add_node(
        self,
        name: str,
        roles: Sequence[str],
        *,
        datasets: Sequence[DatasetConfig] = (),
        timeout: float = 60.0,
    ) -> RunningNode:
        """Create, start and admit one more node (a new participant joining the running space).

        The node is recorded in ``space.json`` (so ``space down`` stops it) but not in the config
        file. Its port is a free one.

        Raises:
            SpaceError: as for :func:`up`; the new node's process is stopped.
            ValidationError: ``name`` or ``roles`` are not valid, or the name is taken.
        """
        if name in self.nodes:
            raise ValidationError(f"the space already has a node {name!r}")
        config = NodeConfig(
            name=check_participant_id(name), roles=tuple(sorted(roles)), datasets=tuple(datasets)
        )
        if config.is_operator:
            raise ValidationError("a space has exactly one operator")
        settings = init_node(
            self.dir / name,
            name=name,
            roles=list(config.roles),
            host=self.config.host,
            port=_free_port(self.config.host),
            operator=OperatorAnchor.load(self.operator.layout.operator),
            extra=_tls_settings(self.config),
        )
        _issue_certificate(self.config, settings)
        settings.dir.chmod(0o700)
        node = RunningNode(config, settings.dir, settings.url)
        self.nodes[name] = node
        try:
            node.process = _spawn(node)
            self.save()
            _wait_http(node, "/healthz", time.monotonic() + timeout)
            _admit_node(self.operator, node)
            _wait_http(node, "/readyz", time.monotonic() + timeout)
            _publish(node, lambda _: None)
        except BaseException:
            self.stop_node(name)
            raise
        return node

    def stop_node(self, name: str, *, timeout: float = 10.0) -> None:
        """Stop one node (SIGTERM to its process group, SIGKILL after ``timeout``)."""
        node = self.nodes[name]
        process = node.process
        if process is None:
            return
        _stop_processes([(process.pid, _exited(process))], timeout)
        node.process = None
        self.save()

    def stop(self, *, timeout: float = 10.0) -> None:
        """Stop every node of this space (all at once, then wait)."""
        running = [(n.process.pid, _exited(n.process)) for n in self.nodes.values() if n.process]
        _stop_processes(running, timeout)
        for n in self.nodes.values():
            n.process = None
        if self.dir.exists():
            self.save()


def _wait_http(node: RunningNode, path: str, deadline: float) -> None:
    """Poll ``GET node.url + path`` until it answers 200; fail early if the process exits."""
    last = "no answer"
    with httpx.Client(timeout=2.0, verify=node.tls) as http:
        while True:
            if node.process is not None and node.process.poll() is not None:
                raise SpaceError(
                    f"the process exited with status {node.process.returncode} "
                    f"before {path} answered",
                    node=node.name,
                    log_tail=node.log_tail(),
                )
            try:
                response = http.get(node.url + path)
                if response.status_code == 200:
                    return
                last = f"HTTP {response.status_code}: {response.text[:300]}"
            except httpx.HTTPError as exc:
                last = type(exc).__name__
            if time.monotonic() >= deadline:
                raise SpaceError(
                    f"{node.url}{path} did not answer 200 in time (last: {last})",
                    node=node.name,
                    log_tail=node.log_tail(),
                )
            time.sleep(0.05)


def admit(operator: AdminClient, node: AdminClient) -> dict[str, Any]:
    """Admit one node to the space: what the operator's and the node's staff would do by hand.

    1. ``GET {node}/identity``: the node's id, roles, URL, public key and ledger verifier key;
    2. the operator's ``POST /operator/participants`` issues a signed membership credential;
    3. the node's ``PUT /management/credential`` installs it (the node verifies it first).

    Returns:
        ``{"id", "roles", "url", "expiresAt"}``.

    Raises:
        RemoteError: the operator or the node refused (e.g. already a member, bad credential).
        NotReadyError: one of them cannot be reached.
    """
    identity = node.get("/identity")
    admitted = operator.post(
        "/operator/participants",
        {
            "id": identity["id"],
            "roles": identity["roles"],
            "publicKey": identity["publicKey"],
            "url": identity["url"],
            "ledgerVkey": identity["ledgerVkey"],
        },
    )
    installed = node.put("/management/credential", {"token": admitted["credential"]})
    return {
        "id": installed.get("id", identity["id"]),
        "roles": installed.get("roles", identity["roles"]),
        "url": identity["url"],
        "expiresAt": installed.get("expiresAt"),
    }


def _prepare(config: SpaceConfig) -> list[RunningNode]:
    """Create (or reuse) every node directory; the operator's first, since it is the anchor."""
    config.dir.mkdir(parents=True, exist_ok=True)
    config.dir.chmod(0o700)  # the node directories hold keys, tokens and the stores
    ordered = [config.operator, *(n for n in config.nodes if not n.is_operator)]
    index = {n.name: i for i, n in enumerate(config.nodes)}
    taken: set[int] = set()
    anchor: OperatorAnchor | None = None
    out: list[RunningNode] = []

    def free_port() -> int:
        port = _free_port(config.host)
        while port in taken:
            port = _free_port(config.host)
        return port

    for node in ordered:
        directory = config.dir / node.name
        layout = NodeLayout(directory)
        wanted = (
            node.port
            if node.port is not None
            else config.base_port + index[node.name]
            if config.base_port
            else None
        )
        if layout.config.exists():
            settings = load_settings(directory)
            if settings.name != node.name or sorted(settings.roles) != sorted(node.roles):
                raise SpaceError(
                    f"{directory} holds node {settings.name!r} with roles {settings.roles}, "
                    f"but the config says {node.name!r} with roles {list(node.roles)}; "
                    "remove the directory or fix the config",
                    node=node.name,
                )
            settings = _refresh_address(config, node.name, settings, wanted, free_port)
        else:
            settings = init_node(
                directory,
                name=node.name,
                roles=list(node.roles),
                host=config.host,
                port=free_port() if wanted is None else wanted,
                operator=anchor,
                extra={**node.settings, **_tls_settings(config)},
            )
            _issue_certificate(config, settings)
        if config.tls and not settings.tls_cert:
            raise SpaceError(
                f"{directory} was created without TLS, but the config says tls = true; "
                "remove the directory or fix the config",
                node=node.name,
            )
        if node.is_operator:
            anchor = OperatorAnchor.load(layout.operator)
            if anchor.url != settings.url:  # its address was refreshed (never started)
                anchor = dataclasses.replace(anchor, url=settings.url)
                anchor.save(layout.operator)
        elif anchor is not None and (
            not layout.operator.exists()
            or (not _ever_started(layout) and OperatorAnchor.load(layout.operator) != anchor)
        ):
            anchor.save(layout.operator)
        if settings.port in taken or not _port_free(settings.host, settings.port):
            raise SpaceError(
                f"port {settings.port} on {settings.host} is in use (by another program or "
                "an earlier `space up`: try `trusted-space space down`)",
                node=node.name,
            )
        taken.add(settings.port)
        layout.root.chmod(0o700)
        out.append(RunningNode(node, layout.root, settings.url))
    return out


def _tls_settings(config: SpaceConfig) -> dict[str, str]:
    """The ``tls_*`` settings of a new node of a TLS space (none otherwise)."""
    if not config.tls:
        return {}
    ca = str(config.dir / "tls" / "ca.pem")
    out = {"tls_cert": "tls/node.pem", "tls_key": "keys/tls.key", "tls_ca": ca}
    if config.client_certs:
        out["tls_client_ca"] = ca
    return out


def _issue_certificate(config: SpaceConfig, settings: NodeSettings) -> None:
    """Give a new node of a TLS space its certificate from the space's CA (made on first use)."""
    cert, key = settings.file(settings.tls_cert), settings.file(settings.tls_key)
    if not config.tls or cert is None or key is None:
        return
    ca_dir = config.dir / "tls"
    ca_dir.mkdir(mode=0o700, exist_ok=True)
    ca = CertificateAuthority.open(ca_dir, f"{config.name} space CA")
    ca.issue(settings.name, [settings.host], cert, key)


def _ever_started(layout: NodeLayout) -> bool:
    """Whether a node directory's node was ever started (its log is made when it is)."""
    return layout.logs.exists()


def _refresh_address(
    config: SpaceConfig,
    name: str,
    settings: NodeSettings,
    wanted: int | None,
    free_port: Callable[[], int],
) -> NodeSettings:
    """A reused node directory's settings, its host and port brought to what the config says.

    A ``space up`` that failed before its nodes started (a port in use) leaves directories
    whose ``node.toml`` holds the old ports: without this, changing ``base_port`` would repeat
    the old error until the directories were removed by hand. A node that was ever started is
    not moved (its URL is in the operator's registry and its peers'): that is refused, naming
    both ports and what to do.
    """
    if wanted is None and settings.host == config.host and _port_free(config.host, settings.port):
        return settings  # free ports asked for, and the one it has is free
    port = free_port() if wanted is None else wanted
    if (settings.host, settings.port) == (config.host, port):
        return settings
    if _ever_started(NodeLayout(settings.dir)):
        raise SpaceError(
            f"{name} in {settings.dir} was started at {settings.host}:{settings.port}, but "
            f"the config now gives it {config.host}:{port}; a node that ran keeps its "
            f"address (members and the operator know it): restore the config's port, or "
            f"remove {config.dir} to start the space afresh",
            node=name,
        )
    try:
        return update_node_config(settings.dir, host=config.host, port=port, public_url="")
    except ValidationError as exc:
        raise SpaceError(f"cannot refresh {name}'s address: {exc}", node=name) from exc


def _admit_node(operator: RunningNode, node: RunningNode) -> None:
    """Admit ``node`` unless it already holds a credential (a reused directory)."""
    with operator.admin() as op_admin, node.admin() as node_admin:
        try:
            if not node_admin.get("/identity").get("admitted"):
                admit(op_admin, node_admin)
        except (RemoteError, NotReadyError) as exc:
            raise SpaceError(
                f"admission failed: {exc}", node=node.name, log_tail=node.log_tail()
            ) from exc


def _publish(node: RunningNode, step: Callable[[str], None]) -> None:
    """Register the node's datasets that it does not hold yet."""
    if not node.config.datasets:
        return
    with node.admin() as http:
        for ds in node.config.datasets:
            try:
                if not _existing(http, ds.id):
                    http.post("/management/datasets", ds.request_body())
            except (RemoteError, NotReadyError) as exc:
                raise SpaceError(
                    f"dataset {ds.id!r} ({ds.file.name}) was refused: {exc}",
                    node=node.name,
                    log_tail=node.log_tail(),
                ) from exc
            step(f"{node.name} published {ds.id}")


def _existing(http: AdminClient, dataset_id: str) -> bool:
    try:
        http.get(f"/management/datasets/{quote(dataset_id, safe='')}")
    except RemoteError as exc:
        if exc.status == 404:
            return False
        raise
    return True


def up(
    config: SpaceConfig,
    *,
    timeout: float = 60.0,
    progress: Callable[[str], None] | None = None,
) -> RunningSpace:
    """Start the space ``config`` describes and return it running (see the module docstring).

    Args:
        config: from :func:`load_config` (tests may ``dataclasses.replace`` ``dir``/``base_port``).
        timeout: seconds to wait for the nodes to answer ``/healthz`` and then ``/readyz``.
        progress: called with a short description after each step (:func:`count_steps` of them).

    Raises:
        SpaceError: a node could not be created, started, admitted or given its datasets (or a
            node directory holds another node); every process started here has been stopped,
            and ``node``/``log_tail`` say what failed.
    """
    step = progress or (lambda _: None)
    # Resolved once, here: each node runs in its own directory, where a relative path would
    # name another place.
    config = dataclasses.replace(config, dir=config.dir.resolve())
    existing = read_space_file(config.dir) if (config.dir / SPACE_FILE).exists() else None
    if existing:
        alive = [n["name"] for n in existing.get("nodes", []) if _owned_pid(n) is not None]
        if alive:
            raise SpaceError(
                f"space {config.name!r} in {config.dir} is already running ({', '.join(alive)}); "
                "stop it first with `trusted-space space down`"
            )
    try:
        nodes = _prepare(config)
    except (ValidationError, OSError) as exc:
        raise SpaceError(f"cannot prepare the node directories: {exc}") from exc
    space = RunningSpace(config, nodes)
    operator = nodes[0]
    try:
        # Every process starts at once (a member needs only the anchor file to boot; it meets
        # the operator at admission), which halves the wait on a small machine.
        for node in nodes:
            node.process = _spawn(node)
            step(f"started {node.name}")
        space.save()
        deadline = time.monotonic() + timeout
        for node in nodes:
            _wait_http(node, "/healthz", deadline)
            step(f"{node.name} is up")
        for node in nodes[1:]:
            _admit_node(operator, node)
            step(f"admitted {node.name}")
        deadline = time.monotonic() + timeout
        for node in nodes:
            _wait_http(node, "/readyz", deadline)
            step(f"{node.name} is ready")
        for node in nodes:
            _publish(node, step)
        space.save()
    except BaseException:
        space.stop()
        raise
    return space


# -- stopping a space started by another process ------------------------------------------------
def read_space_file(space_dir: str | Path) -> dict[str, Any]:
    """Read ``<space dir>/space.json`` (:class:`SpaceError` if missing or unreadable)."""
    path = Path(space_dir) / SPACE_FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise SpaceError(f"{path}: no readable space file ({exc}); was the space started?") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("nodes"), list):
        raise SpaceError(f"{path}: not a space file")
    return doc


def _cmdline(pid: int) -> str | None:
    proc = Path(f"/proc/{pid}/cmdline")
    if proc.parent.parent.exists() and Path("/proc/self").exists():
        try:
            return proc.read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            return None
    try:
        out = subprocess.run(  # noqa: S603 - fixed argv
            ["ps", "-o", "args=", "-p", str(pid)],  # noqa: S607 - ps from PATH
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError:
        return None
    return out.stdout.strip() or None


def _owned_pid(entry: Mapping[str, Any]) -> int | None:
    """The entry's pid if that process is still the ``node serve`` of that directory."""
    pid = entry.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 1 or not _alive(pid):
        return None
    cmd = _cmdline(pid)
    if cmd is None or "node serve" not in cmd or str(entry.get("dir", "\0")) not in cmd:
        return None
    return pid


def down(space_dir: str | Path, *, timeout: float = 10.0) -> list[str]:
    """Stop the nodes recorded in ``<space dir>/space.json``; return the names stopped.

    Each node's process group gets SIGTERM (uvicorn finishes in-flight requests), then SIGKILL
    after ``timeout`` seconds. Pids are removed from ``space.json``.
    """
    doc = read_space_file(space_dir)
    targets: list[tuple[int, Callable[[], bool]]] = []
    names: list[str] = []
    for entry in doc["nodes"]:
        pid = _owned_pid(entry)
        if pid is not None:
            targets.append((pid, _gone(pid)))
            names.append(str(entry.get("name")))
        entry["pid"] = None
    _stop_processes(targets, timeout)
    path = Path(space_dir) / SPACE_FILE
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return names


def _gone(pid: int) -> Callable[[], bool]:
    return lambda: not _alive(pid) or _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[:1] == ["Z"]
