"""API fuzzing of every node role with schemathesis, in process, against each node's own OpenAPI.

Three nodes of one space are fuzzed: the operator, a provider, and a consumer that is also a
provider (every router is mounted on at least one of them). Every operation of each OpenAPI
document gets generated requests, valid and invalid (schemathesis positive and negative modes;
phases examples, coverage and fuzzing), sent the way a member or the node's staff would send
them:

- staff operations (``AdminToken``) carry the node's admin token;
- member operations (``TS-Request``) are signed for that very request by a real member
  (:class:`tests.connectors.node._fuzz.SigningProxy` signs the final bytes);
- the transfer data pull (``PullToken``) carries no valid token (none is issued here).

Checks on every response: no server error (no 5xx), the response conforms to the documented
status codes, media types and schemas (errors are ``application/problem+json``), invalid input
is refused with a 4xx (``negative_data_rejection``; 413 counts, an oversized body is refused
before it is read), and ``ignored_auth``: on an operation that declares security, a request
accepted with credentials is sent again without them and with wrong ones, and both must be
refused (401/403). :func:`test_every_protected_operation_refuses_bad_credentials` checks the same
for every protected operation deterministically, whether or not fuzzing reached a 2xx.

Cost: ``max_examples`` per operation comes from the hypothesis profile (``ci``: 50 in
``make test``; ``thorough``: 1,000). With ``$TS_FUZZ_REPORT`` set, the figures of the run
(requests per node, answers by class, signed requests, ``auth.refused`` ledger entries) are
written there as JSON; ``docs/threat-model.md`` quotes those of the last thorough run.
"""

from __future__ import annotations

import atexit
import csv
import json
import os
import re
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import strategies as st
from schemathesis import Case
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from connectors.spaces.local import LocalParty, local_dataset, local_offer
from tests.connectors._space import InProcessSpace, Node
from tests.connectors.node._fuzz import SIGN_ME, SigningProxy
from trusted_space.events import decode_event

# The analyst's score route also takes an Arrow IPC stream (decision 55): fuzz it with arbitrary
# bytes, which the node must answer with a 4xx problem, never a 500.
schemathesis.openapi.media_type("application/vnd.apache.arrow.stream", st.binary(max_size=512))

ROLES: dict[str, tuple[str, list[str]] | None] = {
    "operator": None,
    "provider": ("tax-bureau", ["provider"]),
    "consumer": ("bank-a", ["consumer", "provider"]),
}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
    ignored_auth,
]


def _publish(node: Node, root: Path) -> None:
    path = root / f"{node.id}.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        out = csv.writer(handle)
        out.writerow(["entity", "amount"])
        out.writerows([f"ent-{i:02d}", f"{i * 1.5:.3f}"] for i in range(12))
    party = LocalParty(node.id, path)
    body = {
        "dataset": local_dataset(party, "entity", ["amount"]),
        "source": {"kind": "csv", "path": str(path)},
        "offers": [local_offer(purpose="fuzzing", kinds=("score", "aggregate"))],
    }
    response = node.client.post("/management/datasets", json=body, headers=node.admin_headers)
    assert response.status_code == 201, response.text


def _schemes(operation: dict[str, Any]) -> set[str]:
    return {name for requirement in operation.get("security", []) for name in requirement}


class _FuzzedSpace:
    """The fuzzed space. Built when this module is collected (schemathesis reads each node's
    OpenAPI document then, to make one test per operation); closed when the module's tests end,
    or at exit if they never run."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="ts-fuzz-")
        root = Path(self._dir.name)
        self.space = InProcessSpace(root, base_port=19700)
        self.nodes = {"operator": self.space.operator}
        for role, spec in ROLES.items():
            if spec is not None:
                self.nodes[role] = self.space.add(*spec)
        self.member = self.space.add("fuzz-member", ["consumer", "provider"])
        for node in [*self.nodes.values(), self.member]:
            if node is not self.space.operator:
                self.space.admit_direct(node)
        for role in ("provider", "consumer"):
            _publish(self.nodes[role], root)
        self.proxies: dict[str, SigningProxy] = {}
        self.requests: Counter[str] = Counter()
        self.answers: Counter[str] = Counter()
        self.closed = False
        atexit.register(self.close)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.space.close()
            self._dir.cleanup()

    def proxy(self, role: str) -> SigningProxy:
        node = self.nodes[role]
        member = self.member.runtime
        return self.proxies.setdefault(
            role,
            SigningProxy(
                node.app,
                issuer=member.id,
                key=member.key,
                credential=member.credential_token,
                audience=node.id,
                clock=member.clock,
            ),
        )

    def schema(self, role: str) -> Any:
        proxy = self.proxy(role)
        loaded = schemathesis.openapi.from_asgi("/openapi.json", proxy)
        admin = f"Bearer {self.nodes[role].runtime.admin_token}"

        class NodeAuth:
            """The credentials a legitimate caller of each operation holds."""

            def get(self, case: Case, _: Any) -> dict[str, str]:
                schemes = _schemes(case.operation.definition.raw)
                if "AdminToken" in schemes:
                    return {"Authorization": admin}
                if "TS-Request" in schemes:
                    return {"TS-Request": SIGN_ME}
                return {}

            def set(self, case: Case, data: dict[str, str], _: Any) -> None:
                if data:
                    case.headers = {**(case.headers or {}), **data}

        loaded.auth(refresh_interval=None)(NodeAuth)
        rejection = loaded.config.checks.negative_data_rejection
        rejection.expected_statuses = [*rejection.expected_statuses, "413"]
        return loaded

    def record(self, role: str, status: int) -> None:
        node = self.nodes[role].id
        self.requests[node] += 1
        self.answers[f"{node} {status // 100}xx"] += 1

    def report(self) -> dict[str, Any]:
        refused: dict[str, int] = {}
        for node in self.nodes.values():
            ledger = node.runtime.ledger
            size = ledger.size()
            kinds = Counter(
                decode_event(start + i, raw).kind
                for start in range(0, size, 1000)
                for i, raw in enumerate(ledger.entries(start, min(size, start + 1000)))
            )
            refused[node.id] = kinds["auth.refused"]
        return {
            "profile": os.environ.get("HYPOTHESIS_PROFILE", "ci"),
            "operations": {
                self.nodes[role].id: sum(map(len, self.nodes[role].app.openapi()["paths"].values()))
                for role in ROLES
            },
            "requests": dict(self.requests),
            "answers": dict(self.answers),
            "signedMemberRequests": {
                self.nodes[role].id: proxy.signed for role, proxy in self.proxies.items()
            },
            "authRefusedOnLedger": refused,
        }


FUZZED = _FuzzedSpace()


@pytest.fixture(scope="module", autouse=True)
def _close_the_space() -> Iterator[None]:
    yield
    target = os.environ.get("TS_FUZZ_REPORT")
    if target:
        Path(target).write_text(json.dumps(FUZZED.report(), indent=2, sort_keys=True), "utf-8")
    FUZZED.close()


_ROLE_OF_PROXY = {id(FUZZED.proxy(role)): role for role in ROLES}


@schemathesis.pytest.parametrize(**{role: FUZZED.schema(role) for role in ROLES})
def test_every_operation_of_every_role(case: Case) -> None:
    response = case.call_and_validate(checks=CHECKS)
    FUZZED.record(_ROLE_OF_PROXY[id(case.operation.app)], response.status_code)


def _protected(role: str) -> list[tuple[str, str, set[str], bool]]:
    doc = FUZZED.nodes[role].app.openapi()
    return [
        (method.upper(), path, _schemes(operation), {} in operation["security"])
        for path, operations in doc["paths"].items()
        for method, operation in operations.items()
        if _schemes(operation)
    ]


@pytest.mark.parametrize("role", list(ROLES))
def test_every_protected_operation_refuses_bad_credentials(role: str) -> None:
    node = FUZZED.nodes[role]
    member = FUZZED.member.runtime.client
    other_admin = {"Authorization": f"Bearer {FUZZED.member.runtime.admin_token}"}
    operations = _protected(role)
    assert len(operations) >= 20  # the whole API, not an empty list
    for method, path, schemes, anonymous_served in operations:
        target = re.sub(r"\{[^}]+\}", "x1", path)
        signed = member.headers_for(node.id, method, f"{node.url}{target}", b"{}")
        attempts: list[dict[str, str]] = [
            {"TS-Request": "e30.e30.AAAA"},
            {"TS-Request": signed["TS-Request"][:-4] + "AAAA"},  # a bad signature
        ]
        if not anonymous_served:  # the open catalog serves anonymous callers their own view
            attempts += [{}, {"Authorization": "Bearer not-the-token"}, other_admin]
        if "TS-Request" not in schemes:
            attempts.append(signed)  # a member's valid signature is no admin or pull token
        for headers in attempts:
            response = node.client.request(
                method,
                target,
                content=b"{}",
                headers={**headers, "Content-Type": "application/json"},
            )
            assert response.status_code == 401, (role, method, path, headers, response.text)
            assert response.json()["detail"] == "verification failed"
