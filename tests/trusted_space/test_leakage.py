"""What each party must not receive, checked on every byte that crosses the network.

A wrapping handler records every call (header and payload) and every reply between the nodes of
an in-memory space; each test names one thing a party must never get and searches the recorded
traffic of that party for it, in every encoding it could travel in.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import math
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from crypto import ckks, paillier
from crypto.errors import DecryptionError, SerializationError
from crypto.sharing import BeaverMessage, TripleShare, beaver_finish, beaver_open
from trusted_space.compute import ComputeNode, InMemoryData
from trusted_space.policy import PROTOCOLS
from trusted_space.protocols import register_operator, register_provider, run_score
from trusted_space.protocols._common import encode_ring, ring_from_bytes
from trusted_space.protocols.operator import fetch_triple
from trusted_space.protocols.scaling import (
    additive_weight_bits,
    logit_bound,
    paillier_frac_bits,
    scaled_query,
)
from trusted_space.protocols.score import store_party_weights
from trusted_space.protocols.score_additive import FRAC_BITS as ADDITIVE_X_BITS
from trusted_space.protocols.score_additive import AdditiveScore
from trusted_space.protocols.score_ckks import CkksScore
from trusted_space.protocols.score_paillier import PaillierScore
from trusted_space.queries.common import MODES
from trusted_space.queries.score import Link, Model, ScoreQuery
from trusted_space.transport import Handler, RemoteError, Reply

from ._joint import ANALYST, OPERATOR, PURPOSE, Space, build_space, offer, provide

PROVIDERS = ("tax-bureau", "court")
N = 24
K = {"tax-bureau": 3, "court": 2}


@dataclass(frozen=True)
class Message:
    sender: str
    receiver: str
    operation: str
    reply: bool
    header: dict[str, Any]
    payload: bytes

    @property
    def text(self) -> bytes:
        return json.dumps(self.header, sort_keys=True).encode() + b"\0" + self.payload


class SpyData:
    """A DataAccess that records every read."""

    def __init__(self, inner: InMemoryData) -> None:
        self.inner = inner
        self.reads: list[tuple[str, str]] = []

    def columns(self, dataset_id: str) -> list[str]:
        self.reads.append(("columns", dataset_id))
        return self.inner.columns(dataset_id)

    def lookup(self, dataset_id: str, entities: Sequence[str], columns: Sequence[str]) -> Any:
        self.reads.append(("lookup", dataset_id))
        return self.inner.lookup(dataset_id, entities, columns)

    def scan(self, dataset_id: str, columns: Sequence[str], *, chunk_rows: int = 50_000) -> Any:
        self.reads.append(("scan", dataset_id))
        return self.inner.scan(dataset_id, columns, chunk_rows=chunk_rows)


@dataclass
class Recorded:
    space: Space
    log: list[Message]
    x: dict[str, npt.NDArray[np.float64]]
    w: dict[str, npt.NDArray[np.float64]]
    agreements: dict[str, str]
    datasets: dict[str, str]
    spies: dict[str, SpyData]

    def to(self, receiver: str) -> list[Message]:
        return [m for m in self.log if m.receiver == receiver]

    def query(self, protocol: str, mode: str, **kw: Any) -> ScoreQuery:
        weights = (
            tuple(
                (p, tuple((f"c{j}", float(v)) for j, v in enumerate(self.w[p]))) for p in PROVIDERS
            )
            if mode == "analyst-held"
            else ()
        )
        return ScoreQuery(
            purpose=kw.pop("purpose", PURPOSE),
            protocol=protocol,
            mode=mode,
            model=Model(0.25, Link("logistic"), weights, id="model-1"),
            agreements=self.agreements,
            datasets=self.datasets,
            entities=tuple(f"ent-{i}" for i in range(N)),
            **kw,
        )

    def partial(self, provider: str) -> npt.NDArray[np.float64]:
        return self.x[provider] @ self.w[provider]


def _record(log: list[Message], receiver: str, handler: Handler) -> Handler:
    def wrapped(sender: str, operation: str, header: dict[str, Any], payload: bytes) -> Reply:
        log.append(Message(sender, receiver, operation, False, dict(header), bytes(payload)))
        reply = handler(sender, operation, header, payload)
        log.append(Message(receiver, sender, operation, True, dict(reply.header), reply.payload))
        return reply

    return wrapped


def recorded_space(
    rng: np.random.Generator, *, refuse: str | None = None, k: dict[str, int] | None = None
) -> Recorded:
    """Two providers with data (drawn from ``rng``) and party-held weights; ``refuse``: that
    provider's offer is for another purpose than the query's."""
    space = build_space(list(PROVIDERS))
    register_operator(space.operator.node)
    x, w, agreements, datasets, spies = {}, {}, {}, {}, {}
    for p in PROVIDERS:
        node = space.providers[p].node
        register_provider(node)
        node.operator = OPERATOR
        spy = SpyData(space.providers[p].data)
        node.data = spy
        spies[p] = spy
        cols = (k or K)[p]
        x[p] = rng.uniform(-4, 4, (N, cols))
        # Continuous weights: the min-entropy the leak search's bounds rely on (see below).
        w[p] = rng.choice([-1.0, 1.0], cols) * rng.uniform(0.5, 1.5, cols) + 1e-7 * rng.random(cols)
        the_offer = offer(purpose="risk-monitoring" if p == refuse else PURPOSE)
        ds, ag = provide(
            space,
            p,
            [f"c{j}" for j in range(cols)],
            [f"ent-{i}" for i in range(N)],
            x[p],
            offer_doc=the_offer,
            ds_id=f"ds-{p}",
        )
        assert ag is not None
        store_party_weights(
            node.store, ANALYST, "model-1", {f"c{j}": float(v) for j, v in enumerate(w[p])}
        )
        agreements[p], datasets[p] = ag, ds
    log: list[Message] = []
    nodes: list[ComputeNode] = [space.operator.node, space.analyst.node] + [
        space.providers[p].node for p in PROVIDERS
    ]
    for node in nodes:
        space.network.register(node.participant_id, _record(log, node.participant_id, node.handle))
    return Recorded(space, log, x, w, agreements, datasets, spies)


# ------------------------------------------------------------------ the leak search
#
# What is searched, and how likely a search is to match by chance.
#
# A needle can match bytes that have nothing to do with the secret in two ways:
# (a) random material (ciphertexts, shares, masks, signatures, ids): a fixed b-byte pattern
#     occurs at a given position with probability 256^-b (10^-d for d decimal digits in a stream
#     of random decimal digits, the worst text);
# (b) public structured values chosen independently of the data (counts, sizes, bounds, framing):
#     a needle equals one only if the secret takes that exact value, with probability at most
#     2^-H, H the needle's min-entropy over the test's data.
# Min-entropy of the searched values: a partial sum_j x_j w_j with x_j ~ U(-4, 4) has a density of
# at most 1/(8 max_j |w_j|) <= 1/4 (recorded_space draws |w_j| from U(0.5, 1.5)), a weight one of
# 1/2, and |value| < 16 (ulp <= 2^-48). So, per value:
#   * a float64 equals a given double with P <= density * ulp <= 2^-49;
#   * round(v 2^f) equals a given integer with P <= 2^-f: too little for one value at f = 16 or
#     32, so fixed-point integers are searched only as runs of consecutive values (arrays carry
#     entities, or columns, in order), long enough for H >= 64. Values are independent given the
#     weights, so a run's min-entropy is the sum of its values'.
# One test searches at most 2^11 needles (~300 per vector of 24, four vectors) in at most 2^21
# bytes (the CKKS operator receives ~0.8 MB). Chance of a false match per test run:
#   encoding (needles)                 (a) random material            (b) public values
#   float64 windows of 2 (2^9)         2^9 * 2^21 * 2^-128            2^30 * 2^-98
#   int64 windows, f=16 x4, f=32 x2    2^10 * 2^21 * 2^-128           2^31 * 2^-64 = 2^-33
#   repr, .17g (>= 15 digits; 2^8)     0: a '.' never occurs in hex,  2^8 * 2^6 * 2^-49
#                                        base64, decimal integers
#   decimal round(v 2^64) (>= 18 dig.,
#     2^7)                             2^7 * 2^21 * 10^-18 < 2^-31    2^28 * 2^-49
#   JSON number == v or round(v 2^64)  -                              2^8 fields * 2^8 * 2^-49
#   JSON int array holding a run       -                              2^-64 per run and array
# ((b) counts every byte as a public value, except for text: the traffic writes at most 2^6
# decimal fractions in clear). Every entry is below 2^-21 -- the worst, decimal round(v 2^64)
# against public values, assumes 2 MB of public decimal integers, which no run sends -- and
# most below 2^-30. None grows with the number of runs of the suite beyond that per-run figure.
# Not searched, because no sound search exists: one fixed-point value at 16 or 32 fractional
# bits, float32, or decimal strings short enough to occur in random digits (a 6-digit string is
# found in 1 MB of random digits with probability ~1 - 1/e: the old search's chance failure).

FLOAT_RUN = 2  # float64 values per binary window: H >= 2 * 49 = 98 bits
FIXED_RUNS = {16: 4, 32: 2}  # fractional bits -> values per window: H >= 64 bits
MIN_TEXT_DIGITS = 15  # repr and .17g with fewer digits are not searched as text
MIN_FIXED_DIGITS = 18  # 10^-18 < 2^-59 per position of random digits


@dataclass
class Needles:
    """Every needle for one vector of secret values (entities, or columns, in order)."""

    text: list[bytes]  # whole numbers in the recorded text
    binary: list[bytes]  # substrings of the text and of every decoded base64/hex JSON string
    floats: set[float]  # JSON numbers equal to a value
    ints: set[int]  # JSON integers equal to round(v 2^64)
    int_runs: dict[int, set[tuple[int, ...]]]  # run length -> runs inside a JSON integer array

    def __len__(self) -> int:
        runs = sum(len(r) for r in self.int_runs.values())
        return len(self.text) + len(self.binary) + len(self.floats) + len(self.ints) + runs


def _significant_digits(text: str) -> int:
    mantissa = text.lstrip("-").split("e")[0].replace(".", "")
    return len(mantissa.lstrip("0"))


def _fixed(v: float, f: int) -> int:
    return round(math.ldexp(v, f))


def _windows(values: Sequence[Any], n: int) -> list[tuple[Any, ...]]:
    """Every run of ``n`` consecutive values (none if there are fewer: a shorter vector has
    too little entropy to be searched in that encoding)."""
    return [tuple(values[i : i + n]) for i in range(len(values) - n + 1)]


def needles(values: Iterable[float]) -> Needles:
    """The needles of one vector: every encoding listed above with enough entropy."""
    vs = [float(v) for v in values]
    out = Needles([], [], set(), set(), {})
    for v in vs:
        for text in {repr(v), f"{v:.17g}"}:
            if _significant_digits(text) >= MIN_TEXT_DIGITS:
                out.text.append(text.encode())
        wide = str(_fixed(v, 64))
        if len(wide.lstrip("-")) >= MIN_FIXED_DIGITS:
            out.text.append(wide.encode())
            out.ints.add(int(wide))
        out.floats.add(v)
    for run in _windows(vs, FLOAT_RUN):
        out.binary += [struct.pack(f"<{len(run)}d", *run), struct.pack(f">{len(run)}d", *run)]
    for f, n in FIXED_RUNS.items():
        fixed = [_fixed(v, f) for v in vs]
        for run in _windows(fixed, n):
            out.binary += [struct.pack(f"<{len(run)}q", *run), struct.pack(f">{len(run)}q", *run)]
            out.int_runs.setdefault(len(run), set()).add(run)
    return out


_B64 = re.compile(rb"[A-Za-z0-9+/_-]{16,}={0,2}")
_HEX = re.compile(rb"(?:[0-9a-fA-F]{2}){8,}")


def _decoded(strings: Iterable[str]) -> list[bytes]:
    """The bytes every long enough base64 (standard or url-safe) or hex string could stand for."""
    out: list[bytes] = []
    for s in strings:
        raw = s.encode()
        for m in _HEX.finditer(raw):
            out.append(bytes.fromhex(m.group().decode()))
        for m in _B64.finditer(raw):
            token = m.group().rstrip(b"=")
            token += b"=" * (-len(token) % 4)
            for alt in (b"+/", b"-_"):
                with contextlib.suppress(binascii.Error):
                    out.append(base64.b64decode(token, altchars=alt, validate=False))
    return out


def _walk(doc: Any, numbers: list[Any], arrays: list[list[int]], strings: list[str]) -> None:
    if isinstance(doc, dict):
        for key, value in doc.items():
            strings.append(str(key))
            _walk(value, numbers, arrays, strings)
    elif isinstance(doc, list):
        ints = [v for v in doc if isinstance(v, int) and not isinstance(v, bool)]
        if len(ints) == len(doc) and ints:
            arrays.append(ints)
        for value in doc:
            _walk(value, numbers, arrays, strings)
    elif isinstance(doc, str):
        strings.append(doc)
    elif isinstance(doc, (int, float)) and not isinstance(doc, bool):
        numbers.append(doc)


def _json_of(payload: bytes) -> Any:
    if payload[:1] not in (b"{", b"["):
        return None
    try:
        return json.loads(payload)
    except (UnicodeDecodeError, ValueError):
        return None


def _number_in(needle: bytes, text: bytes) -> bool:
    """Whether ``needle`` occurs in ``text`` as a whole number: not inside a longer one (a
    shorter repr is a prefix of a neighbouring double's 17 digits)."""
    at = text.find(needle)
    while at >= 0:
        before, after = text[at - 1 : at] if at else b"", text[at + len(needle) :][:1]
        if not (before.isdigit() or before == b".") and not (
            after.isdigit() or after in (b"e", b"E")
        ):
            return True
        at = text.find(needle, at + 1)
    return False


def found(n: Needles, message: Message) -> bool:
    """Whether ``message`` carries one of the needles ``n``."""
    text = message.text
    if any(_number_in(needle, text) for needle in n.text):
        return True
    if any(needle in text for needle in n.binary):
        return True
    numbers: list[Any] = []
    arrays: list[list[int]] = []
    strings: list[str] = []
    _walk(message.header, numbers, arrays, strings)
    _walk(_json_of(message.payload), numbers, arrays, strings)
    for x in numbers:
        if isinstance(x, float) and x in n.floats:
            return True
        if isinstance(x, int) and x in n.ints:
            return True
    for array in arrays:
        for length, runs in n.int_runs.items():
            if any(run in runs for run in _windows(array, length)):
                return True
    return any(needle in blob for blob in _decoded(strings) for needle in n.binary)


def leaked(values: Iterable[float], messages: Iterable[Message]) -> list[tuple[str, str]]:
    """(operation, sender) of every message that carries ``values`` in a searched encoding;
    ``values``: one vector, entities (or columns) in order."""
    n = needles(values)
    assert len(n), "nothing to search for"
    return [(m.operation, m.sender) for m in messages if found(n, m)]


def _respelled(v: float) -> str:
    """``v`` written with its point one digit to the right: ``-3.25`` -> ``-32.5e-1``."""
    mantissa, exponent = f"{v:.16e}".split("e")
    sign, digits = ("-" if v < 0 else ""), mantissa.lstrip("-").replace(".", "")
    text = f"{sign}{digits[:2]}.{digits[2:]}e{int(exponent) - 1}"
    assert float(text) == v
    return text


def _planted(values: Sequence[float]) -> dict[str, Message]:
    """``values`` (a vector) planted in every encoding the search claims to cover."""
    v = [float(x) for x in values]

    def ring(f: int, n: int, order: str) -> bytes:
        if len(v) < n:
            return b""  # dropped below
        return struct.pack(f"{order}{n}q", *[_fixed(x, f) for x in v[:n]])

    le_floats = np.asarray(v, dtype="<f8").tobytes()
    be_floats = np.asarray(v, dtype=">f8").tobytes()
    noise = bytes(range(256))

    def msg(header: dict[str, Any], payload: bytes = b"") -> Message:
        return Message("a", "b", "op", True, {"query": "q", **header}, noise + payload + noise)

    planted = {
        "repr in a text payload": msg({}, f"partial,{v[0]!r}\n".encode()),
        ".17g in a text payload": msg({}, f"partial={v[0]:.17g};".encode()),
        "repr ending the payload": Message("a", "b", "op", True, {}, b"x=" + repr(v[0]).encode()),
        "repr in a header string": msg({"note": f"got {v[0]!r}"}),
        "decimal 2^64 fixed point": msg({}, f"x {_fixed(v[0], 64)} y".encode()),
        "JSON float in the header": msg({"w": [1, 2, {"deep": v[0]}]}),
        # Another spelling of the same double: no text needle matches, the parsed number does.
        "JSON float in a JSON payload": Message(
            "a", "b", "op", True, {}, b'{"p": [1, %s]}' % _respelled(v[0]).encode()
        ),
        "JSON int, 2^64 fixed point": msg({"p": _fixed(v[0], 64)}),
        "JSON int array, 2^16 fixed point": msg({"a": [7] + [_fixed(x, 16) for x in v[:4]]}),
        "JSON int array, 2^32 fixed point": msg({"a": [_fixed(x, 32) for x in v[:2]] + [7]}),
        "float64 array, little endian": msg({}, le_floats),
        "float64 array, big endian": msg({}, be_floats),
        "ring64 2^16, little endian": msg({}, ring(16, 4, "<")),
        "ring64 2^16, big endian": msg({}, ring(16, 4, ">")),
        "ring64 2^32, little endian": msg({}, ring(32, 2, "<")),
        "ring64 2^32, big endian": msg({}, ring(32, 2, ">")),
        "base64 in the header": msg(
            {"data": base64.b64encode(noise[:5] + ring(32, 2, "<")).decode()}
        ),
        "url-safe base64 in a JSON payload": Message(
            "a",
            "b",
            "op",
            True,
            {},
            json.dumps({"d": base64.urlsafe_b64encode(be_floats).decode()}).encode(),
        ),
        "hex in the header": msg({"h": "ab" + le_floats.hex()}),
    }
    if len(v) < 4:  # runs of four 16-bit fixed-point values need four values
        planted = {k: m for k, m in planted.items() if "2^16" not in k}
    return planted


def test_the_search_finds_every_encoding_it_claims(rng: np.random.Generator) -> None:
    for values in (rng.uniform(-4, 4, N), rng.uniform(-1.5, 1.5, 2)):
        n = needles(values)
        assert n.text and n.binary and n.floats and n.ints and n.int_runs[2]
        for name, message in _planted(values).items():
            assert leaked(values, [message]) == [("op", "a")], name
        # Another vector is not found in any of them.
        others = [m for m in _planted(values).values()]
        assert leaked(rng.uniform(-4, 4, N), others) == []


FLOAT_ENCODINGS = (
    "repr in a text payload",
    "repr ending the payload",
    ".17g in a text payload",
    "repr in a header string",
    "decimal 2^64 fixed point",
    "JSON float in the header",
    "JSON float in a JSON payload",
    "JSON int, 2^64 fixed point",
    "float64 array, little endian",
    "float64 array, big endian",
    "url-safe base64 in a JSON payload",
    "hex in the header",
)


def test_the_search_matches_exact_values_only(rng: np.random.Generator) -> None:
    """One ulp off is another value in every encoding that holds the whole double (at 16 or 32
    fractional bits the two are the same number, and found, as they should be)."""
    v = rng.uniform(-4, 4, 4)
    planted = _planted(np.nextafter(v, np.inf))
    assert leaked(v, [planted[name] for name in FLOAT_ENCODINGS]) == []
    assert leaked(v, [planted["ring64 2^16, little endian"]]) != []


def test_the_search_never_matches_random_traffic(rng: np.random.Generator) -> None:
    """4 MB of random bytes, base64, hex and decimal digits (a few times the largest test's
    traffic) hold none of a vector's needles: the bounds above make a match there < 2^-27."""
    values = rng.uniform(-4, 4, N)
    raw = rng.bytes(1 << 20)
    digits = "".join(map(str, rng.integers(0, 10, 1 << 20))).encode()
    traffic = [
        Message("a", "b", "op", True, {"d": base64.b64encode(raw).decode()}, raw),
        Message("a", "b", "op", True, {"h": raw[: 1 << 18].hex()}, digits),
        Message("a", "b", "op", True, {"n": rng.integers(-(2**40), 2**40, 4096).tolist()}, b""),
    ]
    assert leaked(values, traffic) == []
    # What the old search looked for: 16-bit fixed point in decimal, 5 to 7 digits. One such
    # string is all but certain to occur in 1 MB of random digits.
    short = [str(_fixed(float(x), 16)).encode() for x in values]
    assert any(s in digits for s in short)


@pytest.fixture(scope="module")
def paillier_keys() -> tuple[paillier.PaillierPublicKey, paillier.PaillierPrivateKey]:
    return paillier.generate_keypair(2048)


@pytest.fixture(scope="module")
def ckks_context() -> ckks.SecretContext:
    return ckks.SecretContext.generate()


def protocol_object(name: str, keys: Any, context: ckks.SecretContext) -> Any:
    return {
        "paillier": PaillierScore(keys),
        "ckks": CkksScore(context),
        "additive": AdditiveScore(),
    }[name]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_providers_never_see_the_weights_in_clear(
    protocol: str, paillier_keys: Any, ckks_context: ckks.SecretContext, rng: np.random.Generator
) -> None:
    rec = recorded_space(rng)
    query = rec.query(protocol, "analyst-held")
    run_score(
        rec.space.transport(ANALYST),
        ANALYST,
        OPERATOR,
        query,
        protocol=protocol_object(protocol, paillier_keys, ckks_context),
    )
    for p in PROVIDERS:
        received = rec.to(p)
        assert received, "the provider took part"
        for q in PROVIDERS:  # neither its own weights nor another provider's
            assert leaked(rec.w[q], received) == []
    # The operator, too, never sees a weight.
    for q in PROVIDERS:
        assert leaked(rec.w[q], rec.to(OPERATOR)) == []


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_analyst_never_receives_a_providers_partial(
    protocol: str,
    mode: str,
    paillier_keys: Any,
    ckks_context: ckks.SecretContext,
    rng: np.random.Generator,
) -> None:
    rec = recorded_space(rng)
    result = run_score(
        rec.space.transport(ANALYST),
        ANALYST,
        OPERATOR,
        rec.query(protocol, mode),
        protocol=protocol_object(protocol, paillier_keys, ckks_context),
    )
    to_analyst = rec.to(ANALYST)
    for p in PROVIDERS:
        run_replies = [m for m in to_analyst if m.sender == p and m.operation == "score.run"]
        assert len(run_replies) == 1
        reply = run_replies[0]
        assert reply.payload == bytes(-(-N // 8))  # the missing-entity bitmap, all clear
        assert set(reply.header) <= {"query", "receipt", "rows", "missing", "maskSeed"}
        assert reply.header["missing"] == 0
        # No reply to the analyst, from anyone, carries a provider's partial in any plain form.
        assert leaked(rec.partial(p), to_analyst) == []
        # Every contribution went to the operator, never to the analyst.
        adds = [m for m in rec.log if m.operation == "aggregate.add" and m.sender == p]
        assert adds and all(m.receiver == OPERATOR for m in adds)
        # The operator sees ciphertexts or uniform shares, never a partial in the clear.
        assert leaked(rec.partial(p), rec.to(OPERATOR)) == []
    # Per-entity payloads reach the analyst only as the aggregator's sums, the missing bitmaps
    # checked above (and, additive analyst-held, the Beaver openings and its own triple shares).
    allowed = {"aggregate.take", "score.run"} | (
        {"score.beaver", "dealer.triple"}
        if (protocol, mode) == ("additive", "analyst-held")
        else set()
    )
    assert {m.operation for m in to_analyst if m.reply and m.payload} <= allowed
    assert len(result.logits) == N


@pytest.mark.parametrize("mode", MODES)
def test_a_band_release_never_sends_the_analyst_a_logit(
    mode: str, rng: np.random.Generator
) -> None:
    rec = recorded_space(rng)
    logits = 0.25 + sum(rec.partial(p) for p in PROVIDERS)
    z = np.sort(logits)
    widest = np.argsort(np.diff(z))[-2:]  # edges in the two widest gaps: no logit near one
    edges = tuple(sorted(float((z[i] + z[i + 1]) / 2) for i in widest))

    result = run_score(
        rec.space.transport(ANALYST),
        ANALYST,
        OPERATOR,
        rec.query("additive", mode, band_edges=edges),
    )

    assert result.bands is not None and result.logits.size == 0
    assert np.array_equal(result.bands, np.searchsorted(edges, logits, side="left"))
    to_analyst = rec.to(ANALYST)
    # Neither the logit nor any provider's partial reaches the analyst in any searched form.
    assert leaked(logits, to_analyst) == []
    for p in PROVIDERS:
        assert leaked(rec.partial(p), to_analyst) == []
    # The aggregator's sums go to the comparer, never to the analyst.
    assert not [m for m in to_analyst if m.operation == "aggregate.take"]
    assert {m.operation for m in to_analyst if m.reply and m.payload} <= {
        "score.run",
        "score.compare",
        "dealer.bits",
        *({"score.beaver", "dealer.triple"} if mode == "analyst-held" else ()),
    }


def test_ckks_contexts_sent_hold_no_secret_key(
    ckks_context: ckks.SecretContext, rng: np.random.Generator
) -> None:
    rec = recorded_space(rng)
    run_score(
        rec.space.transport(ANALYST),
        ANALYST,
        OPERATOR,
        rec.query("ckks", "analyst-held"),
        protocol=CkksScore(ckks_context),
    )
    contexts = [
        m.payload
        for m in rec.log
        if m.operation in ("score.open", "aggregate.open") and not m.reply
    ]
    assert len(contexts) == len(PROVIDERS) + 1
    probe = ckks_context.encrypt([1.0, 2.0])
    for raw in contexts:
        public = ckks.PublicContext.load(raw)
        with pytest.raises(DecryptionError):
            public.decrypt(public.load_vector(probe.serialize()))
        with pytest.raises(SerializationError):
            ckks.SecretContext.load(raw)
        assert not public.tenseal_context.is_private()


@pytest.mark.parametrize("mode", MODES)
def test_every_paillier_ciphertext_carries_the_protocol_exponent(
    mode: str, paillier_keys: Any, rng: np.random.Generator
) -> None:
    rec = recorded_space(rng)
    query = rec.query("paillier", mode)
    run_score(
        rec.space.transport(ANALYST),
        ANALYST,
        OPERATOR,
        query,
        protocol=PaillierScore(paillier_keys),
    )
    f = paillier.DEFAULT_FRAC_BITS
    if mode == "analyst-held":  # the bits that keep the scaled weights' rounding below 1e-8
        f = max(f, paillier_frac_bits(*logit_bound(scaled_query(query)[0])[:2]))
    partial_exponent = -2 * f if mode == "analyst-held" else -f
    seen: dict[str, set[int]] = {"weights": set(), "partials": set()}
    for m in rec.log:
        if not m.payload.startswith(b"{"):
            continue
        doc = json.loads(m.payload)
        if doc.get("type") == "paillier.ciphertexts":
            seen["weights"].add(doc["e"])
        elif doc.get("type") == "paillier.packed":
            assert doc["ciphertexts"]["e"] == partial_exponent, m.operation
            seen["partials"].add(doc["ciphertexts"]["e"])
    assert seen["partials"] == {partial_exponent}
    assert seen["weights"] == ({-f} if mode == "analyst-held" else set())


def test_no_beaver_triple_is_used_twice(rng: np.random.Generator) -> None:
    rec = recorded_space(rng)
    query = rec.query("additive", "analyst-held")
    run_score(rec.space.transport(ANALYST), ANALYST, OPERATOR, query)
    fetches = [m for m in rec.log if m.operation == "dealer.triple" and not m.reply]
    keys = [(m.header["session"], m.header["batch"], m.sender) for m in fetches]
    assert len(keys) == len(set(keys)) == 2 * len(PROVIDERS)  # one block each, both parties
    dealt = [m.header["triple"] for m in rec.log if m.operation == "dealer.triple" and m.reply]
    assert all(dealt.count(t) == 2 for t in dealt)  # each triple: one share to each party
    first = fetches[0]
    spec = {k: first.header[k] for k in ("session", "batch", "parties")}
    with pytest.raises(RemoteError) as info:  # the dealer refuses a second fetch
        fetch_triple(
            rec.space.transport(first.sender),
            OPERATOR,
            **spec,
            left=tuple(first.header["left"]),
            right=tuple(first.header["right"]),
        )
    assert info.value.status == 409 and "already dealt" in info.value.problem["detail"]
    with pytest.raises(RemoteError):  # and a provider will not run a Beaver round twice
        beaver = next(m for m in rec.log if m.operation == "score.beaver" and not m.reply)
        rec.space.transport(ANALYST).call(
            beaver.receiver, "score.beaver", beaver.header, beaver.payload
        )


@pytest.mark.parametrize("protocol", ["paillier", "additive"])
def test_a_policy_refusal_stops_the_query_before_any_data_is_used(
    protocol: str, paillier_keys: Any, ckks_context: ckks.SecretContext, rng: np.random.Generator
) -> None:
    rec = recorded_space(rng, refuse="tax-bureau")
    with pytest.raises(RemoteError) as info:
        run_score(
            rec.space.transport(ANALYST),
            ANALYST,
            OPERATOR,
            rec.query(protocol, "analyst-held"),
            protocol=protocol_object(protocol, paillier_keys, ckks_context),
        )
    err = info.value
    assert err.status == 403 and err.peer == "tax-bureau"
    trace = err.problem["trace"]
    blocking = [s for s in trace if s["blocking"]]
    assert blocking and blocking[0]["left_operand"] == "purpose"
    assert blocking[0]["seen"] == PURPOSE and blocking[0]["right_operand"] == "risk-monitoring"
    assert rec.spies["tax-bureau"].reads == []  # not one read of the refusing provider's data
    assert not [m for m in rec.log if m.operation == "aggregate.add" and m.sender == "tax-bureau"]
    # Nothing was released to the analyst: the aggregation can never complete.
    assert not [m for m in rec.log if m.operation == "aggregate.take" and m.reply]


def _dealer_attack(
    y: npt.NDArray[np.uint64],
    a: npt.NDArray[np.uint64],
    b: int,
    a1: npt.NDArray[np.uint64],
    b1: int,
    c1: npt.NDArray[np.uint64],
    guesses: npt.NDArray[np.int64],
) -> list[tuple[int, npt.NDArray[np.int64]]]:
    """What an operator that deals the triple *and* receives the provider's share can solve.

    With one column, the provider's bare share is ``C1 + (X - A)·B1 + A1·(w - B)``, so
    ``y' = y - C1 + A·B1 + A1·B = X·B1 + A1·w``: guess the fixed-point weight, solve each feature,
    keep the guesses under which every feature is small. Returns (weight, features) solutions.
    """
    u = np.uint64
    known = np.subtract(y, c1, dtype=u)
    known = np.add(known, np.multiply(a, u(b1), dtype=u), dtype=u)
    known = np.add(known, np.multiply(a1, u(b), dtype=u), dtype=u)
    shift = (b1 & -b1).bit_length() - 1  # B1 = 2^shift * odd
    inverse = u(pow(b1 >> shift, -1, 2**64))
    low = u((1 << shift) - 1)

    def solve(i: int, w: npt.NDArray[np.uint64]) -> tuple[Any, Any]:
        t = np.subtract(known[i], np.multiply(a1[i], w, dtype=u), dtype=u)
        x = np.multiply(np.right_shift(t, u(shift)), inverse, dtype=u)
        signed = np.right_shift(np.left_shift(x, u(shift)).view(np.int64), shift)
        return (np.bitwise_and(t, low) == 0) & (np.abs(signed) <= 2**ADDITIVE_X_BITS), signed

    first, _ = solve(0, guesses.view(u))
    found = []
    for w in guesses.view(u)[first]:
        features = []
        for i in range(len(known)):
            fits, x = solve(i, np.array([w], dtype=u))
            if not fits[0]:
                break
            features.append(int(x[0]))
        else:
            found.append((int(np.array([w], dtype=u).view(np.int64)[0]), np.array(features)))
    return found


def test_the_dealer_aggregator_cannot_unmask_a_providers_beaver_share(
    rng: np.random.Generator,
) -> None:
    """The operator deals the triples and sums the shares: the share it gets must be masked."""
    rec = recorded_space(rng, k={"tax-bureau": 3, "court": 1})
    query = rec.query("additive", "analyst-held")
    run_score(rec.space.transport(ANALYST), ANALYST, OPERATOR, query)
    dealt = {}
    for i, m in enumerate(rec.log):
        if m.operation == "dealer.triple" and not m.reply and m.header["batch"] == "court.0":
            dealt[m.sender] = TripleShare.from_bytes(rec.log[i + 1].payload)
    t0, t1 = dealt[ANALYST], dealt["court"]
    a = np.add(t0.a, t1.a, dtype=np.uint64)[:, 0]
    b = int(np.add(t0.b, t1.b, dtype=np.uint64)[0])
    add = next(
        m for m in rec.to(OPERATOR) if m.operation == "aggregate.add" and m.sender == "court"
    )
    received = ring_from_bytes(add.payload, N)
    # The provider's bare Beaver share, recomputed from the recorded round.
    beaver = [
        m for m in rec.log if m.operation == "score.beaver" and "court" in (m.sender, m.receiver)
    ]
    opening = beaver_open([BeaverMessage.from_bytes(m.payload) for m in beaver])
    bare = beaver_finish(t1, opening)
    # The encodings the protocol used: scaled weights at the analyst's bits, scaled features.
    scaled, exponents = scaled_query(query)
    weight_bits = additive_weight_bits(*logit_bound(scaled)[:2])
    w_true = encode_ring(scaled.model.weights_of("court"), weight_bits).view(np.int64)
    x_true = encode_ring(np.ldexp(rec.x["court"][:, 0], -exponents["court"][0]), ADDITIVE_X_BITS)
    # A window of 2^17 weight guesses around the true one (an operator that knew the weight's
    # order of magnitude): the bare share would give the weight and every feature away ...
    window = np.arange(int(w_true[0]) - 2**16, int(w_true[0]) + 2**16, dtype=np.int64)
    args = (a, b, t1.a[:, 0], int(t1.b[0]), t1.c, window)
    solutions = _dealer_attack(bare, *args)
    assert [w for w, _ in solutions] == w_true.tolist()
    assert solutions[0][1].tolist() == x_true.view(np.int64).tolist()
    # ... but what it actually receives is masked: the same attack finds nothing.
    assert not np.array_equal(received, bare)
    assert _dealer_attack(received, *args) == []
