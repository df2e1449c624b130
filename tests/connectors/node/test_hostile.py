"""Hostile messages at a node's edge: forged, replayed and re-targeted requests, and malformed
ciphertexts and shares inside real joint queries.

**Authentication.** Every way a request can fail to be a member's fresh, signed request for this
node — replayed, expired, addressed to another node, body changed after signing, unsigned,
``alg: none``, HS256 keyed with the sender's public key, a stranger, a revoked member — is
refused with one answer, byte for byte the same (status, body, the headers that matter), so a
caller learns nothing about which check failed; the node's ledger keeps the real reason
(``auth.refused``), in order.

**Compute messages.** The messages of real queries (scores under Paillier, CKKS and additive
sharing; PSI-aligned aggregates under Paillier and additive sharing) are intercepted on their way
between the in-process nodes (:class:`HostileTransport`). Just before one is delivered, hostile
variants of it are sent to its receiver, so they meet the very state the real message expects:

- *frame* variants (truncated inside the header, a header that is not UTF-8, a body over the
  node's compute limit) never reach an operation: 400 / 413;
- *payload* variants reach it: truncated, the payload repeated, garbled bytes, and the payload
  of another query (another Paillier key, CKKS context, triple or PSI session). The first two
  are refused (4xx). The last two are well-formed and may carry numbers nobody can tell from
  right ones (a masked share, another valid public key): they may be accepted — a member
  deviating from the protocol is outside the semi-honest model (docs/threat-model.md) — but
  never answered with a 5xx, never hanging (pytest-timeout).

Sent as the real sender, a refused payload may end the session (fail closed: the query then fails
with a 4xx, and the nodes serve the next query correctly), so each run sends one payload variant
per operation (all four per operation under the ``thorough`` hypothesis profile, one in rotation
otherwise). Sent by *another* member, exact copies and every variant leave the query untouched:
it finishes with the right answer, and the only calls accepted open sessions of that member's own.
With ``$TS_HOSTILE_REPORT`` set, the figures of the run are written there (the threat model quotes
them).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import numpy as np
import pytest

from connectors.client.http import REQUEST_HEADER, SignedClient
from connectors.node.compute import COMPUTE_CONTENT_TYPE
from tests._seeding import rng_for
from tests.connectors._space import InProcessSpace, Node, RoutingTransport, stop_negotiations
from tests.connectors.node._joint import negotiate_features, publish_table, write_table
from trusted_space.events import canonical_json, decode_event
from trusted_space.identity import REQUEST_TYP
from trusted_space.keys import SigningKey, b64url_decode, b64url_encode
from trusted_space.protocols.train import train_plaintext
from trusted_space.queries.score import Model
from trusted_space.queries.train import TrainParams

PURPOSE = "credit-review"
N = 16
LIMIT = 12 * 1024 * 1024  # the compute body limit of this space's nodes (default: 256 MiB)
COLUMNS = {"bank-a": ["loans"], "tax-bureau": ["tax_paid", "employees"], "court": ["cases"]}
WEIGHTS = {"bank-a": {"loans": 0.5}, "tax-bureau": {"tax_paid": -0.75, "employees": 0.25}}
TRAIN = TrainParams(epochs=2, batch_size=8, learning_rate=0.3)
INTERCEPT = 0.2


def _claims(token: str) -> dict[str, Any]:
    """The unverified claims of a token (test-side: to learn who sent an intercepted message)."""
    payload: dict[str, Any] = json.loads(b64url_decode(token.split(".")[1]))
    return payload


# -- hostile variants of a compute frame ------------------------------------------------------


# Variants that never reach an operation (the frame or the body size is wrong) ...
FRAME = ("truncated-frame", "garbled-header", "over-limit")
# ... and variants that do: a refused one may end the session (fail closed), so each run sends
# at most one of these, after the frame variants, to the state the real message expects.
PAYLOAD = ("truncated-payload", "repeated-payload", "garbled-payload", "other-query-payload")
# Refused for sure (4xx); the others carry well-formed wrong numbers and may be accepted.
STRICT = (*FRAME, "truncated-payload", "repeated-payload")
ALL = FRAME + PAYLOAD


def _split(body: bytes) -> tuple[bytes, bytes]:
    length = struct.unpack(">I", body[4:8])[0]
    return body[: 8 + length], body[8 + length :]


def _variants(body: bytes, donor: bytes | None, kinds: tuple[str, ...]) -> dict[str, bytes]:
    head, payload = _split(body)
    rng = rng_for(f"{__name__}._variants/{len(body)}")
    out: dict[str, bytes] = {}
    for kind in kinds:
        if kind == "truncated-frame":
            out[kind] = head[: 8 + (len(head) - 8) // 2]
        elif kind == "truncated-payload" and len(payload) > 1:
            out[kind] = head + payload[: len(payload) // 2]
        elif kind == "garbled-header":
            raw = bytearray(head)
            raw[8 + (len(head) - 8) // 2] = 0xFF  # never UTF-8
            out[kind] = bytes(raw) + payload
        elif kind == "repeated-payload" and payload:
            out[kind] = head + payload * 3 + b"\x00junk"
        elif kind == "over-limit":
            out[kind] = head + payload + b"\x00" * (LIMIT + 1 - len(body))
        elif kind == "garbled-payload" and payload:
            raw = bytearray(payload)
            for i in rng.choice(len(raw), size=min(16, len(raw)), replace=False):
                raw[int(i)] ^= 0xFF
            out[kind] = head + bytes(raw)
        elif kind == "other-query-payload" and donor is not None and _split(donor)[1]:
            out[kind] = head + _split(donor)[1]
        elif kind == "copy":
            out[kind] = body
    return out


@dataclass
class Outcome:
    sender: str
    receiver: str
    operation: str
    kind: str
    status: int
    seconds: float
    detail: str = ""


class HostileTransport(RoutingTransport):
    """Routes requests between the in-process nodes; on the way, records compute messages and,
    when armed, sends the receiver hostile variants of each (as its sender) before delivering it.

    ``only``: arm for this operation only (one per run for the lenient kinds, which may be
    accepted and so change the session's state). Each (sender, receiver, operation) is attacked
    once per run; the hostile messages carry ``X-Hostile`` and are not attacked themselves.
    """

    def __init__(self) -> None:
        super().__init__()
        self.nodes: dict[str, Node] = {}
        self.kinds: tuple[str, ...] = ()
        self.only: str | None = None
        self.as_member: str | None = None
        self.donors: dict[str, bytes] = {}
        self.recorded: dict[str, bytes] = {}
        self.outcomes: list[Outcome] = []
        self.seen: set[tuple[str, str, str]] = set()
        self.lock = threading.Lock()
        self.idle = threading.Condition(self.lock)
        self.inflight = 0

    def arm(
        self, kinds: tuple[str, ...] = (), only: str | None = None, as_member: str | None = None
    ) -> list[Outcome]:
        """Start a run: attack with ``kinds`` (as the real sender, or as ``as_member``); returns
        the list this run's outcomes go to."""
        with self.lock:
            self.kinds, self.only, self.as_member, self.seen = kinds, only, as_member, set()
            self.recorded, self.outcomes = {}, []
            return self.outcomes

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.startswith("/compute/") and "x-hostile" not in request.headers:
            operation = path.removeprefix("/compute/")
            body = request.read()
            claims = _claims(request.headers[REQUEST_HEADER])
            key = (claims["iss"], claims["aud"], operation)
            with self.lock:
                self.recorded.setdefault(operation, body)
                attack = bool(self.kinds) and key not in self.seen
                attack = attack and self.only in (None, operation)
                self.seen.add(key)
                outcomes = self.outcomes
                self.inflight += attack
            if attack:
                try:
                    url = str(request.url)
                    outcomes += self._attack(claims["iss"], claims["aud"], operation, url, body)
                finally:
                    with self.lock:
                        self.inflight -= 1
                        self.idle.notify_all()
        return super().handle_request(request)

    def settle(self, timeout: float = 60.0) -> None:
        """Wait until no attack is in flight (a failed query may end before its last one)."""
        with self.lock:
            assert self.idle.wait_for(lambda: self.inflight == 0, timeout)

    def _attack(
        self, sender: str, receiver: str, operation: str, url: str, body: bytes
    ) -> list[Outcome]:
        sender = self.as_member or sender
        client = self.nodes[sender].runtime.client
        donor = self.donors.get(operation)
        out = []
        for kind, hostile in _variants(body, donor, self.kinds).items():
            started = time.monotonic()
            response = client.request(
                "POST",
                url,
                audience=receiver,
                content=hostile,
                content_type=COMPUTE_CONTENT_TYPE,
                headers={"X-Hostile": kind},
                check=False,
            )
            elapsed = time.monotonic() - started
            detail = ""
            if response.headers.get("content-type", "").startswith("application/problem+json"):
                detail = str(response.json().get("detail", ""))
            out.append(
                Outcome(sender, receiver, operation, kind, response.status_code, elapsed, detail)
            )
        return out


class HostileSpace(InProcessSpace):
    """An in-process space whose nodes all talk through one :class:`HostileTransport`."""

    def __init__(self, root: Path, **kwargs: Any) -> None:
        self.hostile = HostileTransport()
        super().__init__(root, **kwargs)
        self.hostile.nodes = self.nodes

    @property  # type: ignore[override]
    def transport(self) -> HostileTransport:
        return self.hostile

    @transport.setter
    def transport(self, _: RoutingTransport) -> None:
        pass  # the base class makes a plain one; every node gets ours instead


# -- the space -----------------------------------------------------------------------------------


@dataclass
class Hostile:
    space: InProcessSpace
    transport: HostileTransport
    nodes: dict[str, Node]
    ids: list[str]
    values: dict[str, np.ndarray[Any, Any]]
    label: np.ndarray[Any, Any]
    agreements: dict[str, str]

    @property
    def agreement(self) -> str:
        return self.agreements["tax-bureau"]

    @property
    def bank(self) -> Node:
        return self.nodes["bank-a"]

    def plaintext(self) -> np.ndarray[Any, Any]:
        z = np.full(len(self.ids), INTERCEPT)
        for party, weights in WEIGHTS.items():  # court's column is in no score
            z = z + self.values[party] @ np.array(list(weights.values()))
        return z

    def score_doc(self, protocol: str) -> dict[str, Any]:
        return {
            "purpose": PURPOSE,
            "protocol": protocol,
            "mode": "analyst-held",
            "model": {"intercept": INTERCEPT, "link": "identity", "weights": WEIGHTS},
            "agreements": {"tax-bureau": self.agreement},
            "datasets": {p: f"{p}-features" for p in WEIGHTS},
            "entities": list(self.ids),
        }

    def train_doc(self) -> dict[str, Any]:
        return {
            "purpose": PURPOSE,
            "mode": "analyst-held",
            "agreements": dict(self.agreements),
            "datasets": {p: f"{p}-features" for p in COLUMNS},
            "features": dict(COLUMNS),
            "label": "default",
            "params": {"epochs": 2, "batchSize": 8, "learningRate": 0.3},
        }

    def aggregate_doc(self, protocol: str) -> dict[str, Any]:
        return {
            "provider": "tax-bureau",
            "agreement": self.agreement,
            "dataset": "tax-bureau-features",
            "column": "employees",
            "statistic": "count",
            "protocol": protocol,
            "purpose": PURPOSE,
            "cohort": [*self.ids[2:12], "stranger-1"],
        }

    def run(self, kind: str, doc: dict[str, Any]) -> dict[str, Any]:
        """Submit a query through the bank's admin API and wait for its end."""
        submitted = self.bank.client.post(
            f"/management/queries/{kind}", json=doc, headers=self.bank.admin_headers
        )
        assert submitted.status_code == 202, submitted.text
        for _ in range(120):
            view = self.bank.client.get(
                f"/management/queries/{submitted.json()['id']}",
                params={"wait": 5},
                headers=self.bank.admin_headers,
            )
            assert view.status_code == 200, view.text
            if view.json()["state"] in ("done", "failed"):
                return dict(view.json())
        raise AssertionError("the query did not finish")

    def check_score(self, view: dict[str, Any]) -> None:
        assert view["state"] == "done", view["error"]
        logits = np.asarray(view["result"]["logits"])
        assert float(np.max(np.abs(logits - self.plaintext()))) <= 1e-3

    def check_count(self, view: dict[str, Any]) -> None:
        assert view["state"] == "done", view["error"]
        assert view["result"]["value"] == pytest.approx(10, abs=1e-6)

    def check_model(self, view: dict[str, Any]) -> None:
        """The jointly trained weights equal plaintext training on the same schedule."""
        assert view["state"] == "done", view["error"]
        model = Model.from_json(view["result"]["model"])
        order = ("bank-a", "court", "tax-bureau")  # the bank, the compute party, the other
        design = np.hstack([self.values[p] for p in order])
        plain = train_plaintext(design, self.label, TRAIN, sigmoid=TRAIN.sigmoid)
        joint = np.concatenate([model.weights_of(p) for p in order])
        assert np.allclose(joint, plain.weights, atol=2e-3)
        assert model.intercept == pytest.approx(plain.intercept, abs=2e-3)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hostile]:
    root = tmp_path_factory.mktemp("hostile")
    rng = rng_for(f"{__name__}.hostile")
    ids = [f"ent-{i:03d}" for i in range(N)]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TS_MAX_COMPUTE_BODY_BYTES", str(LIMIT))
        space = HostileSpace(root, base_port=19800)
        nodes = {
            "bank-a": space.add("bank-a", ["consumer", "provider"]),
            "tax-bureau": space.add("tax-bureau", ["provider"]),
            "court": space.add("court", ["provider"]),
            "registry": space.add("registry", ["consumer", "provider"]),  # an outsider to queries
            "ghost": space.add("ghost", ["provider"]),  # revoked by the authentication test
        }
    with space:
        for node in nodes.values():
            space.admit_direct(node)
        values = {p: rng.uniform(-3, 3, (N, len(c))) for p, c in COLUMNS.items()}
        logit = values["bank-a"] @ [0.6] + values["tax-bureau"] @ [-0.5, 0.3] - 0.2
        label = (rng.random(N) < 1 / (1 + np.exp(-logit))).astype(float)
        for party, columns in COLUMNS.items():
            published, table = columns, values[party]
            if party == "bank-a":  # the bank also holds the label
                published, table = [*columns, "default"], np.hstack([table, label[:, None]])
            path = root / f"{party}.csv"
            write_table(path, ids, published, table)
            publish_table(
                nodes[party],
                path,
                published,
                purpose=PURPOSE,
                kinds=("score", "aggregate", "train"),
            )
        agreements = negotiate_features(nodes["bank-a"], ("tax-bureau", "court"))
        yield Hostile(space, space.hostile, nodes, ids, values, label, agreements)
        stop_negotiations(space)
    target = os.environ.get("TS_HOSTILE_REPORT")
    if target:
        Path(target).write_text(json.dumps(_summary(), indent=2, sort_keys=True), "utf-8")


def _summary() -> dict[str, Any]:
    """Figures of this module's run (for docs/threat-model.md)."""
    out: dict[str, Any] = {"queries": REPORT["queries"]}
    for who in ("sender", "member"):
        outcomes: list[Outcome] = REPORT[who]
        out[who] = {
            "sent": len(outcomes),
            "refused4xx": sum(400 <= o.status < 500 for o in outcomes),
            "accepted": sorted({f"{o.operation} {o.kind}" for o in outcomes if o.status < 400}),
            "server5xx": sum(o.status >= 500 for o in outcomes),
            "slowestSeconds": round(max((o.seconds for o in outcomes), default=0.0), 3),
        }
    return out


def _refusals(node: Node, since: int) -> list[str]:
    ledger = node.runtime.ledger
    entries = ledger.entries(since, ledger.size())
    events = [decode_event(since + i, raw) for i, raw in enumerate(entries)]
    return [str(e.body["reason"]) for e in events if e.kind == "auth.refused"]


# -- authentication ----------------------------------------------------------------------------


def _signing_input(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return b64url_encode(canonical_json(header)) + "." + b64url_encode(canonical_json(claims))


def test_every_refusal_is_one_answer_and_the_ledger_keeps_the_reason(hostile: Hostile) -> None:
    tax, bank, ghost = hostile.nodes["tax-bureau"], hostile.bank, hostile.nodes["ghost"]
    url = f"{tax.url}/compute/score.open"
    body = b"TSF1\x00\x00\x00\x02{}"
    bank_client = bank.runtime.client
    now = bank.runtime.clock()
    late = SignedClient(
        bank.id,
        bank.runtime.key,
        bank.runtime.credential_token,
        clock=lambda: now - timedelta(minutes=10),
    )
    stranger = SignedClient("stranger", SigningKey.generate(), lambda: None)
    valid = bank_client.headers_for(tax.id, "POST", url, body)
    claims = {**_claims(valid[REQUEST_HEADER]), "jti": b64url_encode(b"\x01" * 16)}
    none = _signing_input({"alg": "none", "typ": REQUEST_TYP}, claims) + "."
    hs256 = _signing_input({"alg": "HS256", "typ": REQUEST_TYP}, claims)
    public = b64url_decode(bank.runtime.key.verify_key.to_b64())  # the HMAC key an attacker has
    mac = hmac.new(public, hs256.encode("ascii"), hashlib.sha256).digest()

    first = tax.client.post("/compute/score.open", content=body, headers=valid)
    assert first.status_code != 401  # a member's fresh request passes authentication
    attempts: dict[str, dict[str, str]] = {
        "replay": valid,
        "expired": late.headers_for(tax.id, "POST", url, body),
        "audience": bank_client.headers_for(ghost.id, "POST", url, body),
        "body-hash": bank_client.headers_for(tax.id, "POST", url, body + b" "),
        "missing-token": {},
        "alg-none": {REQUEST_HEADER: none},
        "alg-not-eddsa": {REQUEST_HEADER: hs256 + "." + b64url_encode(mac)},
        "unknown-issuer": stranger.headers_for(tax.id, "POST", url, body),
    }
    late.close()
    stranger.close()
    since = tax.runtime.ledger.size()
    answers = {
        reason: tax.client.post("/compute/score.open", content=body, headers=headers)
        for reason, headers in attempts.items()
    }
    # a revoked member: the operator revokes it and pushes the list to every member
    ghost_headers = ghost.runtime.client.headers_for(tax.id, "POST", url, body)
    operator = hostile.space.operator
    revoked = operator.client.post(
        f"/operator/participants/{ghost.id}/revoke",
        json={"reason": "left the space"},
        headers=operator.admin_headers,
    )
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["pushed"][tax.id] is True
    answers["revoked"] = tax.client.post("/compute/score.open", content=body, headers=ghost_headers)

    reference = answers["replay"]
    assert reference.status_code == 401
    for reason, answer in answers.items():
        assert answer.status_code == 401, reason
        assert answer.content == reference.content, reason
        for name in ("content-type", "www-authenticate", "content-length"):
            assert answer.headers.get(name) == reference.headers.get(name), (reason, name)
    assert reference.json()["detail"] == "verification failed"
    assert _refusals(tax, since) == [*attempts, "revoked"]


# -- compute messages ----------------------------------------------------------------------------

QUERIES = [
    ("score", "paillier"),
    ("score", "ckks"),
    ("score", "additive"),
    ("aggregate", "paillier"),  # over a PSI cohort: align.* and stats.*
    ("aggregate", "additive"),
    ("train", "additive"),  # two-party SGD: PSI, dealer seeds and material, shares, rounds
]
EXPECTED = {
    "score": {"aggregate.open", "score.open", "score.entities", "score.run", "aggregate.add"},
    "aggregate": {"align.open", "align.request", "stats.open", "stats.release"},
    "train": {"align.open", "align.request", "train.open", "train.epoch", "train.step"}
    | {"train.deal", "train.share", "train.reveal", "train.finish"},
}


# Operations that open (or fill) a session of the *sender's own*: another member may call them
# with a copy of someone's message and open its own session, which touches nobody else's.
OWN_SESSION = {"aggregate.open", "score.open", "score.entities"}


REPORT: dict[str, Any] = {"sender": [], "member": [], "queries": 0}


def _run(hostile: Hostile, kind: str, protocol: str) -> dict[str, Any]:
    if kind == "score":
        return hostile.run(kind, hostile.score_doc(protocol))
    if kind == "train":
        return hostile.run(kind, hostile.train_doc())
    return hostile.run(kind, hostile.aggregate_doc(protocol))


def _check(hostile: Hostile, kind: str, view: dict[str, Any]) -> None:
    if kind == "score":
        hostile.check_score(view)
    elif kind == "train":
        hostile.check_model(view)
    else:
        hostile.check_count(view)


def _finished(view: dict[str, Any]) -> None:
    assert view["state"] in ("done", "failed")
    if view["state"] == "failed":  # the session was closed on a malformed message (fail closed)
        assert view["error"]["type"].rsplit("/", 1)[1] != "internal", view["error"]


def _plans(donors: dict[str, bytes], offset: int) -> list[tuple[str, tuple[str, ...]]]:
    """The runs to make: (operation attacked, variants in order). Every operation gets the frame
    variants; each one carrying a payload gets one payload variant per run: all four under the
    thorough hypothesis profile, one in rotation otherwise (every kind still used per query)."""
    thorough = hypothesis.settings.default.max_examples >= 1000
    plans: list[tuple[str, tuple[str, ...]]] = []
    with_payload = [op for op in sorted(donors) if _split(donors[op])[1]]
    for op in sorted(donors):
        if op not in with_payload:
            plans.append((op, FRAME))
            continue
        turn = offset + with_payload.index(op)
        kinds = PAYLOAD if thorough else (PAYLOAD[turn % len(PAYLOAD)],)
        plans.append((op, (*FRAME, kinds[0])))
        plans += [(op, (kind,)) for kind in kinds[1:]]
    return plans


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize(("kind", "protocol"), QUERIES)
def test_hostile_messages_of_the_sender_never_crash_a_node(
    hostile: Hostile, kind: str, protocol: str
) -> None:
    transport = hostile.transport
    transport.arm()
    _check(hostile, kind, _run(hostile, kind, protocol))
    transport.donors = donors = dict(transport.recorded)  # another query's keys and shares
    outcomes: list[Outcome] = []
    for operation, kinds in _plans(donors, QUERIES.index((kind, protocol))):
        run = transport.arm(kinds, only=operation)
        _finished(_run(hostile, kind, protocol))
        transport.settle()
        outcomes += run
    assert {o.operation for o in outcomes} == set(donors) >= EXPECTED[kind]
    assert {o.kind for o in outcomes} >= set(FRAME)
    strict = [o for o in outcomes if o.kind in STRICT]
    assert [o for o in strict if not 400 <= o.status < 500] == []
    assert {o.status for o in strict if o.kind == "over-limit"} == {413}
    assert [o for o in outcomes if o.status >= 500] == []
    # each payload variant met the live state the real message expected
    assert [o for o in outcomes if o.kind in PAYLOAD and "no compute session" in o.detail] == []
    REPORT["sender"] += outcomes
    REPORT["queries"] += len(_plans(donors, 0)) + 2
    transport.arm()
    _check(hostile, kind, _run(hostile, kind, protocol))  # the nodes serve the next query


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("kind", "protocol"), QUERIES)
def test_another_member_cannot_touch_a_query(hostile: Hostile, kind: str, protocol: str) -> None:
    outcomes = hostile.transport.arm((*ALL, "copy"), as_member="registry")
    view = _run(hostile, kind, protocol)
    _check(hostile, kind, view)  # untouched by the exact copies and every variant
    assert {o.operation for o in outcomes} >= EXPECTED[kind]
    REPORT["member"] += outcomes
    REPORT["queries"] += 1
    accepted = {o.operation for o in outcomes if o.status < 400}
    assert accepted <= OWN_SESSION  # it may open sessions of its own, under its own name
    assert [
        o for o in outcomes if o.operation not in OWN_SESSION and not 400 <= o.status < 500
    ] == []
