"""The crash-safety harness: a real small space whose nodes are killed with SIGKILL and restarted.

DESIGN §9 promises that "an entry that was acknowledged survives ``kill -9``". This harness checks
that promise, and the invariants built on it, against real node processes:

* an operator (``city-centre``: witness and Beaver-triple dealer), a provider (``tax-bureau``,
  one ``zone`` dataset, two ``count``-limited agreements) and a consumer (``bank-a``), each a real
  process forked by :mod:`tests.crash.node_main` on its own directory and store (SQLite, or a
  database of its own on a PostgreSQL server when ``store_urls`` names one);
* driver threads in this process append over HTTP, as the members and staff would: uses of the
  provider's data (``align.open``: a policy decision, the ``count`` counter, a ``query.use`` entry
  and a signed checkpoint in the receipt), negotiations (started at the bank, acknowledged by the
  provider), checkpoints (the provider's own, its witness submissions every 0.3 s, the operator's)
  and Beaver triples dealt by the operator; each driver records what a node *acknowledged*
  (a 2xx answer received);
* each round, the provider and the operator are killed at two independent random moments drawn
  from a seeded :class:`numpy.random.Generator`, restarted on the same directories, and checked.

After every restart (:meth:`CrashHarness.check`):

1. each node's ledger: the new checkpoint's signature, its root recomputed here from every entry
   fetched so far, and the node's own consistency proof from *every* checkpoint seen before the
   kill to the new one (so nothing acknowledged was rolled back and no history was rewritten);
2. every acknowledged use: its receipt verifies and its entry is in the ledger at its index;
   every acknowledged refusal: its ``policy.decision`` entry is there, naming ``count``;
3. counters: the provider's ``count`` counter per agreement equals the number of ``query.use``
   entries for it, the ``uses`` numbers of its allowed decisions are exactly 1..counter, it never
   went backwards, is at least the number of acknowledged uses and never above the limit;
4. every negotiation the provider acknowledged is still in its store, and its state never went
   backwards;
5. Beaver triples: no (session, batch, party) share was ever answered twice, no two answers hold
   the same share, every acknowledged share has its ``triple.dealt`` entry, and asking again for
   a share dealt before the kill is refused.

:meth:`CrashHarness.finish` verifies both whole ledgers with
:func:`trusted_space.ledger.verify_log` against every checkpoint seen, and checks that the
operator's witness still cosigns the provider's history (no false fork after all the crashes).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from connectors.client.http import AdminClient, SignedClient
from connectors.common.settings import NodeSettings, OperatorAnchor, init_node, load_settings
from connectors.node.compute import COMPUTE_CONTENT_TYPE
from connectors.spaces.space import admit
from tests.integration._space import count_limited_offer, member_credential, settled, tax_records
from trusted_space.contracts import NEGOTIATION_NAMESPACE
from trusted_space.errors import NotReadyError
from trusted_space.events import decode_event
from trusted_space.keys import SigningKey
from trusted_space.ledger import FORK_NAMESPACE, Receipt, open_checkpoint, verify_log
from trusted_space.merkle import MerkleTree, leaf_hash, verify_consistency
from trusted_space.notes import Checkpoint
from trusted_space.policy import COUNT_NAMESPACE
from trusted_space.policy.vocabulary import account_key
from trusted_space.store import Store, open_store
from trusted_space.transport import frame, unframe

__all__ = ["CrashHarness", "HarnessFailure", "NodeProcesses"]

REPO = Path(__file__).resolve().parents[2]
OPERATOR, PROVIDER, BANK = "city-centre", "tax-bureau", "bank-a"
DATASET = "tax-features"
PURPOSE = "pre-loan-review"
STEADY, LIMITED = "steady", "limited"
ENTITIES = 16
PROTOCOLS = ("paillier", "ckks", "additive")
HTTP_TIMEOUT = 30.0
_STATE_RANK = {
    "REQUESTED": 1,
    "OFFERED": 1,
    "ACCEPTED": 2,
    "AGREED": 3,
    "VERIFIED": 4,
    "FINALIZED": 5,
    "TERMINATED": 5,
}


class HarnessFailure(AssertionError):
    """An invariant did not hold after a crash (the message says which, and where)."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise HarnessFailure(message)


# -- processes ------------------------------------------------------------------------------------


class NodeProcesses:
    """Client of the fork server (:mod:`tests.crash.node_main`): start, kill and reap nodes."""

    def __init__(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TS_")}
        env |= {"PYTHONUNBUFFERED": "1", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tests.crash.node_main"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=REPO,
            env=env,
            text=True,
        )
        self._lock = threading.Lock()

    def _call(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        with self._lock:
            self._proc.stdin.write(json.dumps(request) + "\n")
            self._proc.stdin.flush()
            line = self._proc.stdout.readline()
        if not line:
            raise HarnessFailure(f"the fork server exited (status {self._proc.poll()})")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise HarnessFailure(f"fork server: {answer['error']}")
        return answer

    def start(self, directory: Path) -> int:
        """Fork a node process serving ``directory``; return its pid."""
        return int(self._call({"op": "start", "dir": str(directory)})["pid"])

    def kill(self, pid: int) -> int:
        """SIGKILL one node process (ours, by pid) and reap it; return its exit status."""
        os.kill(pid, signal.SIGKILL)
        return int(self._call({"op": "reap", "pid": pid})["status"])

    def close(self) -> None:
        """Stop the fork server, which kills the node processes it still runs."""
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        try:
            self._proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()


def _free_ports(count: int) -> list[int]:
    held = []
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", 0))
        held.append(s)
    ports = [int(s.getsockname()[1]) for s in held]
    for s in held:
        s.close()
    return ports


# -- the nodes and what we learnt about them ---------------------------------------------------


@dataclass
class LedgerView:
    """Everything fetched from one node's ledger, verified incrementally, and the heads seen."""

    vkey: str
    entries: list[bytes] = field(default_factory=list)
    leaves: list[bytes] = field(default_factory=list)
    seen: list[str] = field(default_factory=list)  # checkpoint notes not linked yet
    linked: list[str] = field(default_factory=list)  # every checkpoint already linked
    size: int = 0

    def __post_init__(self) -> None:
        self.tree = MerkleTree(lambda start, end: self.leaves[start:end])


@dataclass
class Node:
    name: str
    settings: NodeSettings
    admin_token: str
    pid: int | None = None
    ledger: LedgerView | None = None

    @property
    def url(self) -> str:
        return self.settings.url

    @property
    def dir(self) -> Path:
        return self.settings.dir

    @property
    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    @contextmanager
    def store(self) -> Iterator[Store]:
        """The node's own store (SQLite file or PostgreSQL database), opened next to the node."""
        store = open_store(self.settings.store)
        try:
            yield store
        finally:
            store.close()


@dataclass
class Acked:
    """What the nodes acknowledged, filled by the drivers (under ``lock``)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    uses: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    refusals: list[tuple[str, int, list[dict[str, Any]]]] = field(default_factory=list)
    negotiations: dict[str, str] = field(default_factory=dict)  # providerPid -> last state
    triples: dict[tuple[str, str, str], str] = field(default_factory=dict)
    duplicate_triples: list[tuple[str, str, str]] = field(default_factory=list)
    notes: dict[str, list[str]] = field(default_factory=dict)  # node -> checkpoints
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    checked_uses: int = 0
    checked_refusals: int = 0

    def note(self, node: str, text: str) -> None:
        with self.lock:
            self.notes.setdefault(node, []).append(text)

    def status(self, what: str, code: int) -> None:
        with self.lock:
            self.statuses[(what, code)] += 1


# -- set-up ----------------------------------------------------------------------------------------


def _dataset(csv_path: Path) -> dict[str, Any]:
    with csv_path.open("w", encoding="utf-8") as out:
        out.write("entity,tax_paid,employees\n")
        for i in range(ENTITIES):
            out.write(f"ent-{i:03d},{1000 + 37 * i}.5,{3 + i}\n")
    return tax_records(
        DATASET,
        "Tax paid and head count",
        ["tax_paid", "employees"],
        description="Computation only: rows never leave the tax bureau.",
    )


class CrashHarness:
    """The space, the drivers, the kills and the checks (see the module docstring).

    Args:
        root: an empty directory for the three node directories.
        rng: the generator of every random choice (kill moments, driver mixes).
        limit: the ``count`` limit of the limited agreement.
        max_delay: a node is killed at a moment drawn uniformly in ``[0, max_delay)`` seconds
            after its restart.
        log: where progress lines go.
        store_urls: node name -> its store URL (default: each node's own SQLite file).
    """

    def __init__(
        self,
        root: Path,
        rng: np.random.Generator,
        *,
        limit: int = 10,
        max_delay: float = 0.4,
        log: Callable[[str], None] = print,
        store_urls: dict[str, str] | None = None,
    ) -> None:
        self.root = root
        self.store_urls = dict(store_urls or {})
        self.rng = rng
        self.limit = limit
        self.max_delay = max_delay
        self.log = log
        self.processes = NodeProcesses()
        self.acked = Acked()
        self.nodes: dict[str, Node] = {}
        self.agreements: dict[str, str] = {}
        self.offers: dict[str, str] = {}
        self.counters: dict[str, int] = {}
        self.accounts: dict[str, str] = {}  # agreement -> its count account
        self.dealer_session = f"crash-{uuid.uuid4().hex[:12]}"
        self.rounds = 0
        self.kills = 0
        self._keys: dict[str, SigningKey] = {}
        self._credentials: dict[str, str] = {}
        self._http = httpx.Client(timeout=HTTP_TIMEOUT)
        self._clients: dict[str, SignedClient] = {}
        self._decided: dict[str, list[int]] = {}  # agreement -> `uses` of its allowed decisions
        self._logged: Counter[str] = Counter()  # agreement -> query.use entries
        self._dealt: set[tuple[str, str, str]] = set()  # triple.dealt entries of the operator

    # -- lifecycle --------------------------------------------------------------------------
    def __enter__(self) -> CrashHarness:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()
        for client in self._clients.values():
            client.close()
        self.processes.close()

    def _start(self, node: Node) -> None:
        node.pid = self.processes.start(node.dir)

    def _kill(self, node: Node) -> None:
        assert node.pid is not None
        status = self.processes.kill(node.pid)
        _require(status == -signal.SIGKILL, f"{node.name} exited with {status} before the kill")
        node.pid = None
        self.kills += 1

    def _wait(self, node: Node, path: str = "/readyz", timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                response = self._http.get(node.url + path)
                if response.status_code == 200:
                    return
                last = f"HTTP {response.status_code} {response.text[:200]}"
            except httpx.TransportError as exc:
                last = repr(exc)
            time.sleep(0.02)
        raise HarnessFailure(f"{node.name}{path} did not answer 200 in {timeout} s: {last}")

    def setup(self) -> None:
        """Create, start and admit the three nodes; publish; negotiate the two agreements."""
        ports = _free_ports(3)
        stores = {name: {"store_url": url} for name, url in self.store_urls.items()}
        op = init_node(
            self.root / OPERATOR,
            name=OPERATOR,
            roles=["operator"],
            port=ports[0],
            extra=stores.get(OPERATOR),
        )
        anchor = OperatorAnchor.load(op.layout.operator)
        provider = init_node(
            self.root / PROVIDER,
            name=PROVIDER,
            roles=["provider"],
            port=ports[1],
            operator=anchor,
            extra={"witness_interval": 0.3, "log_level": "warning", **stores.get(PROVIDER, {})},
        )
        bank = init_node(
            self.root / BANK,
            name=BANK,
            roles=["consumer"],
            port=ports[2],
            operator=anchor,
            extra={"log_level": "warning", **stores.get(BANK, {})},
        )
        for settings in (op, provider, bank):
            settings = load_settings(settings.dir)
            token = settings.layout.admin_token.read_text(encoding="utf-8").strip()
            self.nodes[settings.name] = Node(settings.name, settings, token)
        for node in self.nodes.values():
            self._start(node)
        for node in self.nodes.values():
            self._wait(node, "/healthz")
        operator = self.nodes[OPERATOR]
        with AdminClient(operator.url, operator.admin_token, timeout=HTTP_TIMEOUT) as op_admin:
            for name in (PROVIDER, BANK):
                node = self.nodes[name]
                with AdminClient(node.url, node.admin_token, timeout=HTTP_TIMEOUT) as admin:
                    admit(op_admin, admin)
        for node in self.nodes.values():
            self._wait(node)
            self._keys[node.name] = SigningKey.load(node.settings.layout.node_key)
        for name in (PROVIDER, BANK):
            self._credentials[name] = member_credential(
                name, self._keys[name], operator.url, operator.name, timeout=HTTP_TIMEOUT
            )
            self._clients[name] = self.signed(name)
        for name in (OPERATOR, PROVIDER):
            identity = self._http.get(self.nodes[name].url + "/identity").json()
            self.nodes[name].ledger = LedgerView(str(identity["ledgerVkey"]))
        self._publish_and_negotiate()

    def _publish_and_negotiate(self) -> None:
        provider, bank = self.nodes[PROVIDER], self.nodes[BANK]
        offers = {
            kind: count_limited_offer(count, purpose=PURPOSE, protocols=PROTOCOLS, log=True)
            for kind, count in ((STEADY, 10**9), (LIMITED, self.limit))
        }
        self.offers = {k: str(o["@id"]) for k, o in offers.items()}
        body = {
            "dataset": _dataset(self.root / "tax.csv"),
            "source": {"kind": "csv", "path": str(self.root / "tax.csv")},
            "offers": list(offers.values()),
        }
        response = self._http.post(
            provider.url + "/management/datasets", json=body, headers=provider.admin_headers
        )
        _require(response.status_code == 201, f"publish: {response.status_code} {response.text}")
        for kind, offer_id in self.offers.items():
            started = self._http.post(
                bank.url + "/management/negotiations",
                json={"provider": PROVIDER, "datasetId": DATASET, "offerId": offer_id},
                headers=bank.admin_headers,
            )
            _require(started.status_code == 201, f"negotiate: {started.text}")
            pid = started.json()["id"]
            view = settled(
                lambda path: self._http.get(bank.url + path, headers=bank.admin_headers).json(),
                pid,
                60,
            )
            _require(view["state"] == "FINALIZED", f"set-up negotiation ended {view}")
            self.agreements[kind] = str(view["agreementId"])
            self.counters[self.agreements[kind]] = 0
            self.accounts[self.agreements[kind]] = account_key(BANK, DATASET, offer_id)

    # -- clients ----------------------------------------------------------------------------
    def signed(self, name: str) -> SignedClient:
        """A signed client acting as member ``name`` (its key and credential)."""
        credential = self._credentials[name]
        return SignedClient(name, self._keys[name], lambda: credential, timeout=HTTP_TIMEOUT)

    # -- drivers ------------------------------------------------------------------------------
    def _guard(self, what: str, stop: threading.Event, step: Callable[[], None]) -> None:
        while not stop.is_set():
            try:
                step()
            except (httpx.TransportError, NotReadyError) as exc:
                with self.acked.lock:
                    self.acked.errors[f"{what}: {type(exc).__name__}"] += 1
            except HarnessFailure as exc:
                with self.acked.lock:
                    self.acked.unexpected.append(f"{what}: {exc}")
                return

    def _use_driver(self, kind: str, stop: threading.Event, pause: float) -> None:
        provider = self.nodes[PROVIDER]
        agreement = self.agreements[kind]
        with self.signed(BANK) as client:

            def step() -> None:
                query = f"q-{uuid.uuid4().hex[:16]}"
                header = {
                    "query": query,
                    "agreement": agreement,
                    "dataset": DATASET,
                    "purpose": PURPOSE,
                    "kind": "score",
                    "protocol": "paillier",
                    "columns": ["tax_paid"],
                    "size": 4,
                }
                response = client.request(
                    "POST",
                    f"{provider.url}/compute/align.open",
                    audience=PROVIDER,
                    content=frame(header, b""),
                    content_type=COMPUTE_CONTENT_TYPE,
                    check=False,
                )
                self.acked.status("use", response.status_code)
                if response.status_code == 200:
                    reply, _ = unframe(response.content)
                    receipt = reply["receipt"]
                    with self.acked.lock:
                        self.acked.uses.append((agreement, query, receipt))
                        self.acked.notes.setdefault(PROVIDER, []).append(receipt["checkpoint"])
                elif response.status_code == 403:
                    problem = response.json()
                    with self.acked.lock:
                        self.acked.refusals.append(
                            (agreement, int(problem["decisionIndex"]), problem["trace"])
                        )
                elif response.status_code >= 500 and response.status_code != 503:
                    raise HarnessFailure(f"use answered {response.status_code}: {response.text}")
                time.sleep(pause)

            self._guard(f"use/{kind}", stop, step)

    def _negotiation_driver(self, stop: threading.Event) -> None:
        bank = self.nodes[BANK]

        def step() -> None:
            started = self._http.post(
                bank.url + "/management/negotiations",
                json={"provider": PROVIDER, "datasetId": DATASET, "offerId": self.offers[STEADY]},
                headers=bank.admin_headers,
            )
            self.acked.status("negotiation", started.status_code)
            if started.status_code == 201:
                view = self._http.get(
                    f"{bank.url}/management/negotiations/{started.json()['id']}",
                    headers=bank.admin_headers,
                ).json()
                with self.acked.lock:
                    self.acked.negotiations.setdefault(str(view["providerPid"]), "REQUESTED")
            elif started.status_code == 500:
                raise HarnessFailure(f"negotiation answered 500: {started.text}")
            time.sleep(0.15)

        self._guard("negotiation", stop, step)

    def _checkpoint_driver(self, stop: threading.Event) -> None:
        provider, operator = self.nodes[PROVIDER], self.nodes[OPERATOR]

        def step() -> None:
            submitted = self._http.post(
                provider.url + "/management/ledger/checkpoint", headers=provider.admin_headers
            )
            self.acked.status("checkpoint.submit", submitted.status_code)
            if submitted.status_code == 200:
                self.acked.note(PROVIDER, str(submitted.json()["note"]))
            elif submitted.status_code >= 500 and submitted.status_code != 503:
                raise HarnessFailure(f"checkpoint answered {submitted.status_code}")
            for name, node in ((PROVIDER, provider), (OPERATOR, operator)):
                got = self._http.get(node.url + "/ledger/checkpoint")
                self.acked.status("checkpoint.get", got.status_code)
                if got.status_code == 200:
                    self.acked.note(name, got.text)
            time.sleep(0.03)

        self._guard("checkpoint", stop, step)

    def _dealer_call(self, client: SignedClient, batch: str) -> httpx.Response:
        operator = self.nodes[OPERATOR]
        header = {
            "session": self.dealer_session,
            "batch": batch,
            "parties": [PROVIDER, BANK],
            "left": [2, 3],
            "right": [3, 1],
        }
        return client.request(
            "POST",
            f"{operator.url}/compute/dealer.triple",
            audience=OPERATOR,
            content=frame(header, b""),
            content_type=COMPUTE_CONTENT_TYPE,
            check=False,
        )

    def _record_triple(self, party: str, batch: str, response: httpx.Response) -> None:
        self.acked.status("triple", response.status_code)
        if response.status_code == 200:
            _, payload = unframe(response.content)
            digest = hashlib.sha256(payload).hexdigest()
            key = (self.dealer_session, batch, party)
            with self.acked.lock:
                if key in self.acked.triples:
                    self.acked.duplicate_triples.append(key)
                self.acked.triples[key] = digest
        elif response.status_code >= 500 and response.status_code != 503:
            raise HarnessFailure(f"dealer answered {response.status_code}: {response.text}")

    def _dealer_driver(self, stop: threading.Event, seed: int) -> None:
        rng = np.random.default_rng(seed)
        clients = self._clients

        def step() -> None:
            batch = f"b-{uuid.uuid4().hex[:12]}"
            order = [PROVIDER, BANK] if rng.random() < 0.5 else [BANK, PROVIDER]
            for party in order:
                self._record_triple(party, batch, self._dealer_call(clients[party], batch))
                if stop.is_set():
                    return
            if rng.random() < 0.3:  # ask again for a share already dealt: must be refused
                party = order[0]
                self._record_triple(party, batch, self._dealer_call(clients[party], batch))

        self._guard("dealer", stop, step)

    # -- one round ------------------------------------------------------------------------------
    def round(self) -> None:
        """Drive, kill the provider and the operator at random moments, restart, check."""
        provider, operator = self.nodes[PROVIDER], self.nodes[OPERATOR]
        stop = threading.Event()
        drivers = [
            threading.Thread(target=self._use_driver, args=(STEADY, stop, 0.0)),
            threading.Thread(target=self._use_driver, args=(STEADY, stop, 0.0)),
            threading.Thread(target=self._use_driver, args=(LIMITED, stop, 0.02)),
            threading.Thread(target=self._negotiation_driver, args=(stop,)),
            threading.Thread(target=self._checkpoint_driver, args=(stop,)),
            threading.Thread(
                target=self._dealer_driver, args=(stop, int(self.rng.integers(2**32)))
            ),
        ]
        kills = sorted(
            [
                (float(self.rng.uniform(0, self.max_delay)), provider),
                (float(self.rng.uniform(0, self.max_delay)), operator),
            ],
            key=lambda pair: pair[0],
        )
        begin = time.monotonic()
        for thread in drivers:
            thread.daemon = True
            thread.start()
        for at, node in kills:
            pause = begin + at - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            self._kill(node)
        stop.set()
        for node in (provider, operator):
            self._start(node)
        for node in (provider, operator):
            self._wait(node)
        for thread in drivers:
            thread.join(timeout=60)
            _require(not thread.is_alive(), "a driver is stuck 60 s after the restart")
        self.rounds += 1
        self.check()

    # -- checks -----------------------------------------------------------------------------
    def check(self) -> None:
        """Every invariant of the module docstring, against the restarted nodes."""
        acked = self.acked
        with acked.lock:
            _require(not acked.unexpected, f"unexpected answers: {acked.unexpected[:5]}")
            _require(
                not acked.duplicate_triples,
                f"a triple share was handed out twice: {acked.duplicate_triples[:5]}",
            )
            notes = {name: list(texts) for name, texts in acked.notes.items()}
            acked.notes.clear()
        for name in (PROVIDER, OPERATOR):
            self._check_ledger(self.nodes[name], notes.get(name, []))
        self._check_uses()
        self._check_counters()
        self._check_negotiations()
        self._check_triples()

    def _fetch_entries(self, node: Node, start: int, end: int) -> list[bytes]:
        out: list[bytes] = []
        while start + len(out) < end:
            page = self._http.get(
                node.url + "/ledger/entries", params={"start": start + len(out), "end": end}
            )
            _require(page.status_code == 200, f"{node.name} entries: {page.status_code}")
            raw = page.json()["entries"]
            _require(bool(raw), f"{node.name} served no entries below its checkpoint size")
            out.extend(base64.b64decode(e) for e in raw)
        return out

    def _check_ledger(self, node: Node, notes: list[str]) -> None:
        view = node.ledger
        assert view is not None
        response = self._http.get(node.url + "/ledger/checkpoint")
        _require(response.status_code == 200, f"{node.name} checkpoint: {response.status_code}")
        head = open_checkpoint(response.text, view.vkey)
        _require(
            head.size >= view.size,
            f"{node.name}'s ledger shrank from {view.size} to {head.size} entries",
        )
        new = self._fetch_entries(node, view.size, head.size)
        self._tally(node.name, view.size, new)
        view.entries.extend(new)
        view.leaves.extend(leaf_hash(e) for e in new)
        view.size = head.size
        _require(
            view.tree.root(head.size) == head.root,
            f"{node.name}: the entries do not hash to its checkpoint after the restart "
            "(an entry fetched before was changed)",
        )
        by_size: dict[int, Checkpoint] = {}
        for text in [*view.seen, *notes]:
            old = open_checkpoint(text, view.vkey)
            _require(
                old.size <= head.size,
                f"{node.name} published a checkpoint of size {old.size} before the kill, "
                f"but holds {head.size} entries after it (acknowledged entries were lost)",
            )
            _require(
                view.tree.root(old.size) == old.root,
                f"{node.name}: history at size {old.size} was rewritten across the crash",
            )
            by_size[old.size] = old
        for size, old in sorted(by_size.items()):
            # Every head seen before the kill is linked to the new one by a consistency proof:
            # the node's own for the newest of them, ours (from the entries) for the others.
            if size == max(by_size):
                answer = self._http.get(
                    node.url + "/ledger/proof/consistency",
                    params={"first": size, "second": head.size},
                )
                _require(answer.status_code == 200, f"{node.name} proof: {answer.status_code}")
                proof = [bytes.fromhex(h) for h in answer.json()["proof"]]
            else:
                proof = view.tree.consistency_proof(size, head.size)
            verify_consistency(size, head.size, proof, old.root, head.root)
        view.linked.extend([*view.seen, *notes])
        view.seen = [response.text]

    def _tally(self, name: str, start: int, entries: list[bytes]) -> None:
        """Keep what the counter and dealer checks need from newly fetched entries."""
        for offset, entry in enumerate(entries):
            event = decode_event(start + offset, entry)
            body = event.body
            if event.kind == "policy.decision" and body["allowed"]:
                self._decided.setdefault(str(body["agreement"]), []).append(int(body["uses"]))
            elif event.kind == "query.use":
                self._logged[str(body["agreement"])] += 1
            elif event.kind == "triple.dealt" and name == OPERATOR:
                self._dealt.add((str(body["session"]), str(body["batch"]), str(body["party"])))

    def _check_uses(self) -> None:
        view = self.nodes[PROVIDER].ledger
        assert view is not None
        with self.acked.lock:
            uses = self.acked.uses[self.acked.checked_uses :]
            refusals = self.acked.refusals[self.acked.checked_refusals :]
            self.acked.checked_uses += len(uses)
            self.acked.checked_refusals += len(refusals)
        for agreement, query, doc in uses:
            receipt = Receipt.from_json(doc)
            receipt.verify(view.vkey)
            _require(
                receipt.index < view.size and view.entries[receipt.index] == receipt.entry,
                f"acknowledged use {query} (entry {receipt.index}) is not in the ledger",
            )
            event = decode_event(receipt.index, receipt.entry)
            _require(
                event.kind == "query.use"
                and event.body["query"] == query
                and event.body["agreement"] == agreement,
                f"receipt of {query} is for another entry: {event}",
            )
        for agreement, index, trace in refusals:
            _require(index < view.size, f"acknowledged refusal {index} is not in the ledger")
            event = decode_event(index, view.entries[index])
            _require(
                event.kind == "policy.decision"
                and event.body["allowed"] is False
                and event.body["agreement"] == agreement,
                f"refusal entry {index} is {event}",
            )
            _require(
                agreement == self.agreements[LIMITED]
                and any(s.get("left_operand") == "count" and s.get("blocking") for s in trace),
                f"a refusal that does not name count: {trace}",
            )

    def _check_counters(self) -> None:
        uses = self._decided
        logged = self._logged
        with self.acked.lock:
            acked = Counter(a for a, _, _ in self.acked.uses)
        with self.nodes[PROVIDER].store() as store, store.transaction(readonly=True) as tx:
            stored = {a: tx.counter(COUNT_NAMESPACE, self.accounts[a]) for a in self.counters}
        for agreement, value in stored.items():
            _require(
                value >= self.counters[agreement],
                f"count of {agreement} went backwards: {self.counters[agreement]} -> {value}",
            )
            _require(
                value == logged[agreement] and uses.get(agreement, []) == list(range(1, value + 1)),
                f"count of {agreement} is {value} but the ledger logs {logged[agreement]} uses "
                f"numbered {uses.get(agreement, [])[:10]}...",
            )
            _require(
                value >= acked[agreement],
                f"{acked[agreement]} uses of {agreement} were acknowledged, the counter is {value}",
            )
            self.counters[agreement] = value
        limited = stored[self.agreements[LIMITED]]
        _require(limited <= self.limit, f"count limit {self.limit} exceeded: {limited}")

    def _check_negotiations(self) -> None:
        with self.nodes[PROVIDER].store() as store, store.transaction(readonly=True) as tx:
            states = {
                str(d.body.get("providerPid", d.key)): str(d.body["state"])
                for d in tx.scan(NEGOTIATION_NAMESPACE)
            }
        with self.acked.lock:
            for pid, before in self.acked.negotiations.items():
                now = states.get(pid)
                _require(now is not None, f"acknowledged negotiation {pid} was lost")
                assert now is not None
                terminal_changed = before in ("FINALIZED", "TERMINATED") and now != before
                _require(
                    _STATE_RANK[now] >= _STATE_RANK[before] and not terminal_changed,
                    f"negotiation {pid} went back from {before} to {now}",
                )
                self.acked.negotiations[pid] = now

    def _check_triples(self) -> None:
        dealt = self._dealt
        with self.acked.lock:
            triples = dict(self.acked.triples)
        missing = [k for k in triples if k not in dealt]
        _require(not missing, f"acknowledged triple shares not on the dealer's ledger: {missing}")
        digests = Counter(triples.values())
        _require(
            all(n == 1 for n in digests.values()), "two answers of the dealer hold the same share"
        )
        if triples:  # ask again for a share dealt before the kill: it must be refused
            keys = sorted(triples)
            _, batch, party = keys[int(self.rng.integers(len(keys)))]
            self._record_triple(party, batch, self._dealer_call(self._clients[party], batch))
            with self.acked.lock:
                _require(
                    not self.acked.duplicate_triples,
                    f"a dealt share was dealt again after the restart: "
                    f"{self.acked.duplicate_triples}",
                )

    # -- the end ------------------------------------------------------------------------------
    def finish(self) -> dict[str, Any]:
        """Whole-ledger verification, the witness still cosigning; return the figures."""
        provider, operator = self.nodes[PROVIDER], self.nodes[OPERATOR]
        submitted = self._http.post(
            provider.url + "/management/ledger/checkpoint", headers=provider.admin_headers
        )
        _require(submitted.status_code == 200, f"final checkpoint: {submitted.status_code}")
        cosigned = bool(submitted.json()["cosigned"])
        self.acked.note(PROVIDER, str(submitted.json()["note"]))
        self.check()
        for node in (provider, operator):
            view = node.ledger
            assert view is not None
            entries = self._fetch_entries(node, 0, view.size)
            verify_log(entries, view.seen[-1], view.vkey, previous=view.linked)
        with operator.store() as store, store.transaction(readonly=True) as tx:
            forks = tx.scan(FORK_NAMESPACE)
        _require(
            not forks,
            f"the witness holds {len(forks)} fork reports for honest nodes after the crashes: "
            f"{[f.key for f in forks][:3]}",
        )
        _require(cosigned, "the witness no longer cosigns the provider's checkpoints")
        with self.acked.lock:
            return {
                "rounds": self.rounds,
                "kills": self.kills,
                "uses": len(self.acked.uses),
                "refusals": len(self.acked.refusals),
                "negotiations": len(self.acked.negotiations),
                "triples": len(self.acked.triples),
                "checkpoints": len(provider.ledger.linked) if provider.ledger else 0,
                "provider_entries": provider.ledger.size if provider.ledger else 0,
                "operator_entries": operator.ledger.size if operator.ledger else 0,
                "counters": dict(self.counters),
                "transport_errors": sum(self.acked.errors.values()),
                "statuses": {f"{w} {c}": n for (w, c), n in sorted(self.acked.statuses.items())},
            }
