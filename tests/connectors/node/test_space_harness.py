"""The in-process space harness itself: nodes reach each other and authenticate."""

from __future__ import annotations

from pathlib import Path

from tests.connectors._space import InProcessSpace


def test_admitted_nodes_are_ready_and_unadmitted_are_not(tmp_path: Path) -> None:
    with InProcessSpace(tmp_path) as space:
        tax = space.add("tax-bureau", ["provider"])
        assert tax.client.get("/readyz").status_code == 503
        space.admit_direct(tax)
        assert tax.client.get("/readyz").status_code == 200
        assert tax.client.get("/identity").json()["admitted"] is True


def test_signed_call_between_nodes_is_accepted_and_a_replay_is_refused(tmp_path: Path) -> None:
    with InProcessSpace(tmp_path) as space:
        bank = space.add("bank-a", ["consumer", "provider"])
        space.admit_direct(bank)
        url = f"{space.operator.url}/identity/revocations"
        # A signed request with an unsigned-list body: authentication is not needed there, so
        # exercise member auth through the runtime directly instead.
        headers = bank.runtime.client.headers_for("city-centre", "POST", url, b"{}")
        op = space.operator.runtime
        verified = op.authenticate(
            token=headers["TS-Request"],
            credential=headers["TS-Credential"],
            body=b"{}",
            method="POST",
            path="/identity/revocations",
        )
        assert verified.participant_id == "bank-a"
        try:
            op.authenticate(
                token=headers["TS-Request"],
                credential=headers["TS-Credential"],
                body=b"{}",
                method="POST",
                path="/identity/revocations",
            )
        except Exception as exc:  # the replay
            assert str(exc) == "verification failed"
            assert getattr(exc, "reason", "") == "replay"
        else:
            raise AssertionError("a replayed token was accepted")
