"""The ``train.deal`` and ``train.*`` headers: each reads back what it wrote; a bad field is
named."""

from __future__ import annotations

from typing import Any

import pytest

from trusted_space.errors import ValidationError, VerificationError
from trusted_space.protocols.train.wire import (
    DealerSpec,
    DealMaterial,
    DealSeed,
    EpochStarted,
    Folded,
    MaterialDealt,
    ModelRecorded,
    Revealed,
    SeedDealt,
    ShareReceived,
    StepDone,
    TrainEpoch,
    TrainFetch,
    TrainFinish,
    TrainFold,
    TrainOffset,
    TrainOpen,
    TrainOpened,
    TrainReceived,
    TrainRef,
    TrainReveal,
    TrainShare,
    TrainStep,
    TrainWeights,
    deal_key,
)
from trusted_space.queries.train import TrainParams
from trusted_space.transport import frame, unframe

SPEC = DealerSpec(n_train=32, n_valid=8, batch=16, columns=8, knots=6, epochs=2)


def _over_the_wire(header: dict[str, Any]) -> dict[str, Any]:
    return unframe(frame(header))[0]


def _seed() -> DealSeed:
    return DealSeed("urn:uuid:q-1", "bank", ("bank", "court"), SPEC)


def _open(**changes: Any) -> TrainOpen:
    values: dict[str, Any] = {
        "query": "urn:uuid:q-1",
        "protocol": "additive",
        "mode": "party-held",
        "purpose": "credit-risk",
        "agreement": "urn:uuid:a-1",
        "dataset": "ds-tax",
        "columns": ("income", "debt"),
        "id_kind": "uscc",
        "missing": "impute",
        "operator": "operator",
        "compute_party": "court",
        "layout": (("bank", 1), ("court", 2), ("tax-bureau", 2)),
        "params": TrainParams(epochs=3, batch_size=64, validation=0.25),
        "entities": 100,
        "feature_bound": 64.0,
        "model_id": "urn:uuid:m-1",
    }
    values.update(changes)
    return TrainOpen(**values)


MESSAGES = [
    _seed(),
    MaterialDealt(2, 3, 4),
    _open(),
    _open(mode="analyst-held", missing="fail", id_kind="opaque"),
    TrainReceived(2),
    TrainOpened("urn:uuid:q-1", 100),
    TrainRef("urn:uuid:q-1"),
    ShareReceived("urn:uuid:q-1", 2),
    TrainStep("urn:uuid:q-1", 2, 17),
    StepDone("urn:uuid:q-1", True),
    Revealed("urn:uuid:q-1", 3),
    TrainWeights("urn:uuid:q-1", "bank"),
    TrainOffset("urn:uuid:q-1", "bank"),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_reads_back_what_it_wrote(message: Any) -> None:
    assert type(message).from_header(_over_the_wire(message.to_header())) == message


def test_messages_with_their_context_read_back() -> None:
    material = DealMaterial("urn:uuid:q-1", "bank", 2, 3, 2)
    header = _over_the_wire(material.to_header())
    assert deal_key(header) == ("urn:uuid:q-1", "bank", "material")
    assert DealMaterial.from_header(header, epochs=2, batches=5) == material
    assert SeedDealt.from_header(_over_the_wire(SeedDealt(1).to_header()), 1) == SeedDealt(1)


def test_the_headers_keep_their_wire_keys() -> None:
    assert list(_seed().to_header()) == ["session", "analyst", "op", "parties", "spec"]
    assert list(SPEC.to_json()) == ["nTrain", "nValid", "batch", "columns", "knots", "epochs"]
    assert _seed().to_header()["op"] == "seed"
    assert DealMaterial("s", "a", 1, 0, 1).to_header() == {
        "session": "s",
        "analyst": "a",
        "op": "material",
        "epoch": 1,
        "first": 0,
        "count": 1,
    }


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"session": ""}, "header.session: expected a non-empty string"),
        ({"op": "triple"}, "header.op: 'seed' or 'material'"),
        ({"parties": ["court", "bank"]}, "header.parties: [analyst, compute party]"),
        ({"parties": ["bank"]}, "header.parties: [analyst, compute party]"),
        ({"parties": ["bank", "bank"]}, "header.parties: two distinct parties"),
        ({"spec": []}, "header.spec: expected an object"),
        ({"spec": {**SPEC.to_json(), "knots": 1}}, "header.knots: expected an integer in [2, 16]"),
    ],
)
def test_a_bad_seed_request_is_named(changes: dict[str, Any], message: str) -> None:
    header = {**_seed().to_header(), **changes}
    with pytest.raises(ValidationError) as info:
        DealSeed.from_header(header)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"epoch": 3}, "header.epoch: expected an integer in [1, 2]"),
        ({"first": 5}, "header.first: expected an integer in [0, 4]"),
        ({"count": 3}, "header.count: expected an integer in [1, 2]"),
        ({"op": "seed"}, "header.op: 'seed' or 'material'"),
    ],
)
def test_a_bad_material_request_is_named(changes: dict[str, Any], message: str) -> None:
    header = {**DealMaterial("s", "bank", 1, 3, 1).to_header(), **changes}
    with pytest.raises(ValidationError) as info:
        DealMaterial.from_header(header, epochs=2, batches=5)
    assert str(info.value) == message


def test_a_seed_for_another_party_is_refused() -> None:
    with pytest.raises(ValidationError, match="the dealer sent no seed for party 1"):
        SeedDealt.from_header({"party": 0}, 1)
    with pytest.raises(ValidationError, match="the dealer sent no seed for party 0"):
        SeedDealt.from_header({}, 0)


def test_the_open_header_keeps_its_wire_keys() -> None:
    header = _open().to_header()
    assert list(header) == [
        "query",
        "protocol",
        "mode",
        "purpose",
        "agreement",
        "dataset",
        "columns",
        "idKind",
        "missing",
        "operator",
        "computeParty",
        "layout",
        "params",
        "entities",
        "featureBound",
        "modelId",
    ]
    assert header["layout"][0] == {"party": "bank", "columns": 1}
    assert TrainOpen.key(header) == "urn:uuid:q-1"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"query": None}, "header.query: expected a non-empty string"),
        ({"protocol": "paillier"}, "header.protocol: training runs on 'additive'"),
        ({"mode": "both"}, "header.mode: one of"),
        ({"idKind": "vat"}, "header.idKind / header.missing: unknown value"),
        ({"layout": [{"party": "bank", "columns": 1}]}, "header.layout: expected the column"),
        ({"layout": [["bank", 1], ["court", 2]]}, "header.layout: expected objects"),
        (
            {"layout": [{"party": "bank", "columns": 1}, {"party": "bank", "columns": 2}]},
            "header.layout: a party appears twice",
        ),
        ({"columns": ["a", "a"]}, "header.columns: expected a list of distinct column names"),
        ({"entities": 1}, "header.entities: expected an integer in [2,"),
        ({"featureBound": 0}, "header.featureBound: expected a positive finite number"),
        ({"modelId": ""}, "header.modelId: expected a non-empty string"),
    ],
)
def test_a_bad_open_field_is_named(changes: dict[str, Any], message: str) -> None:
    header = {**_open().to_header(), **changes}
    with pytest.raises(ValidationError) as info:
        TrainOpen.from_header(header)
    assert str(info.value).startswith(message)


def test_bad_open_params_are_refused() -> None:
    header = {**_open().to_header(), "params": {"epochs": 0}}
    with pytest.raises(ValidationError):
        TrainOpen.from_header(header)


def test_the_step_messages_read_back_with_their_context() -> None:
    def wire(message: Any) -> dict[str, Any]:
        return _over_the_wire(message.to_header())

    epoch = TrainEpoch("q", 2)
    assert TrainEpoch.from_header(wire(epoch), 3) == epoch
    started = EpochStarted("q", 2, {"index": 5})
    assert EpochStarted.from_header(wire(started), "tax-bureau", 2) == started
    share = TrainShare("q", "bank", 100, 2)
    assert TrainShare.key(wire(share)) == ("bank", "q")
    assert TrainShare.from_header(wire(share), 100, 2) == share
    fetch = TrainFetch("q", 800)
    assert TrainFetch.from_header(wire(fetch), 1600) == fetch
    reveal = TrainReveal("q", 2)
    assert TrainReveal.from_header(wire(reveal), 2) == reveal
    finish = TrainFinish("q", "ab" * 32)
    assert TrainFinish.from_header(wire(finish), "analyst-held") == finish
    assert TrainFinish.from_header(wire(TrainFinish("q")), "party-held") == TrainFinish("q")
    assert "modelSha256" not in TrainFinish("q").to_header()
    fold = TrainFold("q", {"kty": "DAJ", "n": "AQAB"}, {"type": "paillier.ciphertexts"})
    assert TrainFold.from_header(wire(fold), "analyst-held") == fold
    assert TrainFold.from_header(wire(TrainFold("q")), "party-held") == TrainFold("q")
    assert list(fold.to_header()) == ["query", "key", "masks"]
    folded = Folded("q", {"type": "paillier.ciphertexts"})
    assert Folded.from_header(wire(folded), "analyst-held") == folded
    assert Folded.from_header(wire(Folded("q")), "party-held") == Folded("q")
    recorded = ModelRecorded("q", "ab" * 32, 7, "weights")
    assert ModelRecorded.from_header(wire(recorded), "tax-bureau") == recorded
    assert list(recorded.to_header()) == ["query", "sha256", "ledgerIndex", "of"]


@pytest.mark.parametrize(
    ("parse", "header", "message"),
    [
        (lambda h: TrainEpoch.from_header(h, 3), {"query": "q", "epoch": 4}, "header.epoch"),
        (lambda h: TrainShare.key(h), {"query": "q", "analyst": ""}, "header.analyst"),
        (
            lambda h: TrainShare.from_header(h, 100, 2),
            {"query": "q", "analyst": "bank", "rows": 99, "columns": 2},
            "header.rows: expected an integer in [100, 100]",
        ),
        (
            lambda h: TrainShare.from_header(h, 100, 2),
            {"query": "q", "analyst": "bank", "rows": 100, "columns": 3},
            "header.columns: expected an integer in [2, 2]",
        ),
        (lambda h: TrainFetch.from_header(h, 10), {"query": "q", "offset": 11}, "header.offset"),
        (lambda h: TrainStep.from_header(h), {"query": "q", "epoch": 1, "seq": -1}, "header.seq"),
        (lambda h: TrainReveal.from_header(h, 2), {"query": "q", "epoch": 3}, "header.epoch"),
        (lambda h: TrainWeights.from_header(h), {"query": "q"}, "header.analyst"),
        (
            lambda h: TrainFinish.from_header(h, "analyst-held"),
            {"query": "q", "modelSha256": "AB" * 32},
            "header.modelSha256: 64 lower-case hex digits",
        ),
        (
            lambda h: TrainFinish.from_header(h, "analyst-held"),
            {"query": "q"},
            "header.modelSha256: expected a non-empty string",
        ),
        (lambda h: StepDone.from_header(h), {"query": "q", "done": 1}, "header.done"),
        (
            lambda h: TrainFold.from_header(h, "analyst-held"),
            {"query": "q", "key": {"kty": "DAJ"}},
            "header.masks: expected an object",
        ),
        (
            lambda h: TrainFold.from_header(h, "analyst-held"),
            {"query": "q", "key": "n", "masks": {}},
            "header.key: expected an object",
        ),
        (
            lambda h: Folded.from_header(h, "analyst-held"),
            {"query": "q", "folded": []},
            "header.folded: expected an object",
        ),
        (lambda h: TrainOffset.from_header(h), {"query": "q"}, "header.analyst"),
        (
            lambda h: ModelRecorded.from_header(h, "court"),
            {"query": "q", "sha256": "ab", "ledgerIndex": True, "of": "model"},
            "court did not record the model",
        ),
    ],
)
def test_a_bad_step_field_is_named(parse: Any, header: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse(header)
    assert str(info.value).startswith(message)


def test_an_epoch_reply_without_receipt_is_refused() -> None:
    with pytest.raises(VerificationError) as info:
        EpochStarted.from_header({"query": "q", "epoch": 1}, "tax-bureau", 1)
    assert info.value.reason == "tax-bureau returned no receipt for epoch 1"
