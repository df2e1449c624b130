"""Cancel and follow a query across real node processes (issue 17): Ctrl-C, JSON logs.

A local space (operator, bank, tax bureau: one node process each) scores 20,000 entities with
Paillier. ``trusted-space query score`` runs as a separate process, its stderr a pipe: it prints
the query's id at once and plain progress lines. The query is held mid-way by an event, never by
a race against the clock: the tax bureau's node process is stopped (SIGSTOP) before the query is
submitted, so the query waits at its first call there; the command then gets SIGINT (Ctrl-C),
and the tax node resumes (SIGCONT) only once the analyst's node is cancelling. Not on a
terminal, the command cancels the query and says so, and exits 130. What must hold:

* at the analyst's node the job is ``cancelled``, naming who cancelled it, with each party's
  answer (the provider and the operator were told);
* the provider dropped whatever session of the query it held and recorded the cancellation on
  its ledger (which of the query's opening and the cancellation the resumed node takes first is
  not fixed, so the entry counts 0 or 1 sessions; dropping open sessions is
  ``tests/trusted_space/test_cancel.py``'s);
* any later call of that query at the provider is refused (``409``): no block starts after it;
* cancelling it again is a ``409`` problem, an unknown id a ``404``.

The nodes log JSON lines (``TS_LOG_FORMAT=json``): a query submitted with an ``X-Request-Id`` is
answered with it, and its lines carry it at the analyst and at the provider its node called; no
line of any node holds an admin token or a key.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from connectors.client.http import SignedClient
from connectors.spaces.local import LocalSpace, parse_party
from tests._seeding import rng_for
from tests.integration._space import member_credential
from tests.integration.conftest import ledger_events
from trusted_space.errors import RemoteError
from trusted_space.keys import SigningKey
from trusted_space.queries.score import Model
from trusted_space.transport import frame

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROWS = 20_000
HANG_GUARD = 180.0  # seconds; a guard against a hang, never a measured figure


def _files(directory: Path) -> tuple[list[str], Path, Path]:
    rng = rng_for(f"{__name__}._files")
    ids = [f"firm-{i:05d}" for i in range(ROWS)]
    columns = {"bank": ["loans"], "tax": ["tax_paid", "employees"]}
    for party, cols in columns.items():
        values = np.round(rng.normal(0, 2, (ROWS, len(cols))), 4)
        with (directory / f"{party}.csv").open("w", newline="", encoding="utf-8") as handle:
            out = csv.writer(handle)
            out.writerow(["firm", *cols])
            for e, row in zip(ids, values, strict=True):
                out.writerow([e, *row])
    model = {
        "intercept": 0.1,
        "link": {"scorecard": {"offset": 600.0, "factor": -20.0}},
        "weights": {p: {c: 0.5 for c in cols} for p, cols in columns.items()},
    }
    (directory / "model.json").write_text(json.dumps(model), encoding="utf-8")
    return (
        [f"{p}={directory / f'{p}.csv'}" for p in columns],
        directory / "model.json",
        directory / "bank.csv",
    )


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalSpace, Path, Path]]:
    root = tmp_path_factory.mktemp("cancel")
    parties, model, ids = _files(root)
    space = LocalSpace(
        [parse_party(p) for p in parties],
        Model.from_json(json.loads(model.read_text(encoding="utf-8"))),
        "firm",
        work_dir=root / "work",
    )
    with pytest.MonkeyPatch.context() as env, space:
        env.setenv("TS_LOG_FORMAT", "json")  # the node processes inherit it
        space.start()
        yield space, model, ids


def _ctrl_c_default() -> None:
    """In the command's process: Ctrl-C as on a terminal, whatever the test run inherited.

    A test run started as a background job of a non-interactive shell (``make test &``, a CI
    runner's shell) inherits SIGINT ignored, its children too, and Python leaves an ignored
    SIGINT ignored: the command would never see the Ctrl-C this test sends.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", "from connectors.cli.main import main; main()", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"},
        preexec_fn=_ctrl_c_default,
    )


def test_ctrl_c_on_query_score_cancels_the_query_at_every_party(
    local: tuple[LocalSpace, Path, Path], tmp_path: Path
) -> None:
    space, model, ids = local
    assert space.space is not None
    bank, tax = space.space["bank"], space.space["tax"]
    os.killpg(tax.pid, signal.SIGSTOP)  # the query will wait at its first call to the tax node
    try:
        command = _cli(
            "query",
            "score",
            "--model",
            str(model),
            "--entities",
            str(ids),
            "--protocol",
            "paillier",
            "--purpose",
            "local-trial",
            "--out",
            str(tmp_path / "scores.csv"),
            "--node-dir",
            str(bank.dir),
        )
        lines: list[str] = []
        try:
            # Arrange: read stderr until the id is printed and the query waits at the tax node.
            assert command.stderr is not None
            deadline = time.monotonic() + HANG_GUARD
            while time.monotonic() < deadline:
                line = command.stderr.readline()
                if not line:
                    break
                lines.append(line.rstrip())
                if line.rstrip().endswith(" at tax"):
                    break
            assert any(line.endswith(" at tax") for line in lines), lines
            query_id = lines[0].split()[1]
            assert lines[0] == f"query {query_id} submitted"

            # Act: Ctrl-C; the tax node resumes once the analyst's node is cancelling.
            command.send_signal(signal.SIGINT)
            with space.client(timeout=60) as client:
                view = client.status(query_id)
                while view["stage"] != "cancelling" and time.monotonic() < deadline:
                    time.sleep(0.05)
                    view = client.status(query_id)
            if view["stage"] != "cancelling":
                command.kill()
                _, rest = command.communicate(timeout=HANG_GUARD)
                pytest.fail(
                    f"the analyst's node never showed the query cancelling: {view}; "
                    f"the command wrote {lines + rest.splitlines()}"
                )
            os.killpg(tax.pid, signal.SIGCONT)
            _, rest = command.communicate(timeout=HANG_GUARD)
        finally:
            if command.poll() is None:
                command.kill()
            for pipe in (command.stdout, command.stderr):
                if pipe is not None:
                    pipe.close()  # a failed assertion must not leave them to a later test
            command.wait()
    finally:
        os.killpg(tax.pid, signal.SIGCONT)
    lines += rest.splitlines()

    # Assert: the command cancelled it (not on a terminal: without asking) and exited 130.
    assert command.returncode == 130, lines
    assert f"query {query_id} cancelled at every party" in lines, lines
    with space.client(timeout=60) as client:
        view = client.status(query_id)
        assert view["state"] == "cancelled"
        assert view["cancelledBy"] == "cli"
        assert set(view["parties"]) == {"tax", "local-operator"}
        assert view["parties"]["tax"].startswith("cancelled (ledger entry ")
        # ... an ended query cannot be cancelled again; an unknown one is not found.
        with pytest.raises(RemoteError) as again:
            client.cancel(query_id)
        assert again.value.status == 409
        assert "already ended (cancelled)" in again.value.problem["detail"]
        with pytest.raises(RemoteError) as unknown:
            client.cancel("no-such-query")
        assert unknown.value.status == 404
    # ... and the CLI says so as a JSON problem document with --json (exit 1).
    again_cli = _cli("query", "cancel", query_id, "--node-dir", str(bank.dir), "--json")
    out, _ = again_cli.communicate(timeout=HANG_GUARD)
    assert again_cli.returncode == 1
    problem = json.loads(out)["problem"]
    assert problem["status"] == 409 and "already ended" in problem["detail"]

    # The provider dropped the query's session and recorded who cancelled it.
    with httpx.Client(timeout=30) as http:
        cancelled = [e.body for e in ledger_events(http, tax.url) if e.kind == "query.cancelled"]
    assert len(cancelled) == 1, cancelled
    assert {k: v for k, v in cancelled[0].items() if k != "sessions"} == {
        "query": query_id,
        "analyst": "bank",
    }
    assert cancelled[0]["sessions"] in (0, 1)

    # No block of it starts any more: the provider refuses the query's next block.
    key = SigningKey.load(bank.layout.node_key)
    credential = member_credential("bank", key, space.space.operator.url, "local-operator")
    with SignedClient("bank", key, lambda: credential, timeout=30) as signed:
        answer = signed.request(
            "POST",
            f"{tax.url}/compute/score.block",
            audience="tax",
            content=frame({"query": query_id, "block": 1}),
            content_type="application/octet-stream",
            check=False,
        )
    assert answer.status_code == 409
    assert "cancelled by its analyst" in answer.json()["detail"]


def _log_lines(path: Path) -> list[dict[str, object]]:
    """A node's JSON log lines (the space tool's own start marker lines left out)."""
    text = path.read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if not line.startswith("--- ")]


def test_a_request_id_follows_a_query_across_nodes_and_no_log_holds_a_secret(
    local: tuple[LocalSpace, Path, Path],
) -> None:
    space, _, _ = local
    assert space.space is not None
    bank, tax = space.space["bank"], space.space["tax"]
    token = bank.layout.admin_token.read_text(encoding="utf-8").strip()
    rid = f"follow-{uuid.uuid4().hex}"
    doc = {
        "purpose": "local-trial",
        "protocol": "ckks",
        "mode": "analyst-held",
        "model": space.model.to_json(),
        "agreements": dict(space.agreements),
        "datasets": {p.name: p.dataset_id for p in space.parties},
        "entities": space.entities()[:40],
    }

    # Act: submit with our id (and a malformed one, which the node replaces).
    with httpx.Client(base_url=bank.url, timeout=60) as http:
        auth = {"Authorization": f"Bearer {token}"}
        answer = http.post(
            "/management/queries/score", json=doc, headers={**auth, "X-Request-Id": rid}
        )
        malformed = http.get("/management/queries", headers={**auth, "X-Request-Id": "a b"})
    assert answer.status_code == 202, answer.text
    with space.client(timeout=60) as client:
        client.wait(answer.json()["id"])

    # Assert: the id comes back, and is on the query's lines at both nodes.
    assert answer.headers["X-Request-Id"] == rid
    assert malformed.headers["X-Request-Id"] != "a b"
    assert len(malformed.headers["X-Request-Id"]) == 32
    at_bank = [line for line in _log_lines(bank.log) if line["request_id"] == rid]
    at_tax = [line for line in _log_lines(tax.log) if line["request_id"] == rid]
    submitted = [line for line in at_bank if line["logger"] == "trusted_space.access"]
    assert submitted and submitted[0]["method"] == "POST"
    assert submitted[0]["path"] == "/management/queries/score"
    assert submitted[0]["status"] == 202
    assert isinstance(submitted[0]["duration_ms"], float)
    assert {"time", "level", "logger", "message"} <= set(submitted[0])
    tax_paths = {line.get("path") for line in at_tax}
    assert {"/compute/score.open", "/compute/score.run", "/compute/score.block"} <= tax_paths
    # ... and no node's log holds an admin token or a private key.
    nodes = list(space.space.nodes.values())
    secrets = {
        n.name: [
            n.layout.admin_token.read_text(encoding="utf-8").strip(),
            *(
                line
                for line in n.layout.node_key.read_text(encoding="utf-8").splitlines()
                if line and not line.startswith("-----")
            ),
        ]
        for n in nodes
    }
    for node in nodes:
        text = node.log.read_text(encoding="utf-8")
        for name, values in secrets.items():
            for value in values:
                assert value not in text, f"{name}'s secret in {node.name}'s log"
