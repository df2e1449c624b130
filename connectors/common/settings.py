"""A node's settings and the layout of its directory.

A node is one directory. Everything the institution must back up, and nothing it must not leak,
lives there::

    <dir>/node.toml          the settings below (written by ``trusted-space node init``)
    <dir>/keys/node.key      the node's Ed25519 key: request tokens, agreements, checkpoints (0600)
    <dir>/keys/witness.key   operator only: the witness cosigning key (0600)
    <dir>/keys/admin.token   bearer token of the node's own staff for /management (0600)
    <dir>/operator.json      the trust anchor: operator id, key, witness vkey and URL
    <dir>/store.db           SQLite store (WAL, synchronous=FULL): catalog, policies, negotiations,
                             agreements, consents, replay cache, and the ledger itself
    <dir>/logs/node.log      when started by ``space up``
    <dir>/tls/node.pem       optional: the certificate ``node serve`` presents (``tls_cert``)
    <dir>/keys/tls.key       optional: its private key (``tls_key``, 0600)

Settings are read once, when the app is created (never at import), from ``node.toml`` and then
``TS_*`` environment variables, which win. Secrets are never settings: keys and the admin token
are files with mode 0600, so ``node.toml`` can be shared or committed.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from trusted_space.errors import ValidationError
from trusted_space.identity import ROLES, check_participant_id
from trusted_space.keys import SigningKey, VerifyKey
from trusted_space.protocols.align import OT_MIN_IDS

__all__ = [
    "CONFIG_FILE",
    "DEFAULT_DATA_CACHE_MB",
    "NodeLayout",
    "NodeSettings",
    "OperatorAnchor",
    "init_node",
    "load_settings",
    "update_node_config",
    "write_secret",
]

CONFIG_FILE = "node.toml"

log = logging.getLogger("trusted_space.node")

_N = TypeVar("_N", int, float)

DEFAULT_DATA_CACHE_MB = 1024.0
"""The column cache's bound when ``TS_DATA_CACHE_MB`` is not set (1 GiB)."""


@dataclass(frozen=True)
class NodeLayout:
    """Where each file of a node directory lives."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def node_key(self) -> Path:
        return self.root / "keys" / "node.key"

    @property
    def witness_key(self) -> Path:
        return self.root / "keys" / "witness.key"

    @property
    def admin_token(self) -> Path:
        return self.root / "keys" / "admin.token"

    @property
    def operator(self) -> Path:
        return self.root / "operator.json"

    @property
    def store(self) -> Path:
        return self.root / "store.db"

    @property
    def logs(self) -> Path:
        return self.root / "logs"


@dataclass(frozen=True)
class OperatorAnchor:
    """The trust anchor of a space: who the operator is and the keys it signs with.

    Obtained out of band at deployment (``node init --operator URL`` fetches it once and prints
    the fingerprint to compare), like a root certificate.
    """

    operator_id: str
    key: VerifyKey
    witness_vkey: str
    url: str

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.operator_id,
            "key": self.key.to_b64(),
            "witnessVkey": self.witness_vkey,
            "url": self.url,
        }

    @classmethod
    def from_json(cls, doc: Any) -> OperatorAnchor:
        if not isinstance(doc, dict) or not {"id", "key", "witnessVkey", "url"} <= set(doc):
            raise ValidationError("operator anchor needs id, key, witnessVkey and url")
        return cls(
            operator_id=check_participant_id(doc["id"]),
            key=VerifyKey.from_b64(str(doc["key"])),
            witness_vkey=str(doc["witnessVkey"]),
            url=str(doc["url"]).rstrip("/"),
        )

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> OperatorAnchor:
        try:
            return cls.from_json(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError) as exc:
            raise ValidationError(f"{path}: cannot read the operator anchor ({exc})") from exc


class NodeSettings(BaseSettings):
    """One node's settings (``<dir>/node.toml``, overridden by ``TS_*`` environment variables).

    Attributes:
        name: participant id, e.g. ``tax-bureau`` (lower case, digits, ``.``, ``-``).
        roles: any of ``operator``, ``provider``, ``consumer``.
        dir: the node directory (set by the loader, not by the file).
        host / port: where ``node serve`` listens.
        public_url: how other nodes reach this one (default ``http://host:port``).
        store_url: ``sqlite:///path`` (default: ``<dir>/store.db``) or ``memory:`` (tests).
        ledger_origin: the C2SP origin line of this node's ledger (default ``<name>/ledger``).
        max_body_bytes: largest request body accepted on ordinary routes.
        max_compute_body_bytes: largest body on ``/compute`` routes (ciphertext batches).
        request_timeout: seconds for node-to-node calls.
        witness_interval: seconds between checkpoint submissions to the operator's witness
            (default 60; 0 disables the background loop; the CLI and tests can trigger it).
        witness_silence: operator only: seconds without a submission after which a member's
            log is flagged ``not-submitting`` (in ``GET /operator/witness/logs`` and as a
            ``witness.silent`` event on the operator's ledger).
        log_level: ``debug`` … ``error``.
        log_format: ``text`` (default) or ``json``: one JSON object per line with the request
            id (:mod:`connectors.common.logs`).
        data_cache_mb: ``TS_DATA_CACHE_MB``, the bound of the node's column cache in MiB (``0``
            disables it; see :attr:`data_cache_bytes`).
        ckks_workers: ``TS_CKKS_WORKERS``, worker processes of a provider's CKKS session (one
            pool per query; at most the host's cores; default 1: in-process).
        psi_workers: ``TS_PSI_WORKERS``, worker processes for a provider's PSI scalar
            multiplications, shared by the node's queries (default 1: in-process).
        psi_ot_min_ids: ``TS_PSI_OT_MIN_IDS``, the analyst's declared number of ids from which
            this provider aligns by OT-extension PSI rather than ECDH when the analyst names no
            method (default :data:`trusted_space.protocols.align.OT_MIN_IDS`).
        tls_cert / tls_key: PEM certificate chain and private key: ``node serve`` speaks HTTPS
            (and :attr:`url` defaults to ``https://``); the node also presents this certificate
            to peers that require client certificates. Relative paths are in the node directory.
        tls_client_ca: mutual TLS: clients must present a certificate issued by this CA (PEM).
        tls_ca: the CA bundle (PEM) this node trusts for ``https`` peers (default: the system's
            trust store).
        score_key_rotation: ``TS_SCORE_KEY_ROTATION``, seconds a standing scoring session
            keeps its keys (Paillier pair, CKKS context) before fresh ones replace them
            (default 3600; staff rotate at once with ``POST /management/score/sessions/rotate``).
        score_runs_in_flight: ``TS_SCORE_RUNS_IN_FLIGHT``, protocol runs a standing scoring
            session keeps in flight at once (default 1: requests that arrive meanwhile wait and
            share the next run, the fewest runs for the load; 2 or more trade CPU for latency
            on an idle host).
        score_linger: ``TS_SCORE_LINGER``, seconds a session waits after a run, at most, for
            the requests it just answered to come back before it starts the next run (default
            0.05; 0: start at once). A loan system that asks again as soon as it is answered
            then shares runs instead of splitting into two alternating halves; a request that
            finds the expected requests already back, or a session that answered nobody,
            does not wait.

    The three tuning settings are lenient, as they were when read from the environment by the
    code that used them: a value that is not a number is logged and the default used, so a typo
    slows a node down rather than stopping it.
    """

    model_config = SettingsConfigDict(env_prefix="TS_", extra="forbid")

    name: str
    roles: list[str]
    dir: Path = Path()
    host: str = "127.0.0.1"
    port: int = Field(default=8700, ge=0, le=65535)
    public_url: str = ""
    store_url: str = ""
    ledger_origin: str = ""
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    max_compute_body_bytes: int = Field(default=256 * 1024 * 1024, ge=1024)
    request_timeout: float = Field(default=300.0, gt=0)
    witness_interval: float = Field(default=60.0, ge=0)
    witness_silence: float = Field(default=300.0, gt=0)
    log_level: str = "info"
    log_format: str = "text"
    data_cache_mb: float = DEFAULT_DATA_CACHE_MB
    ckks_workers: int = 1
    psi_workers: int = 1
    psi_ot_min_ids: int = Field(default=OT_MIN_IDS, ge=1)
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    tls_ca: str = ""
    score_key_rotation: float = Field(default=3600.0, gt=0)
    score_runs_in_flight: int = Field(default=1, ge=1, le=8)
    score_linger: float = Field(default=0.05, ge=0, le=1)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        try:
            return check_participant_id(value)
        except ValidationError as exc:
            raise ValueError(str(exc)) from exc

    @field_validator("roles")
    @classmethod
    def _roles(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - ROLES)
        if unknown or not value:
            raise ValueError(f"roles must be a non-empty subset of {sorted(ROLES)}, not {value}")
        return sorted(set(value))

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        if value.lower() not in {"debug", "info", "warning", "error"}:
            raise ValueError("log_level must be debug, info, warning or error")
        return value.lower()

    @field_validator("log_format")
    @classmethod
    def _log_format(cls, value: str) -> str:
        if value.lower() not in {"text", "json"}:
            raise ValueError("log_format must be text or json")
        return value.lower()

    @field_validator("data_cache_mb", mode="before")
    @classmethod
    def _cache_mb(cls, value: Any) -> float:
        return _lenient(value, float, "data_cache_mb", DEFAULT_DATA_CACHE_MB)

    @field_validator("ckks_workers", "psi_workers", mode="before")
    @classmethod
    def _workers(cls, value: Any, info: ValidationInfo) -> int:
        return _lenient(value, int, str(info.field_name), 1)

    @model_validator(mode="after")
    def _tls(self) -> NodeSettings:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key go together: give both or neither")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("tls_client_ca (client certificates) needs tls_cert and tls_key")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings)

    # -- derived --------------------------------------------------------------------------------
    @property
    def layout(self) -> NodeLayout:
        return NodeLayout(self.dir)

    @property
    def url(self) -> str:
        """The URL other nodes use for this one."""
        scheme = "https" if self.tls_cert else "http"
        return (self.public_url or f"{scheme}://{self.host}:{self.port}").rstrip("/")

    @property
    def store(self) -> str:
        return self.store_url or f"sqlite:///{self.layout.store}"

    @property
    def origin(self) -> str:
        return self.ledger_origin or f"{self.name}/ledger"

    @property
    def data_cache_bytes(self) -> int:
        """The column cache's bound in bytes (``0``: no cache, every lookup streams)."""
        return max(0, int(self.data_cache_mb * (1 << 20)))

    def has_role(self, role: str) -> bool:
        return role in self.roles

    def file(self, value: str) -> Path | None:
        """A path setting (e.g. ``tls_cert``) made absolute (relative to the node directory)."""
        return (self.dir / value).resolve() if value else None


def _lenient(value: Any, kind: type[_N], name: str, default: _N) -> _N:
    """``value`` as a ``kind``; blank is the default, and so is garbage (with a warning)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    try:
        return kind(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        log.warning("TS_%s=%r is not a number; using %r", name.upper(), value, default)
        return default


def load_settings(directory: str | Path, **overrides: Any) -> NodeSettings:
    """Read ``<directory>/node.toml`` (then ``TS_*`` variables, then ``overrides``).

    Raises:
        ValidationError: the directory has no readable config, or a setting is invalid (the
            message names the setting).
    """
    root = Path(directory).resolve()
    path = NodeLayout(root).config
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValidationError(
            f"{path}: no node config here (run `trusted-space node init`)"
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ValidationError(f"{path}: {exc}") from exc
    # Environment variables must win over the file, so the file is passed as defaults beneath
    # them: values the environment does not set are filled from the file.
    env_keys = {k[3:].lower() for k in os.environ if k.startswith("TS_")}
    values = {k: v for k, v in doc.items() if k not in env_keys}
    values.update(overrides)
    values["dir"] = root
    try:
        return NodeSettings(**values)
    except Exception as exc:  # pydantic's ValidationError names each field
        raise ValidationError(f"{path}: {exc}") from exc


def write_secret(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 and write ``data`` (keys, tokens)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.chmod(path, 0o600)


def _toml_value(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def init_node(
    directory: str | Path,
    *,
    name: str,
    roles: list[str],
    host: str = "127.0.0.1",
    port: int = 8700,
    public_url: str = "",
    operator: OperatorAnchor | None = None,
    extra: dict[str, Any] | None = None,
) -> NodeSettings:
    """Create a node directory: config, fresh keys (0600), admin token, trust anchor.

    An operator node is its own trust anchor (written here); any other node needs ``operator``
    (fetched from the operator's ``/operator/identity`` by the CLI) before it can verify members.

    Raises:
        ValidationError: the directory already holds a node, or a setting is invalid.
    """
    layout = NodeLayout(Path(directory).resolve())
    if layout.config.exists():
        raise ValidationError(f"{layout.config} exists: this directory already holds a node")
    values: dict[str, Any] = {"name": name, "roles": roles, "host": host, "port": port}
    if public_url:
        values["public_url"] = public_url
    values.update(extra or {})
    settings = NodeSettings(dir=layout.root, **values)  # validates before anything is written
    layout.root.mkdir(parents=True, exist_ok=True)
    key = SigningKey.generate()
    key.save(layout.node_key)
    write_secret(layout.admin_token, secrets.token_urlsafe(32).encode())
    if settings.has_role("operator"):
        from trusted_space.ledger import Witness
        from trusted_space.store import MemoryStore

        witness_key = SigningKey.generate()
        witness_key.save(layout.witness_key)
        vkey = Witness(MemoryStore(), witness_key, f"{settings.name}/witness").vkey
        OperatorAnchor(settings.name, key.verify_key, vkey, settings.url).save(layout.operator)
    elif operator is not None:
        operator.save(layout.operator)
    lines = ["# trusted-space node settings (secrets live in keys/, mode 0600)"]
    for field_name in (
        "name",
        "roles",
        "host",
        "port",
        *sorted(set(values) - {"name", "roles", "host", "port"}),
    ):
        lines.append(f"{field_name} = {_toml_value(values[field_name])}")
    layout.config.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return settings


def update_node_config(directory: str | Path, **values: Any) -> NodeSettings:
    """Set ``values`` in ``<directory>/node.toml`` (other lines kept) and return the settings.

    Raises:
        ValidationError: no node there, or a value is invalid (nothing is written then).
    """
    layout = NodeLayout(Path(directory).resolve())
    try:
        lines = layout.config.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ValidationError(f"{layout.config}: cannot read ({exc})") from exc
    left = dict(values)
    out = []
    for line in lines:
        name = line.split("=", 1)[0].strip() if "=" in line and not line.startswith("#") else ""
        if name in left:
            out.append(f"{name} = {_toml_value(left.pop(name))}")
        else:
            out.append(line)
    out.extend(f"{name} = {_toml_value(value)}" for name, value in left.items())
    current = load_settings(layout.root)
    NodeSettings(  # validates before anything is written
        **{**current.model_dump(), **values}
    )
    layout.config.write_text("\n".join(out) + "\n", encoding="utf-8")
    return load_settings(layout.root)
