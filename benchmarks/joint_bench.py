"""Joint-score benchmark through real nodes: ``python benchmarks/joint_bench.py --entities N
--protocol P [--protocol P ...] [--cohort] [--json]``.

For each protocol a fresh local space runs on loopback
(:class:`connectors.spaces.local.LocalSpace`): an
operator, a bank (the analyst, 4 features of its own) and 4 providers (4 features each: 20 in
all; ``--providers N`` for fewer), every node a separate ``node serve`` process. The synthetic
data are written as files (the bank and two providers as CSV, two providers as Parquet, rows
shuffled per file), registered,
negotiated over DSP, and the query runs from the bank's node exactly as ``trusted-space query
score`` runs it. Reported per protocol:

- ``entities_per_s``: entities scored / seconds of the query at the analyst node (``query_s``,
  submission to result, HTTP included; ``phases`` splits it: PSI ``align``, ``setup`` (keys),
  ``providers`` (ids out, encrypted partials to the aggregator), ``aggregate`` (sums back));
- ``api_s``: the part of ``query_s`` outside the driver's phases: submitting the query (the id
  list, checked at the node) and fetching the result (ids, logits and outputs; Arrow IPC streams
  since issue 19, JSON before); ``api_split`` divides it by the job's timestamps (``submit``,
  ``queued``, ``node``: the job outside the driver, ``fetch``);
- ``psi_align_s`` with ``--cohort`` (providers hold 95% of the bank's ids plus others);
- ``peak_rss_mb`` of every node process (``VmHWM``; worker processes alive at the end are added
  as ``workers_rss_mb``);
- ``repeat_query_s`` with ``--repeat N``: the same query run again in the same space (the
  providers' column caches warm: no file is read again);
- ``cpu_s``: CPU seconds each node process (with its reaped worker processes) and this client
  spent during the query, to see where the work goes when the cores are shared;
- ``plaintext_s``: numpy scoring of the same entities in this process, on matrices already in
  memory (``plaintext_with_join_s`` adds reading the files and joining by id);
- ``max_abs_error`` of the logits against that plaintext;
- ``kernel`` (``additive``, ``ckks``): the crypto case of ``crypto_bench`` at the query's n
  (``cases_sharing.additive_dot``, ``cases_ckks.ckks_weighted_sum``: n x 20, in this process,
  same run), with ``kernel_per_s`` and ``e2e_over_kernel``;
- ``kernel`` (``paillier``): the same partial logits computed by ``crypto.paillier`` alone in this
  process, same run: the analyst encrypts each provider's scaled weights, one engine per
  provider (2 worker processes, started before the clock; its own obfuscator pool) computes the
  packed partials over the provider's scaled features with the layout the protocol would fix,
  the four at the same time as in the query, and the sums are added and decrypted
  (``kernel_per_s``, ``kernel_cpu_s``; ``e2e_over_kernel``: the query's time over the kernel's).

Targets (issue 19), reported beside the figures, never asserted: 1M additive >= 500k/s, 1M ckks
>= 150k/s, 100k paillier >= 3,000/s, each within 5x of its kernel; peak RSS <= 1 GB per node.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cases_ckks
import cases_sharing

from connectors.spaces.local import LocalParty, LocalSpace
from crypto import paillier
from trusted_space.protocols.scaling import paillier_frac_bits
from trusted_space.queries.score import Model

PROVIDERS = ("tax-bureau", "court", "social-insurance", "utilities")
ANALYST = "bank"
FEATURES_PER_PARTY = 4
TARGETS = {
    "additive": "1M >= 500,000/s",
    "ckks": "1M >= 150,000/s",
    "paillier": "100k >= 3,000/s",
}


def _write_csv(path: Path, ids: list[str], names: list[str], x: np.ndarray) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        out = csv.writer(handle)
        out.writerow(["id", *names])
        for e, row in zip(ids, x.tolist(), strict=True):
            out.writerow([e, *(f"{v:.6f}" for v in row)])


def _write_parquet(path: Path, ids: list[str], names: list[str], x: np.ndarray) -> None:
    columns = {"id": pa.array(ids)}
    for j, name in enumerate(names):
        columns[name] = pa.array(np.round(x[:, j], 6))
    pq.write_table(pa.table(columns), path)


def make_data(
    directory: Path, n: int, *, cohort: bool, seed: int = 5, providers: int = len(PROVIDERS)
) -> tuple[list[LocalParty], Model, dict[str, Any]]:
    """Files for the bank and the providers, and a logistic model over all 20 features."""
    rng = np.random.default_rng(seed)
    ids = [f"e{i:08d}" for i in range(n)]
    truth: dict[str, Any] = {"ids": ids, "x": {}, "held": {}}
    parties = []
    weights: dict[str, dict[str, float]] = {}
    for k, party in enumerate((ANALYST, *PROVIDERS[:providers])):
        names = [f"{party.replace('-', '_')}_{j}" for j in range(FEATURES_PER_PARTY)]
        x = np.clip(rng.normal(0, 1, (n, FEATURES_PER_PARTY)), -4, 4).round(6)
        weights[party] = {
            c: float(w) for c, w in zip(names, rng.normal(0, 0.5, len(names)), strict=True)
        }
        held = np.arange(n)
        if cohort and party != ANALYST:
            held = np.sort(rng.choice(n, size=int(n * 0.95), replace=False))
        extra = [
            f"x{party[:3]}{i:08d}" for i in range(n // 20 if cohort and party != ANALYST else 0)
        ]
        order = rng.permutation(len(held) + len(extra))
        file_ids = np.array([ids[i] for i in held] + extra, dtype=object)[order]
        file_x = np.vstack([x[held], rng.normal(0, 1, (len(extra), FEATURES_PER_PARTY))])[order]
        kind = "parquet" if k >= 3 else "csv"
        path = directory / f"{party}.{kind}"
        writer = _write_parquet if kind == "parquet" else _write_csv
        writer(path, list(file_ids), names, np.clip(file_x, -4, 4).round(6))
        truth["x"][party] = x
        truth["held"][party] = set(int(i) for i in held)
        parties.append(LocalParty(party, path))
    model = Model.from_json({"intercept": -1.0, "link": "logistic", "weights": weights})
    return parties, model, truth


def plaintext(model: Model, truth: dict[str, Any], entities: list[str]) -> tuple[np.ndarray, float]:
    """Logits of ``entities`` with numpy on matrices already in memory, and the seconds taken."""
    position = {e: i for i, e in enumerate(truth["ids"])}
    rows = np.fromiter((position[e] for e in entities), dtype=np.int64, count=len(entities))
    matrices = [(truth["x"][p], model.weights_of(p)) for p in model.parties]
    start = time.perf_counter()
    z = np.full(len(rows), model.intercept)
    for x, w in matrices:
        z += x[rows] @ w
    model.apply_link(z)
    return z, time.perf_counter() - start


def plaintext_with_join(parties: list[LocalParty], model: Model, entities: list[str]) -> float:
    """Seconds to read every file, join by id and score in plaintext (the no-privacy baseline)."""
    start = time.perf_counter()
    position = {e: i for i, e in enumerate(entities)}
    z = np.full(len(entities), model.intercept)
    for party in parties:
        columns = list(model.columns(party.name))
        if party.kind == "parquet":
            table = pq.read_table(party.path, columns=["id", *columns])
            keys = table.column("id").to_pylist()
            x = np.column_stack([table.column(c).to_numpy() for c in columns])
        else:
            with party.path.open(encoding="utf-8", newline="") as handle:
                reader = csv.reader(handle)
                header = next(reader)
                at = [header.index(c) for c in columns]
                keys, rows = [], []
                for record in reader:
                    keys.append(record[0])
                    rows.append([float(record[i]) for i in at])
            x = np.asarray(rows)
        pick = [(r, position[k]) for r, k in enumerate(keys) if k in position]
        src, dst = (np.array(v, dtype=np.int64) for v in zip(*pick, strict=True))
        z[dst] += x[src] @ model.weights_of(party.name)
    model.apply_link(z)
    return time.perf_counter() - start


def _status_kb(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _descendants(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return out
    for task in tasks:
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            out.append(child)
            out.extend(_descendants(child))
    return out


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and of its reaped children (``/proc/<pid>/stat``)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = sum(int(v) for v in fields[11:15])  # utime, stime, cutime, cstime
    live = sum(_cpu_seconds_alone(c) for c in _descendants(pid))
    return ticks / os.sysconf("SC_CLK_TCK") + live


def _cpu_seconds_alone(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(v) for v in fields[11:13]) / os.sysconf("SC_CLK_TCK")


def node_cpu(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far of each node process (live worker processes included)."""
    return {name: _cpu_seconds(pid) for name, pid in pids.items()}


def node_memory(pids: dict[str, int]) -> dict[str, dict[str, float]]:
    """Peak RSS of each node process, and the peak RSS of its worker processes still alive."""
    return {
        name: {
            "peak_rss_mb": round(_status_kb(pid, "VmHWM") / 1024, 1),
            "workers_rss_mb": round(
                sum(_status_kb(c, "VmHWM") for c in _descendants(pid)) / 1024, 1
            ),
        }
        for name, pid in pids.items()
    }


def _own_cpu_seconds() -> float:
    """CPU seconds of this process and of its live worker processes."""
    return time.process_time() + sum(_cpu_seconds_alone(c) for c in _descendants(os.getpid()))


def paillier_kernel(model: Model, truth: dict[str, Any], providers: int) -> dict[str, Any]:
    """The Paillier crypto of the query without nodes or HTTP: encrypt, packed partials, decrypt.

    Mirrors the protocol's analyst-held plan: features scaled into ``[-1, 1]`` (``/ 4``, the
    files' power-of-two bound), weights times 4, ``paillier_frac_bits`` of the scaled logit
    bound, weight bound the next power of two, one addend per provider.
    """
    names = PROVIDERS[:providers]
    weights = {p: model.weights_of(p) * 4.0 for p in names}
    features = {p: truth["x"][p] / 4.0 for p in names}
    bound = float(sum(np.sum(np.abs(w)) for w in weights.values()))
    count = sum(len(w) for w in weights.values())
    frac_bits = paillier_frac_bits(bound, count)
    largest = max(float(np.max(np.abs(w))) for w in weights.values())
    public, private = paillier.generate_keypair(2048)
    layout = paillier.PackingLayout(
        key_bits=public.bits,
        frac_bits=frac_bits,
        value_bound=1.0,
        terms=FEATURES_PER_PARTY,
        weight_bound=2.0 ** max(0, math.ceil(math.log2(largest))),
        addends=len(names),
    )
    codec = paillier.IntegerCodec(frac_bits)
    with contextlib.ExitStack() as stack:
        analyst = stack.enter_context(
            paillier.PaillierEngine(public, private, codec=codec, workers=2)
        )
        engines = {
            p: stack.enter_context(paillier.PaillierEngine(public, codec=codec, workers=2))
            for p in names
        }
        for engine in (analyst, *engines.values()):  # worker processes started, not timed
            executor = engine.executor
            if executor is not None:
                list(executor.map(abs, range(4)))
        cpu_before = _own_cpu_seconds()
        started = time.perf_counter()
        encrypted = {p: analyst.encrypt(weights[p]) for p in names}

        def partial(p: str) -> paillier.PackedCiphertexts:
            return engines[p].packed_linear_combination(encrypted[p], features[p], layout)

        with ThreadPoolExecutor(len(names)) as lanes:  # the providers work at the same time
            parts = list(lanes.map(partial, names))
        total = parts[0]
        for part in parts[1:]:
            total = analyst.add_packed(total, part)
        z = analyst.decrypt_packed(total)
        seconds = time.perf_counter() - started
        cpu = _own_cpu_seconds() - cpu_before
    expected = sum(features[p] @ weights[p] for p in names)
    return {
        "kernel_s": round(seconds, 3),
        "kernel_per_s": round(len(z) / seconds, 1),
        "kernel_cpu_s": round(cpu, 2),
        "kernel_max_abs_error": float(np.max(np.abs(z - expected))),
        "kernel_frac_bits": frac_bits,
        "kernel_slots": layout.slots,
    }


def _case_kernel(record: dict[str, Any], seconds: str) -> dict[str, Any]:
    return {
        "kernel_s": round(float(record[seconds]), 3),
        "kernel_per_s": round(record["n"] / float(record[seconds]), 1),
        "kernel_max_abs_error": record["max_abs_error"],
        "kernel_case": record["case"],
        "kernel_features": record["features"],
    }


def additive_kernel(model: Model, truth: dict[str, Any], providers: int) -> dict[str, Any]:
    """``cases_sharing.additive_dot`` at the query's n: the shared n x 20 dot product, in process
    (two parties, one Beaver matrix triple per block, truncation, reconstruction)."""
    return _case_kernel(cases_sharing.additive_dot(False, len(truth["ids"])), "seconds")


def ckks_kernel(model: Model, truth: dict[str, Any], providers: int) -> dict[str, Any]:
    """``cases_ckks.ckks_weighted_sum`` at the query's n: E(w) . X for n x 20, 2 workers, plus
    the analyst's encryption and decryption (``kernel_s`` counts all three)."""
    record = cases_ckks.ckks_weighted_sum(False, len(truth["ids"]))
    record["total_seconds"] = (
        record["seconds"] + record["encrypt_seconds"] + record["decrypt_seconds"]
    )
    return _case_kernel(record, "total_seconds")


KERNELS = {"paillier": paillier_kernel, "additive": additive_kernel, "ckks": ckks_kernel}


def api_split(
    local: LocalSpace, result: dict[str, Any], start: float, end: float
) -> dict[str, float]:
    """Where the query's time outside the driver went, from the job's own timestamps.

    ``submit``: the client's request until the node had checked and queued the query; ``queued``:
    until its worker started; ``node``: the job's run outside the driver (ledger keys, catalog
    ranges, the result's JSON and its storage); ``fetch``: from the job's end until the client
    held the decoded result (the last long poll and the result's transfer).
    """
    with local.client() as client:
        view = client.status(str(result["query"]), result=False)

    def at(key: str) -> float:
        return datetime.fromisoformat(str(view[key])).timestamp()

    run = at("finishedAt") - at("startedAt")
    return {
        "submit": round(at("submittedAt") - start, 3),
        "queued": round(at("startedAt") - at("submittedAt"), 3),
        "node": round(run - float(result["timings"].get("total", 0.0)), 3),
        "fetch": round(end - at("finishedAt"), 3),
    }


def run_protocol(
    protocol: str, parties: list[LocalParty], model: Model, truth: dict[str, Any], args: Any
) -> dict[str, Any]:
    # Without --keep the space makes its own directory and removes it at the end (each run's
    # node directories are ~170 MB); with --keep they stay under a name that says which run.
    work = Path(tempfile.mkdtemp(prefix=f"joint-bench-{protocol}-")) if args.keep else None
    local = LocalSpace(parties, model, "id", work_dir=work, keep=bool(args.keep))
    record: dict[str, Any] = {
        "protocol": protocol,
        "n": args.entities,
        "providers": args.providers,
        "features": FEATURES_PER_PARTY * (1 + args.providers),
    }
    with local:
        local.start(timeout=900)
        pids = local.node_pids()
        cpu_before = node_cpu(pids)
        client_before = time.process_time()
        started = time.perf_counter()
        wall_start = time.time()
        result = local.score(protocol, entities=truth["ids"], cohort=args.cohort)
        query_s = time.perf_counter() - started
        record["api_split"] = api_split(local, result, wall_start, time.time())
        cpu_after = node_cpu(pids)
        record["cpu_s"] = {
            **{k: round(cpu_after[k] - cpu_before[k], 2) for k in pids},
            "client": round(time.process_time() - client_before, 2),
        }
        record["receipts_verified"] = len(local.verify_receipts(result))
        again = []
        for _ in range(args.repeat - 1):  # the same query again: providers' caches are warm
            mark = time.perf_counter()
            local.score(protocol, entities=truth["ids"], cohort=args.cohort)
            again.append(round(time.perf_counter() - mark, 3))
        record["peak_rss"] = node_memory(pids)
        if again:
            record["repeat_query_s"] = again
    entities = list(result["entities"])
    expected, plain_s = plaintext(model, truth, entities)
    logits = np.asarray(result["logits"])
    record.update(
        {
            "scored": len(entities),
            "query_s": round(query_s, 3),
            "entities_per_s": round(len(entities) / query_s, 1),
            "phases": {k: round(float(v), 3) for k, v in result["timings"].items()},
            "api_s": round(query_s - float(result["timings"].get("total", 0.0)), 3),
            "psi_align_s": round(float(result["timings"].get("align", 0.0)), 3)
            if args.cohort
            else None,
            "plaintext_s": round(plain_s, 6),
            "plaintext_with_join_s": round(plaintext_with_join(parties, model, entities), 3),
            "max_abs_error": float(np.max(np.abs(logits - expected))) if len(entities) else 0.0,
            "space_up_s": round(local.timings.get("spaceUp", 0.0), 2),
            "negotiate_s": round(local.timings.get("negotiate", 0.0), 2),
            "target": TARGETS.get(protocol),
        }
    )
    kernel = KERNELS[protocol](model, truth, args.providers)
    kernel["e2e_over_kernel"] = round(query_s / kernel["kernel_s"], 2)
    record["kernel"] = kernel
    return record


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entities", type=int, default=10_000)
    parser.add_argument(
        "--protocol", action="append", choices=("paillier", "ckks", "additive"), required=True
    )
    parser.add_argument("--cohort", action="store_true", help="align by PSI first")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run the query this many times in the same space (later runs: warm caches)",
    )
    parser.add_argument(
        "--providers",
        type=int,
        default=len(PROVIDERS),
        choices=range(1, len(PROVIDERS) + 1),
        help="providers besides the bank (default 4: 20 features in all)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per protocol")
    parser.add_argument("--keep", action="store_true", help="keep the node directories")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="joint-bench-data-") as data_dir:
        parties, model, truth = make_data(
            Path(data_dir), args.entities, cohort=args.cohort, providers=args.providers
        )
        for protocol in args.protocol:
            record = run_protocol(protocol, parties, model, truth, args)
            if args.json:
                print(json.dumps(record), flush=True)
            else:
                rss = ", ".join(
                    f"{k} {v['peak_rss_mb']:.0f}" for k, v in record["peak_rss"].items()
                )
                print(
                    f"{protocol:<9} n={record['scored']:>9,} {record['entities_per_s']:>11,.0f}/s "
                    f"query {record['query_s']:.2f} s (plaintext {record['plaintext_s']:.4f} s, "
                    f"with join {record['plaintext_with_join_s']:.2f} s) "
                    f"err {record['max_abs_error']:.1e}"
                    + (f" psi {record['psi_align_s']:.2f} s" if args.cohort else "")
                    + f"\n          phases {record['phases']} api {record['api_s']} s"
                    + f" {record['api_split']}"
                    + f"\n          peak RSS MB: {rss}"
                    + f"\n          CPU s during the query: {record['cpu_s']}"
                    + (
                        f"\n          again (warm): {record['repeat_query_s']} s"
                        if "repeat_query_s" in record
                        else ""
                    )
                    + (
                        f"\n          kernel (crypto only, same run): {record['kernel']}"
                        if "kernel" in record
                        else ""
                    )
                    + f"\n          target {record['target']}",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
