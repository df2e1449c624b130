"""Over HTTP: a node whose cosignature answer was lost is witnessed again, with no fork reported.

The crash harness (tests/crash) found it: the operator was killed after cosigning a provider's
checkpoint and before answering, and from then on the witness called every checkpoint of that
provider a fork. Here the lost answer is made by hand: the provider's checkpoint is cosigned
through the operator's route but the answer is thrown away.
"""

from __future__ import annotations

from pathlib import Path

from connectors.node import federation
from tests.connectors._space import InProcessSpace, admit_http, grow
from trusted_space.ledger import open_checkpoint
from trusted_space.notes import parse_vkey, verify_cosignature


def test_a_lost_cosignature_answer_is_not_a_fork(tmp_path: Path) -> None:
    with InProcessSpace(tmp_path) as space:
        tax = space.add("tax-bureau", ["provider"])
        admit_http(space, tax)
        ledger = tax.runtime.ledger
        cosign_url = f"{space.operator.url}/operator/witness/cosign"
        grow(tax, 5)
        assert federation.submit_checkpoint(tax.runtime) is not None
        grow(tax, 3)
        lost = tax.runtime.client.request(
            "POST",
            cosign_url,
            audience="city-centre",
            json_body={
                "checkpoint": ledger.checkpoint(),
                "proof": [p.hex() for p in ledger.consistency_proof(5, ledger.size())],
                "old": 5,
            },
            check=False,
        )
        assert lost.status_code == 200  # cosigned, but the node never stores the answer
        grow(tax, 4)

        cosigned = federation.submit_checkpoint(tax.runtime)

        assert cosigned is not None
        verify_cosignature(cosigned, parse_vkey(space.anchor.witness_vkey))
        assert open_checkpoint(cosigned, ledger.vkey).size == ledger.size()
        witness = space.operator.runtime.witness
        assert witness is not None
        assert witness.state.forks(ledger.origin) == []


def test_a_proof_from_another_size_is_409_naming_the_witness_size(tmp_path: Path) -> None:
    with InProcessSpace(tmp_path) as space:
        tax = space.add("tax-bureau", ["provider"])
        admit_http(space, tax)
        grow(tax, 6)
        assert federation.submit_checkpoint(tax.runtime) is not None
        grow(tax, 2)
        ledger = tax.runtime.ledger

        answer = tax.runtime.client.request(
            "POST",
            f"{space.operator.url}/operator/witness/cosign",
            audience="city-centre",
            json_body={
                "checkpoint": ledger.checkpoint(),
                "proof": [p.hex() for p in ledger.consistency_proof(3, ledger.size())],
                "old": 3,
            },
            check=False,
        )

        assert answer.status_code == 409
        assert answer.json()["type"].endswith("/witness-size")
        assert answer.json()["witnessSize"] == 6
        witness = space.operator.runtime.witness
        assert witness is not None
        assert witness.state.forks(ledger.origin) == []
