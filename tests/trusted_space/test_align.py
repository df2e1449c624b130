"""PSI alignment over a transport: equals set intersection, positions point at the right rows,
policy before any id is read, messages in parts, nothing of the analyst's ids in the clear."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from crypto.psi import PsiReceiver, hash_to_point
from crypto.psi_ot import OtPsiReceiver
from tests.trusted_space._joint import ANALYST, PURPOSE, Space, build_space, offer, provide
from trusted_space.budget import set_budget
from trusted_space.compute import ComputeNode, InMemoryData
from trusted_space.errors import NotFoundError
from trusted_space.protocols import _parts
from trusted_space.protocols.align import OT_MIN_IDS, align, aligned_order, register_align
from trusted_space.transport import RemoteError, Reply

PROVIDER = "tax-bureau"
_ids = itertools.count()


def _fresh(prefix: str = "q") -> str:
    return f"{prefix}-{next(_ids)}"


class RecordingData:
    """InMemoryData that remembers every read (dataset, columns)."""

    def __init__(self, inner: InMemoryData) -> None:
        self.inner = inner
        self.reads: list[tuple[str, str, tuple[str, ...]]] = []

    def columns(self, dataset_id: str) -> list[str]:
        return self.inner.columns(dataset_id)

    def lookup(self, dataset_id: str, entities: Sequence[str], columns: Sequence[str]) -> Any:
        self.reads.append(("lookup", dataset_id, tuple(columns)))
        return self.inner.lookup(dataset_id, entities, columns)

    def scan(
        self, dataset_id: str, columns: Sequence[str], *, chunk_rows: int = 50_000
    ) -> Iterator[Any]:
        self.reads.append(("scan", dataset_id, tuple(columns)))
        return self.inner.scan(dataset_id, columns, chunk_rows=chunk_rows)


class Recorder:
    """Every call a node receives and its reply, as the bytes that crossed the transport."""

    def __init__(self, node: ComputeNode) -> None:
        self.node = node
        self.calls: list[tuple[str, str, dict[str, Any], bytes, Reply]] = []

    def __call__(
        self, sender: str, operation: str, header: dict[str, Any], payload: bytes
    ) -> Reply:
        reply = self.node.handle(sender, operation, header, payload)
        self.calls.append((sender, operation, header, payload, reply))
        return reply

    def blobs(self) -> list[bytes]:
        out = []
        for _, _, header, payload, reply in self.calls:
            out += [json.dumps(header).encode(), payload, json.dumps(reply.header).encode()]
            out.append(reply.payload)
        return out


def _space(
    keys: Sequence[str], *, offer_doc: dict[str, Any] | None = None, ot_min_ids: int = OT_MIN_IDS
) -> tuple[Space, str, str, RecordingData, Recorder]:
    space = build_space((PROVIDER,))
    party = space.providers[PROVIDER]
    ds, ag = provide(
        space,
        PROVIDER,
        ["x"],
        list(keys),
        np.arange(len(keys), dtype=float).reshape(-1, 1),
        offer_doc=offer_doc,
    )
    assert ag is not None
    recording = RecordingData(party.data)
    party.node.data = recording
    register_align(party.node, ot_min_ids=ot_min_ids)
    recorder = Recorder(party.node)
    space.network.register(PROVIDER, recorder)
    return space, ds, ag, recording, recorder


def _align(space: Space, ds: str, ag: str, ids: Sequence[str], **kw: Any) -> Any:
    args: dict[str, Any] = {
        "purpose": PURPOSE,
        "kind": "aggregate",
        "protocol": "paillier",
        "columns": ["x"],
    }
    args.update(kw)
    query = args.pop("query", _fresh())
    return align(space.transport(ANALYST), PROVIDER, query, ag, ds, ids, **args)


ids_st = st.lists(st.sampled_from([f"e{i}" for i in range(40)]), max_size=25)


@given(
    analyst=ids_st.filter(bool),
    provider=ids_st.map(lambda x: sorted(set(x))),
    method=st.sampled_from(["ecdh", "ot"]),
)
def test_alignment_equals_set_intersection_and_positions_point_at_rows(
    analyst: list[str], provider: list[str], method: str
) -> None:
    space, ds, ag, _, _ = _space(provider)
    query = _fresh()
    result = _align(space, ds, ag, analyst, query=query, psi_method=method)
    expected = [e for e in dict.fromkeys(analyst) if e in set(provider)]
    assert list(result.ids) == expected
    assert result.provider_size == len(provider)
    order = aligned_order(space.providers[PROVIDER].node, ANALYST, query, ds)
    assert sorted(order.ids) == sorted(provider)
    assert [order.ids[p] for p in result.positions] == expected


def test_positions_select_the_right_values_and_receipt_records_the_use() -> None:
    keys = [f"e{i}" for i in range(200)]
    space, ds, ag, _, _ = _space(keys)
    query = _fresh()
    result = _align(space, ds, ag, ["e3", "nope", "e150", "e77"], query=query)
    node = space.providers[PROVIDER].node
    order = aligned_order(node, ANALYST, query, ds)
    assert node.data is not None
    _, values = node.data.lookup(ds, [order.ids[p] for p in result.positions], ["x"])
    assert values[:, 0].tolist() == [3.0, 150.0, 77.0]
    assert result.receipt["participant"] == PROVIDER
    assert order.receipt == result.receipt


@pytest.mark.parametrize("method", ["ecdh", "ot"])
def test_the_provider_sees_no_analyst_id_nor_its_hash_unblinded(method: str) -> None:
    keys = [f"enterprise-{i:06d}" for i in range(50)]
    space, ds, ag, _, recorder = _space(keys)
    secret_ids = [f"applicant-{i:06d}" for i in range(30)] + keys[1:3]
    _align(space, ds, ag, secret_ids, psi_method=method)
    session = bytes.fromhex(recorder.calls[0][4].header["session"])
    blobs = recorder.blobs()
    for entity in secret_ids:
        point = hash_to_point(session, entity)
        assert not any(entity.encode() in b for b in blobs)
        assert not any(point in b for b in blobs)


@pytest.mark.parametrize("method", ["ecdh", "ot"])
def test_large_messages_travel_in_parts(monkeypatch: pytest.MonkeyPatch, method: str) -> None:
    monkeypatch.setattr(_parts, "PART_BYTES", 1024)
    keys = [f"e{i}" for i in range(300)]
    space, ds, ag, _, recorder = _space(keys)
    result = _align(space, ds, ag, [f"e{i}" for i in range(0, 600, 3)], psi_method=method)
    assert len(result.ids) == 100
    ops = [op for _, op, _, _, _ in recorder.calls]
    assert ops.count("align.request") > 5 and ops.count("align.response") > 5
    parted = [c for c in recorder.calls if c[1] != "align.open"]  # open: the 32 KiB OT setup
    assert all(len(p) <= 1024 and len(r.payload) <= 1024 for _, _, _, p, r in parted)


def test_refusal_carries_the_trace_and_no_id_is_read() -> None:
    space, ds, ag, recording, _ = _space(["e1", "e2"])
    with pytest.raises(RemoteError) as info:
        _align(space, ds, ag, ["e1"], purpose="marketing")
    assert info.value.status == 403
    assert any(
        s["left_operand"] == "purpose" and s["blocking"] for s in info.value.problem["trace"]
    )
    assert recording.reads == []


def test_min_cohort_is_checked_against_the_analyst_list_before_reading() -> None:
    space, ds, ag, recording, _ = _space(
        [f"e{i}" for i in range(20)], offer_doc=offer(min_cohort=5)
    )
    with pytest.raises(RemoteError) as info:
        _align(space, ds, ag, ["e1", "e2", "e3"])
    assert info.value.status == 403
    assert any(s["left_operand"] == "minCohort" for s in info.value.problem["trace"])
    assert recording.reads == []
    ok = _align(space, ds, ag, [f"e{i}" for i in range(6)])
    assert len(ok.ids) == 6
    score = _align(space, ds, ag, ["e1"], kind="score")  # minCohort does not apply to scores
    assert score.ids == ("e1",)


def test_budget_named_at_alignment_is_checked_before_reading() -> None:
    space, ds, ag, recording, _ = _space(["e1", "e2"])
    with pytest.raises(RemoteError) as info:
        _align(space, ds, ag, ["e1"], epsilon=0.5)
    assert info.value.status == 403
    assert info.value.problem["trace"][0]["left_operand"] == "epsilonTotal"
    assert recording.reads == []
    with space.providers[PROVIDER].node.store.transaction() as tx:
        set_budget(tx, 1.0, dataset_id=ds)
    assert _align(space, ds, ag, ["e1"], epsilon=0.5).ids == ("e1",)


def test_alignment_is_bound_to_its_analyst_and_happens_once() -> None:
    space, ds, ag, _, _ = _space(["e1", "e2"])
    query = _fresh()
    _align(space, ds, ag, ["e1"], query=query)
    node = space.providers[PROVIDER].node
    with pytest.raises(NotFoundError):
        aligned_order(node, "someone-else", query, ds)
    with pytest.raises(RemoteError) as info:
        _align(space, ds, ag, ["e2"], query=query)
    assert info.value.status == 409


def test_a_request_of_another_size_than_declared_is_refused() -> None:
    space, ds, ag, _, _ = _space(["e1", "e2"])
    transport = space.transport(ANALYST)
    header = {
        "query": "q-size",
        "agreement": ag,
        "dataset": ds,
        "purpose": PURPOSE,
        "kind": "score",
        "protocol": "ckks",
        "columns": ["x"],
        "size": 1,
    }
    opened = transport.call(PROVIDER, "align.open", header)
    request = PsiReceiver(["a", "b", "c"], bytes.fromhex(opened.header["session"])).request()
    with pytest.raises(RemoteError) as info:
        _parts.send_in_parts(
            transport, PROVIDER, "align.request", {"query": "q-size", "dataset": ds}, request
        )
    assert info.value.status == 400


def test_the_provider_chooses_ot_psi_from_its_threshold_unless_the_analyst_names_one() -> None:
    keys = [f"e{i}" for i in range(40)]
    space, ds, ag, _, recorder = _space(keys, ot_min_ids=10)
    small = _align(space, ds, ag, ["e1", "e2", "zz"])
    large = _align(space, ds, ag, [f"e{i}" for i in range(0, 80, 2)])
    named = _align(space, ds, ag, [f"e{i}" for i in range(0, 80, 2)], psi_method="ecdh")
    assert small.ids == ("e1", "e2")
    assert large.ids == named.ids == tuple(f"e{i}" for i in range(0, 40, 2))
    methods = [r.header["psi"] for _, op, _, _, r in recorder.calls if op == "align.open"]
    assert methods == ["ecdh", "ot", "ecdh"]


def test_an_ot_request_of_another_size_than_declared_is_refused() -> None:
    space, ds, ag, _, _ = _space(["e1", "e2"])
    transport = space.transport(ANALYST)
    header = {
        "query": "q-ot-size",
        "agreement": ag,
        "dataset": ds,
        "purpose": PURPOSE,
        "kind": "score",
        "protocol": "ckks",
        "columns": ["x"],
        "size": 1,
        "psi": "ot",
    }
    opened = transport.call(PROVIDER, "align.open", header)
    session = bytes.fromhex(opened.header["session"])
    request = OtPsiReceiver([f"a{i}" for i in range(500)], session).request(opened.payload)
    with pytest.raises(RemoteError) as info:
        _parts.send_in_parts(
            transport, PROVIDER, "align.request", {"query": "q-ot-size", "dataset": ds}, request
        )
    assert info.value.status == 400
    header["query"] = "q-ot-same-bins"  # 1 and 90 ids make requests of one length: counts differ
    opened = transport.call(PROVIDER, "align.open", header)
    session = bytes.fromhex(opened.header["session"])
    request = OtPsiReceiver([f"a{i}" for i in range(90)], session).request(opened.payload)
    with pytest.raises(RemoteError) as info:
        _parts.send_in_parts(
            transport,
            PROVIDER,
            "align.request",
            {"query": "q-ot-same-bins", "dataset": ds},
            request,
        )
    assert info.value.status == 400
