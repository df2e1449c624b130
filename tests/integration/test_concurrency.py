"""32 concurrent clients against one real provider process: no 5xx, no deadlock, exact ``count``.

A small real space of its own (``trusted-space node serve`` processes started by
:func:`connectors.spaces.space.up`: operator, the provider ``tax-bureau``, the consumer
``bank-a``), so
the shared session space of the other integration tests is left alone. It runs twice: every node on
its SQLite file, then every node on a database of its own on the real PostgreSQL server the suite
starts (``tests/_postgres.py``). The provider publishes one
``zone`` dataset with two offers, and the bank holds an agreement for each: ``steady`` (a large
``count``) and ``limited`` (``count`` <= 7).

Then 32 threads, each with its own signed client as the bank (or the bank's admin API), start at
one barrier and mix catalog reads (DSP catalog request, anonymous and signed; one dataset), one
negotiation each (started at the bank, which sends the DSP request to the provider and completes
the contract in the background) and uses of the provider's data (``align.open``: the provider
evaluates the usage policy, consumes ``count`` and appends the decision and the use to its ledger
in one transaction). Before the store's writers queued on a lock of their own, this load made the
provider answer ``503`` ("database is locked": see ``tests/trusted_space/test_store_concurrency``).
What must hold:

* no answer is a 5xx (a ``database is locked`` or an exhausted connection pool would surface as
  ``503``/``500``), and every thread finishes inside a global deadline (no deadlock);
* of the 64 uses of the limited agreement exactly 7 are allowed and the other 57 are ``403`` with
  a trace whose blocking step is ``count``; the provider's counter and ledger agree (7
  ``query.use`` entries, decisions numbered 1..7);
* every negotiation started under the load reaches ``FINALIZED``.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from connectors.client.http import SignedClient
from connectors.node.compute import COMPUTE_CONTENT_TYPE
from connectors.spaces.space import (
    DatasetConfig,
    NodeConfig,
    RunningNode,
    RunningSpace,
    SourceConfig,
    SpaceConfig,
    up,
)
from tests.integration._space import count_limited_offer, member_credential, settled, tax_records
from trusted_space.errors import NotReadyError
from trusted_space.keys import SigningKey
from trusted_space.transport import frame, unframe

from .conftest import ledger_events

pytestmark = pytest.mark.integration

CLIENTS = 32
LIMIT = 7
LIMITED_TRIES = 2  # per client: 64 tries of the limited agreement
DEADLINE = 120.0  # seconds for the whole concurrent phase
DATASET = "tax-load"
PURPOSE = "pre-loan-review"
QUIET = {"log_level": "warning"}


def _dataset(root: Path) -> DatasetConfig:
    rows = root / "tax.csv"
    rows.write_text(
        "entity,tax_paid\n" + "".join(f"ent-{i:03d},{100 + i}.25\n" for i in range(24)),
        encoding="utf-8",
    )
    dataset = tax_records(DATASET, "Tax paid (load test)", ["tax_paid"])
    return DatasetConfig(
        file=root / "tax.json",
        dataset=dataset,
        source=SourceConfig("csv", rows),
        offers=(
            count_limited_offer(10**6, purpose=PURPOSE, protocols=["ckks"]),
            count_limited_offer(LIMIT, purpose=PURPOSE, protocols=["ckks"]),
        ),
    )


@dataclasses.dataclass
class Load:
    space: RunningSpace
    steady: str
    limited: str
    offer: str
    credential: str

    @property
    def provider(self) -> RunningNode:
        return self.space["tax-bureau"]

    @property
    def bank(self) -> RunningNode:
        return self.space["bank-a"]

    def client(self) -> SignedClient:
        key = SigningKey.load(self.bank.layout.node_key)
        credential = self.credential
        return SignedClient("bank-a", key, lambda: credential, timeout=DEADLINE)


def _negotiate(bank: RunningNode, offer_id: str, timeout: float = 60.0) -> dict[str, Any]:
    with bank.admin(timeout=timeout) as admin:
        started = admin.post(
            "/management/negotiations",
            {"provider": "tax-bureau", "datasetId": DATASET, "offerId": offer_id},
        )
        return settled(admin.get, started["id"], timeout)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def load(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Load]:
    """The space, with every node on SQLite or on its own database of the suite's PostgreSQL."""
    root = tmp_path_factory.mktemp("concurrency")
    ds = _dataset(root)
    stores: dict[str, dict[str, str]] = {"city-centre": {}, "tax-bureau": {}, "bank-a": {}}
    if request.param == "postgresql":
        server = request.getfixturevalue("postgres")
        stores = {n: {"store_url": server.database(n.replace("-", "_"))} for n in stores}
    config = SpaceConfig(
        path=root / "space.toml",
        name="concurrency",
        dir=root / "space",
        host="127.0.0.1",
        base_port=0,
        nodes=(
            NodeConfig("city-centre", ("operator",), settings=stores["city-centre"]),
            NodeConfig(
                "tax-bureau",
                ("provider",),
                settings={**QUIET, **stores["tax-bureau"]},
                datasets=(ds,),
            ),
            NodeConfig("bank-a", ("consumer",), settings={**QUIET, **stores["bank-a"]}),
        ),
    )
    with up(config, timeout=90) as space:
        bank, operator = space["bank-a"], space.operator
        on_sqlite = sorted(name for name, n in space.nodes.items() if n.layout.store.exists())
        assert on_sqlite == ([] if request.param == "postgresql" else sorted(stores))
        steady = _negotiate(bank, str(ds.offers[0]["@id"]))
        limited = _negotiate(bank, str(ds.offers[1]["@id"]))
        assert steady["state"] == limited["state"] == "FINALIZED"
        key = SigningKey.load(bank.layout.node_key)
        credential = member_credential("bank-a", key, operator.url, operator.name)
        yield Load(
            space,
            str(steady["agreementId"]),
            str(limited["agreementId"]),
            str(ds.offers[0]["@id"]),
            credential,
        )


# -- one client ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Outcome:
    op: str
    status: int
    body: Any = None


def _use(load: Load, client: SignedClient, agreement: str) -> Outcome:
    header = {
        "query": f"load-{uuid.uuid4().hex[:12]}",
        "agreement": agreement,
        "dataset": DATASET,
        "purpose": PURPOSE,
        "kind": "score",
        "protocol": "ckks",
        "columns": ["tax_paid"],
        "size": 3,
    }
    response = client.request(
        "POST",
        f"{load.provider.url}/compute/align.open",
        audience="tax-bureau",
        content=frame(header, b""),
        content_type=COMPUTE_CONTENT_TYPE,
        check=False,
    )
    op = "use.limited" if agreement == load.limited else "use.steady"
    if response.status_code == 200:
        return Outcome(op, 200, unframe(response.content)[0])
    return Outcome(op, response.status_code, response.json())


def _catalog(load: Load, client: SignedClient, http: httpx.Client, signed: bool) -> Outcome:
    request = {
        "@context": ["https://w3id.org/dspace/2025/1/context.jsonld"],
        "@type": "CatalogRequestMessage",
    }
    url = f"{load.provider.url}/catalog/request"
    if signed:
        response = client.request(
            "POST", url, audience="tax-bureau", json_body=request, check=False
        )
    else:
        response = http.post(url, json=request)
    return Outcome("catalog.signed" if signed else "catalog.anonymous", response.status_code)


def _dataset_get(load: Load, client: SignedClient) -> Outcome:
    response = client.request(
        "GET", f"{load.provider.url}/catalog/datasets/{DATASET}", audience="tax-bureau", check=False
    )
    return Outcome("catalog.dataset", response.status_code)


def _negotiation(load: Load, http: httpx.Client, token: str) -> Outcome:
    response = http.post(
        f"{load.bank.url}/management/negotiations",
        json={"provider": "tax-bureau", "datasetId": DATASET, "offerId": load.offer},
        headers={"Authorization": f"Bearer {token}"},
    )
    return Outcome("negotiation", response.status_code, response.json())


def _client_script(index: int, rng: np.random.Generator) -> list[str]:
    ops = ["use.limited"] * LIMITED_TRIES + ["use.steady", "catalog.signed", "catalog.dataset"]
    ops += ["catalog.anonymous" if index % 2 else "use.steady", "negotiation"]
    rng.shuffle(ops)
    return ops


# -- the test -------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_32_clients_no_5xx_no_deadlock_and_count_is_exact(
    load: Load, rng: np.random.Generator
) -> None:
    scripts = [_client_script(i, rng) for i in range(CLIENTS)]
    token = load.bank.layout.admin_token.read_text(encoding="utf-8").strip()
    barrier = threading.Barrier(CLIENTS)
    outcomes: list[Outcome] = []
    failures: list[str] = []
    lock = threading.Lock()

    def run(script: list[str]) -> None:
        with load.client() as client, httpx.Client(timeout=DEADLINE) as http:
            barrier.wait(timeout=DEADLINE)
            for op in script:
                try:
                    if op == "use.limited":
                        outcome = _use(load, client, load.limited)
                    elif op == "use.steady":
                        outcome = _use(load, client, load.steady)
                    elif op == "negotiation":
                        outcome = _negotiation(load, http, token)
                    elif op == "catalog.dataset":
                        outcome = _dataset_get(load, client)
                    else:
                        outcome = _catalog(load, client, http, op == "catalog.signed")
                except (httpx.HTTPError, NotReadyError) as exc:
                    with lock:
                        failures.append(f"{op}: {exc!r}")
                    continue
                with lock:
                    outcomes.append(outcome)

    threads = [threading.Thread(target=run, args=(s,), daemon=True) for s in scripts]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=max(0.0, started + DEADLINE - time.monotonic()))
    elapsed = time.monotonic() - started

    assert not [t for t in threads if t.is_alive()], f"clients still running after {DEADLINE} s"
    assert not failures, failures[:5]
    assert len(outcomes) == sum(len(s) for s in scripts)
    server_errors = [o for o in outcomes if o.status >= 500]
    assert not server_errors, server_errors[:3]
    by_op = Counter((o.op, o.status) for o in outcomes)
    tries = CLIENTS * LIMITED_TRIES
    assert by_op[("use.limited", 200)] == LIMIT, by_op
    assert by_op[("use.limited", 403)] == tries - LIMIT, by_op
    for o in outcomes:
        if o.op == "use.limited" and o.status == 403:
            blocking = [s for s in o.body["trace"] if s.get("blocking")]
            assert [s["left_operand"] for s in blocking] == ["count"], o.body
    others = {k: n for k, n in by_op.items() if k[0] != "use.limited"}
    assert all(status in (200, 201) for _, status in others), others
    print(
        f"concurrency: {CLIENTS} clients, {len(outcomes)} requests in {elapsed:.1f} s "
        f"({len(outcomes) / elapsed:.0f}/s): {dict(sorted(by_op.items()))}"
    )

    with httpx.Client(timeout=30) as http:
        events = ledger_events(http, load.provider.url)
    uses = [e for e in events if e.kind == "query.use" and e.body["agreement"] == load.limited]
    decided = [
        e.body["uses"]
        for e in events
        if e.kind == "policy.decision" and e.body["agreement"] == load.limited and e.body["allowed"]
    ]
    assert len(uses) == LIMIT
    assert decided == list(range(1, LIMIT + 1))
    refused = [
        e
        for e in events
        if e.kind == "policy.decision"
        and e.body["agreement"] == load.limited
        and not e.body["allowed"]
    ]
    assert len(refused) == tries - LIMIT

    started_pids = [o.body["id"] for o in outcomes if o.op == "negotiation"]
    with load.bank.admin(timeout=30) as admin:
        states = [settled(admin.get, pid, 60.0)["state"] for pid in started_pids]
    assert states == ["FINALIZED"] * len(started_pids)
