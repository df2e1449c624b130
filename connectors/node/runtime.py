"""One running node: the core's services wired to this node's store, keys and trust anchor.

:class:`NodeRuntime` is what every router receives (``deps.RuntimeDep``). It owns:

- ``store``: the node's durable store (SQLite by default), shared by every service;
- ``key``: the node's Ed25519 key (request tokens, agreements, checkpoints);
- ``ledger``: the node's Merkle log with signed checkpoints;
- ``directory`` / ``verifier``: known members and the request-token check (``None`` until the
  node has an operator anchor);
- ``negotiator``: this participant's side of every contract negotiation;
- ``consents``: data-subject authorisations held here;
- ``authority`` and ``witness``: operator only — admission/revocation and checkpoint cosigning;
- ``client``: the signed HTTP client for calls to other nodes (``tls``: how it checks ``https``
  peers and the certificate it presents, :func:`connectors.common.tls.client_context`);
- ``peers``: participant id → URL, learned from the operator's participant registry;
- its long-lived **services** (:meth:`NodeRuntime.service`): the compute node, the query runner
  and the negotiation worker, one of each per runtime, built on first use by their own modules and
  gone with the runtime (no module-level registry keyed by runtime).

Authentication of member calls happens in :meth:`NodeRuntime.authenticate`: the replay-cache
insert commits in its own transaction *before* any handler runs (a handler failure does not free
the ``jti``), without waiting for the disk: the handler's own durable commit carries it there
(decision 58); and a refusal is written to the ledger with its real reason in a fresh transaction,
while the caller gets the same ``401`` whatever the reason.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final, TypeVar, cast

import httpx

from connectors.client.http import SignedClient
from connectors.common.settings import NodeSettings, OperatorAnchor
from connectors.common.tls import client_context
from trusted_space.catalog import load_dataset
from trusted_space.consent import ConsentRegistry
from trusted_space.contracts import Negotiator
from trusted_space.errors import NotFoundError, NotReadyError, ValidationError, VerificationError
from trusted_space.identity import (
    MAX_TOKEN_LENGTH,
    MemberDirectory,
    OperatorAuthority,
    VerifiedRequest,
    Verifier,
    check_participant_id,
    record_refusal,
)
from trusted_space.keys import SigningKey, VerifyKey
from trusted_space.ledger import Ledger, Witness
from trusted_space.store import Store, open_store

__all__ = ["PEER_NAMESPACE", "NodeRuntime"]

log = logging.getLogger("trusted_space.node")

PEER_NAMESPACE = "peer"
_LEARNED_CREDENTIALS: Final = 1024
"""Credential tokens a node remembers having stored (the oldest forgotten first)."""
_REMEMBER_SECONDS: Final = 10.0
"""How long a peer's URL and this node's own credential are used from memory before the store
is read again (a write through this runtime replaces them at once)."""

_S = TypeVar("_S")


def _utcnow() -> datetime:
    return datetime.now(UTC)


class NodeRuntime:
    """A node's services, built once at start-up from its settings.

    Args:
        settings: the node's settings.
        store: an already opened store (tests); default: open ``settings.store``.
        transport: httpx transport for outgoing calls (tests pass an in-process one).
        clock: the node's clock (tests inject one).
    """

    def __init__(
        self,
        settings: NodeSettings,
        *,
        store: Store | None = None,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.settings = settings
        self.id = settings.name
        self.roles = frozenset(settings.roles)
        self.clock = clock
        self.transport = transport  # plain (unsigned) calls reuse it, e.g. pushes to peers
        self.tls = client_context(settings)  # how https peers are checked; plain calls too
        layout = settings.layout
        self.key = SigningKey.load(layout.node_key)
        self.admin_token = layout.admin_token.read_text(encoding="utf-8").strip()
        self.store = store if store is not None else open_store(settings.store)
        self.ledger = Ledger(self.store, self.key, settings.origin)
        self.anchor: OperatorAnchor | None = (
            OperatorAnchor.load(layout.operator) if layout.operator.exists() else None
        )
        self.authority: OperatorAuthority | None = None
        self.witness: Witness | None = None
        self.directory: MemberDirectory | None = None
        self.verifier: Verifier | None = None
        self.consents: ConsentRegistry | None = None
        if self.is_operator:
            self.authority = OperatorAuthority(self.id, self.key)
            self.witness = Witness(
                self.store, SigningKey.load(layout.witness_key), f"{self.id}/witness"
            )
        if self.anchor is not None:
            self.directory = (
                self.authority.directory
                if self.authority is not None
                else MemberDirectory(self.anchor.operator_id, self.anchor.key)
            )
            self.verifier = Verifier(self.id, self.directory)
            self.consents = ConsentRegistry(self.anchor.operator_id, self.anchor.key)
        self.negotiator = Negotiator(
            self.id,
            self.store,
            self.key,
            self.resolve_key,
            callback_address=settings.url,
            offer_check=self._offer_check,
            clock=clock,
        )
        self.client = SignedClient(
            self.id,
            self.key,
            self.credential_token,
            timeout=settings.request_timeout,
            transport=transport,
            clock=clock,
            verify=self.tls,
        )
        self._services: dict[type[Any], Any] = {}
        self._services_lock = threading.RLock()
        # Credentials already verified and stored: a member sends the same one with every
        # request, and storing it again would cost a verification and a commit each time.
        self._learned: OrderedDict[str, None] = OrderedDict()
        self._learned_lock = threading.Lock()
        # Every signed call reads the peer's URL and this node's own credential; a served run
        # makes 14-22 calls, so each would be two store transactions per call. Kept for
        # _REMEMBER_SECONDS (monotonic), replaced by the writes below.
        self._peer_urls: dict[str, tuple[float, str]] = {}
        self._own_token: tuple[float, str | None] | None = None
        if self.is_operator:
            self._admit_self()

    # -- roles ----------------------------------------------------------------------------------
    @property
    def is_operator(self) -> bool:
        return "operator" in self.roles

    @property
    def url(self) -> str:
        return self.settings.url

    def close(self) -> None:
        self.client.close()
        self.store.close()

    # -- services -------------------------------------------------------------------------------
    def service(self, kind: type[_S], build: Callable[[NodeRuntime], _S]) -> _S:
        """This runtime's one ``kind`` service, built by ``build(self)`` on first use.

        The modules that own a service (:func:`connectors.node.compute.compute_node`,
        :func:`connectors.node.queries.runner_for`, :func:`connectors.node.negotiation.worker_for`)
        call this; the runtime keeps the service as long as it lives, typed by its class.
        """
        with self._services_lock:
            found = self._services.get(kind)
            if found is None:
                found = build(self)
                self._services[kind] = found
            return cast(_S, found)

    def existing_service(self, kind: type[_S]) -> _S | None:
        """The ``kind`` service if it was built (never builds one)."""
        with self._services_lock:
            return cast(_S | None, self._services.get(kind))

    def drop_service(self, kind: type[_S]) -> _S | None:
        """Forget the ``kind`` service and return it (to shut it down), if it was built."""
        with self._services_lock:
            return cast(_S | None, self._services.pop(kind, None))

    # -- identity -------------------------------------------------------------------------------
    def _admit_self(self) -> None:
        """The operator is a member of its own space: it issues itself a credential once."""
        assert self.authority is not None
        with self.store.transaction() as tx:
            try:
                self.authority.directory.get(tx, self.id)
                return
            except NotFoundError:
                pass
            self.authority.issue(tx, self.id, self.roles, self.key.verify_key, now=self.clock())
            tx.put(PEER_NAMESPACE, self.id, {"url": self.url, "roles": sorted(self.roles)})

    def require_directory(self) -> MemberDirectory:
        if self.directory is None:
            raise NotReadyError(f"{self.id} has no operator anchor yet: it is not part of a space")
        return self.directory

    def credential_token(self) -> str | None:
        """This node's own membership credential, once admitted (read at most every 10 s)."""
        if self.directory is None:
            return None
        now = time.monotonic()
        kept = self._own_token
        if kept is not None and now - kept[0] < _REMEMBER_SECONDS:
            return kept[1]
        with self.store.transaction(readonly=True) as tx:
            doc = tx.get("member", self.id)
        token = None if doc is None else str(doc.body["token"])
        self._own_token = (now, token) if token is not None else None
        return token

    def install_credential(self, token: str) -> None:
        """Store this node's own credential (from the operator's admission); verified first.

        Raises:
            VerificationError: it does not verify against the operator's key.
            ValidationError: it names another participant or another key.
        """
        directory = self.require_directory()
        with self.store.transaction() as tx:
            credential = directory.add(tx, token, now=self.clock())
            if credential.participant_id != self.id:
                raise ValidationError(f"the credential is for {credential.participant_id!r}")
            if credential.public_key.to_b64() != self.key.verify_key.to_b64():
                raise ValidationError("the credential names another public key than this node's")
        self._own_token = None

    def resolve_key(self, participant_id: str) -> VerifyKey:
        """A member's verify key, from its stored (verified) credential."""
        directory = self.require_directory()
        with self.store.transaction(readonly=True) as tx:
            return directory.get(tx, participant_id).public_key

    def authenticate(
        self,
        *,
        token: str | None,
        credential: str | None,
        body: bytes,
        method: str,
        path: str,
    ) -> VerifiedRequest:
        """Verify a member's signed request; raise the one :class:`VerificationError` on failure.

        ``credential`` (the ``TS-Credential`` header) is verified against the operator's key and
        stored when it is newer than the one known; it never bypasses any check of the token.
        """
        now = self.clock()
        directory = self.directory
        verifier = self.verifier
        try:
            if directory is None or verifier is None:
                raise VerificationError("no-operator-anchor")
            if not token or len(token) > MAX_TOKEN_LENGTH:
                raise VerificationError("missing-token")
            if credential and len(credential) <= MAX_TOKEN_LENGTH:
                self._learn_credential(directory, credential, now)
            # The token's id is consumed without waiting for the disk: the request's own durable
            # work commits after it, and that flush carries it (decision 58).
            with self.store.transaction(durable=False) as tx:
                return verifier.verify_request(
                    tx, token, body=body, method=method, path=path, now=now
                )
        except VerificationError as exc:
            with self.store.transaction() as tx:
                record_refusal(
                    tx, exc, token=token, audience=self.id, method=method, path=path, now=now
                )
            log.info("refused %s %s: %s", method, path[:200], exc.reason)
            raise

    def _learn_credential(self, directory: MemberDirectory, token: str, now: datetime) -> None:
        """Store a member's credential once; the same token again is already known.

        Skipping a known token skips nothing that protects: the request's own verification
        still checks the stored credential's window and its revocation every time.
        """
        with self._learned_lock:
            if token in self._learned:
                self._learned.move_to_end(token)
                return
        try:
            with self.store.transaction() as tx:
                directory.add(tx, token, now=now)
        except VerificationError as exc:
            if exc.reason != "credential-superseded":
                raise
            return
        with self._learned_lock:
            self._learned[token] = None
            while len(self._learned) > _LEARNED_CREDENTIALS:
                self._learned.popitem(last=False)

    # -- peers ----------------------------------------------------------------------------------
    def remember_peer(self, participant_id: str, url: str, roles: list[str] | None = None) -> None:
        with self.store.transaction() as tx:
            tx.put(PEER_NAMESPACE, participant_id, {"url": url.rstrip("/"), "roles": roles or []})
        self._peer_urls[participant_id] = (time.monotonic(), url.rstrip("/"))

    def forget_peer(self, participant_id: str) -> None:
        """Read ``participant_id``'s URL from the store next time (after a write elsewhere)."""
        self._peer_urls.pop(participant_id, None)

    def peer_url(self, participant_id: str) -> str:
        """Where a member is reached: the local registry, else the operator's, then cached.

        Raises:
            NotReadyError: unknown here and no operator to ask, or the operator is unreachable.
            RemoteError: the operator refused to say (``404``: it knows no such member).
            ValidationError: not a participant id (it would otherwise end up in a URL).
        """
        check_participant_id(participant_id)
        if participant_id == self.id:
            return self.url
        now = time.monotonic()
        kept = self._peer_urls.get(participant_id)
        if kept is not None and now - kept[0] < _REMEMBER_SECONDS:
            return kept[1]
        with self.store.transaction(readonly=True) as tx:
            doc = tx.get(PEER_NAMESPACE, participant_id)
        if doc is not None:
            url = str(doc.body["url"])
            self._peer_urls[participant_id] = (now, url)
            return url
        if self.anchor is None:
            raise NotReadyError(f"no URL known for {participant_id!r} and no operator to ask")
        if participant_id == self.anchor.operator_id:
            return self.anchor.url
        info = self.client.get_json(
            f"{self.anchor.url}/operator/participants/{participant_id}",
            audience=self.anchor.operator_id,
        )
        url = str(info["url"])
        self.remember_peer(participant_id, url, list(info.get("roles", [])))
        return url

    # -- hooks into the core ----------------------------------------------------------------
    def _offer_check(self, offer: Mapping[str, Any]) -> None:
        """A consumer may only request an offer this provider published for that dataset.

        Raises:
            ValidationError: unknown dataset, or an offer that differs from every published one
                (a consumer cannot write its own terms).
        """
        target = str(offer.get("target", ""))
        with self.store.transaction(readonly=True) as tx:
            try:
                published = load_dataset(tx, target)
            except NotFoundError as exc:
                raise ValidationError(f"offer.target: no dataset {target!r} here") from exc
        requested = {k: v for k, v in offer.items() if k != "target"}
        for candidate in published.offers:
            if dict(candidate) == requested:
                return
        raise ValidationError(
            f"offer {offer.get('@id')!r} is not an offer published for dataset {target!r}"
        )

    def transaction(self, *, readonly: bool = False, durable: bool = True) -> Any:
        """Shorthand for ``self.store.transaction``."""
        return self.store.transaction(readonly=readonly, durable=durable)
