"""Online scoring benchmark: ``python benchmarks/online_bench.py --protocol P [--protocol P ...]
[--clients C] [--duration S] [--batch-duration S] [--entities N] [--json]``.

For each protocol a fresh local space runs on loopback (:class:`connectors.spaces.local.LocalSpace`,
the data of ``joint_bench``): an operator, a bank (consumer and provider, 4 features) and four
providers (4 features each), every node a separate ``node serve`` process. ``C`` client threads,
each with its own HTTP client, score one applicant at a time through the bank's synchronous API
(``POST /management/score``, :meth:`AnalystClient.score_now`) for ``S`` seconds, each client
its own applicants in turn. Every answer's receipts are verified here against the providers'
ledger keys. Reported per protocol (JSON with ``--json``):

- ``serving``: ``latency_ms`` (p50, p95, p99, max), ``scores_per_s``, ``answers``, ``errors``
  (by HTTP status), ``receipts_verified``, ``runs`` and ``largest_run`` (from the node's session
  view: how many requests shared a protocol run), ``cpu_s`` per node process and the client;
- ``batch_path``: the same clients scoring one applicant at a time through the batch path
  (``POST /management/queries/score`` and polling) for ``--batch-duration`` seconds:
  ``scores_per_s`` and latencies, the baseline of the same run;
- ``max_abs_error`` of the served logits against plaintext, and ``max_abs_diff_batch`` against
  the batch path's logits of the same applicants;
- ``load_avg`` of the host before and after (the cores are shared).

Targets (issue 16), reported beside the figures, never asserted: additive and ckks p50 <= 100 ms,
p99 <= 400 ms, >= 50 scores/s; paillier >= 10 scores/s.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from joint_bench import make_data, node_cpu, plaintext

from connectors.client.results import verify_receipts
from connectors.spaces.local import LOCAL_PURPOSE, LocalParty, LocalSpace
from trusted_space.errors import TrustedSpaceError
from trusted_space.queries.score import Model

TARGETS = {
    "additive": {"p50_ms": 100, "p99_ms": 400, "scores_per_s": 50},
    "ckks": {"p50_ms": 100, "p99_ms": 400, "scores_per_s": 50},
    "paillier": {"scores_per_s": 10},
}


def _query(local: LocalSpace, protocol: str, entity: str) -> dict[str, Any]:
    datasets = {p.name: p.dataset_id for p in local.providers}
    datasets[local.analyst.name] = local.analyst.dataset_id
    return {
        "purpose": LOCAL_PURPOSE,
        "protocol": protocol,
        "mode": "analyst-held",
        "model": local.model.to_json(),
        "agreements": dict(local.agreements),
        "datasets": datasets,
        "entities": [entity],
        "idKind": local.id_kind,
        "missing": local.missing,
    }


def _percentiles(latencies: list[float]) -> dict[str, float | None]:
    if not latencies:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}
    ms = np.asarray(latencies) * 1000.0
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p95_ms": round(float(np.percentile(ms, 95)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
        "max_ms": round(float(ms.max()), 1),
    }


def _drive(
    local: LocalSpace,
    protocol: str,
    ids: list[str],
    clients: int,
    duration: float,
    *,
    serving: bool,
    vkeys: dict[str, str],
) -> dict[str, Any]:
    """``clients`` threads scoring one applicant at a time for ``duration`` seconds."""
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    logits: dict[str, float] = {}
    verified = [0]
    lock = threading.Lock()
    deadline = time.perf_counter() + duration

    def client_loop(c: int) -> None:
        mine = ids[c::clients]
        with local.client(timeout=120.0) as client:
            k = 0
            while time.perf_counter() < deadline:
                entity = mine[k % len(mine)]
                k += 1
                doc = _query(local, protocol, entity)
                mark = time.perf_counter()
                try:
                    result = client.score_now(doc) if serving else client.score_json(doc)
                except (TrustedSpaceError, Exception) as exc:
                    status = getattr(exc, "status", None) or type(exc).__name__
                    with lock:
                        errors[str(status)] += 1
                    continue
                took = time.perf_counter() - mark
                try:
                    checked = len(verify_receipts(result, vkeys))
                except TrustedSpaceError:
                    checked = -1
                with lock:
                    latencies.append(took)
                    logits[entity] = float(result["logits"][0])
                    if checked == len(vkeys):
                        verified[0] += 1
                    else:
                        errors["receipt"] += 1

    started = time.perf_counter()
    threads = [threading.Thread(target=client_loop, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    return {
        "clients": clients,
        "duration_s": round(elapsed, 2),
        "answers": len(latencies),
        "scores_per_s": round(len(latencies) / elapsed, 2),
        "latency_ms": _percentiles(latencies),
        "errors": dict(errors),
        "receipts_verified": verified[0],
        "_logits": logits,
    }


def run_protocol(
    protocol: str, parties: list[LocalParty], model: Model, truth: dict[str, Any], args: Any
) -> dict[str, Any]:
    # Without --keep the space makes its own directory and removes it at the end (each run's
    # node directories are ~170 MB); with --keep they stay under a name that says which run.
    work = Path(tempfile.mkdtemp(prefix=f"online-bench-{protocol}-")) if args.keep else None
    local = LocalSpace(parties, model, "id", work_dir=work, keep=bool(args.keep))
    record: dict[str, Any] = {"protocol": protocol, "load_avg_before": os.getloadavg()}
    with local:
        local.start(timeout=900)
        vkeys = local.ledger_vkeys()
        ids = list(truth["ids"])
        with local.client(timeout=120.0) as client:  # the session's keys and lookups, once
            first = time.perf_counter()
            client.score_now(_query(local, protocol, ids[-1]))
            record["first_request_s"] = round(time.perf_counter() - first, 3)
        pids = local.node_pids()
        cpu_before, client_before = node_cpu(pids), time.process_time()
        served = _drive(
            local, protocol, ids, args.clients, args.duration, serving=True, vkeys=vkeys
        )
        cpu_after = node_cpu(pids)
        served["cpu_s"] = {
            **{k: round(cpu_after[k] - cpu_before[k], 2) for k in pids},
            "client": round(time.process_time() - client_before, 2),
        }
        with local.client(timeout=120.0) as client:
            sessions = client.serving_sessions()
        served["runs"] = sum(int(s["runs"]) for s in sessions)
        served["largest_run"] = max((int(s["largestRun"]) for s in sessions), default=0)
        served["mean_run"] = round(
            sum(int(s["served"]) for s in sessions) / max(served["runs"], 1), 2
        )
        batch = _drive(
            local,
            protocol,
            ids,
            args.clients,
            args.batch_duration,
            serving=False,
            vkeys=vkeys,
        )
    served_logits, batch_logits = served.pop("_logits"), batch.pop("_logits")
    entities = sorted(served_logits)
    expected, _ = plaintext(model, truth, entities)
    got = np.array([served_logits[e] for e in entities])
    both = sorted(set(served_logits) & set(batch_logits))
    record.update(
        {
            "serving": served,
            "batch_path": batch,
            "max_abs_error": float(np.max(np.abs(got - expected))) if entities else None,
            "max_abs_diff_batch": float(max(abs(served_logits[e] - batch_logits[e]) for e in both))
            if both
            else None,
            "compared_with_batch": len(both),
            "load_avg_after": os.getloadavg(),
            "target": TARGETS.get(protocol),
        }
    )
    return record


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--protocol", action="append", choices=("paillier", "ckks", "additive"), required=True
    )
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of serving load")
    parser.add_argument(
        "--batch-duration", type=float, default=15.0, help="seconds of the batch-path baseline"
    )
    parser.add_argument("--entities", type=int, default=5000, help="rows of every party's file")
    parser.add_argument("--json", action="store_true", help="one JSON object per protocol")
    parser.add_argument("--keep", action="store_true", help="keep the node directories")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="online-bench-data-") as data_dir:
        parties, model, truth = make_data(Path(data_dir), args.entities, cohort=False)
        for protocol in args.protocol:
            record = run_protocol(protocol, parties, model, truth, args)
            if args.json:
                print(json.dumps(record), flush=True)
            else:
                s, b = record["serving"], record["batch_path"]
                print(
                    f"{protocol:<9} serving {s['scores_per_s']:>7.1f}/s {s['latency_ms']} "
                    f"errors {s['errors']} runs {s['runs']} (mean {s['mean_run']}, largest "
                    f"{s['largest_run']})\n          batch path {b['scores_per_s']:.2f}/s "
                    f"{b['latency_ms']}\n          CPU s {s['cpu_s']}\n          err "
                    f"{record['max_abs_error']:.1e} vs batch {record['max_abs_diff_batch']} "
                    f"load {record['load_avg_before']} -> {record['load_avg_after']}\n"
                    f"          target {record['target']}",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
