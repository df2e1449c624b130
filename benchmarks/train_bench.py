"""Joint-training benchmark through real nodes: ``python benchmarks/train_bench.py [--json]``.

Data: ``default_credit`` (``../shared/data/default_credit`` from the checkout, or
``/work/shared/data/default_credit``; README there): the guest file is the bank (label ``y`` and
13 features), the host file a government node (10 features of the same 30,000 people). A seeded
70/30 split: the bank's file holds its 21,000 training rows, the government's file all 30,000
(PSI aligns them), and the 9,000 test rows are scored here, in plaintext, with each model.

A fresh local space runs on loopback (:func:`connectors.node.training.local_training`: an operator,
the bank and the government node as separate ``node serve`` processes); the training runs from
the bank's node exactly as ``trusted-space local train`` runs it (two-party secure SGD, the
government node being the compute party, the operator the dealer). Reported:

- ``joint.seconds_per_epoch`` (and each epoch's seconds): wall time of an epoch at the bank's
  node, HTTP included; ``joint.steps_per_epoch``: the bank's ``train.step`` calls (round trips
  to the compute party) in each epoch; ``joint.total_s``: submission to model, PSI alignment
  included;
- ``plaintext.seconds_per_epoch``: the numpy reference (:func:`train_plaintext`) with the same
  hyper-parameters, schedule and initialisation, in this process on matrices in memory;
- test AUC of the joint model, of the plaintext reference (exact sigmoid), of the plaintext with
  the protocol's piecewise-linear sigmoid (the approximation's own effect), and of the bank-only
  model (plaintext, exact sigmoid, the bank's 13 features);
- the largest weight difference between the joint model and the plaintext run with the same
  approximation (the fixed-point error).

Targets (reported, never asserted): ``|AUC(joint) - AUC(plaintext)| <= 0.005``, AUC above the
bank-only model, ``<= 60 s`` per epoch on 2 cores.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from connectors.spaces.local import LocalParty
from connectors.spaces.local_train import local_training, train_local
from trusted_space.protocols.train import auc, train_plaintext
from trusted_space.queries.train import TrainParams

BANK, GOV = "bank", "gov"
GUEST, HOST = "default_credit_hetero_guest.csv", "default_credit_hetero_host.csv"


def data_dir() -> Path:
    """Where default_credit is: next to the checkout, or under /work/shared."""
    for candidate in (
        Path(__file__).resolve().parents[1] / "../shared/data/default_credit",
        Path("/work/shared/data/default_credit"),
    ):
        if (candidate / GUEST).is_file() and (candidate / HOST).is_file():
            return candidate.resolve()
    raise SystemExit("default_credit not found (../shared/data/default_credit)")


def load(
    directory: Path,
) -> tuple[list[str], np.ndarray, np.ndarray, list[str], np.ndarray, list[str]]:
    """ids, y, bank features, their names, government features, their names (file order)."""
    with (directory / GUEST).open(encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    guest_names = rows[0][2:]
    ids = [r[0] for r in rows[1:]]
    y = np.array([float(r[1]) for r in rows[1:]])
    xb = np.array([[float(v) for v in r[2:]] for r in rows[1:]])
    with (directory / HOST).open(encoding="utf-8") as handle:
        host = list(csv.reader(handle))
    host_names = host[0][1:]
    position = {r[0]: i for i, r in enumerate(host[1:])}
    xh = np.array([[float(v) for v in host[1:][position[e]][1:]] for e in ids])
    return ids, y, xb, guest_names, xh, host_names


def write_csv(path: Path, header: list[str], ids: list[str], columns: list[np.ndarray]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        out = csv.writer(handle)
        out.writerow(header)
        matrix = np.column_stack(columns)
        for e, row in zip(ids, matrix.tolist(), strict=True):
            out.writerow([e, *(repr(v) for v in row)])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--learning-rate", type=float, default=0.1)
    parser.add_argument("--l2", type=float, default=1e-3)
    parser.add_argument("--rows", type=int, default=0, help="use the first N rows (0: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the 70/30 split")
    parser.add_argument("--mode", default="analyst-held", choices=["analyst-held", "party-held"])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--keep", type=Path, default=None, help="keep the node directories here")
    args = parser.parse_args()

    ids, y, xb, bank_names, xh, gov_names = load(data_dir())
    if args.rows:
        ids, y, xb, xh = ids[: args.rows], y[: args.rows], xb[: args.rows], xh[: args.rows]
    n = len(ids)
    perm = np.random.default_rng(args.seed).permutation(n)
    n_train = round(0.7 * n)
    train, test = np.sort(perm[:n_train]), np.sort(perm[n_train:])
    params = TrainParams(
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        l2=args.l2,
    )

    # The plaintext reference, on the joint layout's columns (bank, then government).
    x_train = np.hstack([xb[train], xh[train]])
    x_test = np.hstack([xb[test], xh[test]])
    exact = train_plaintext(x_train, y[train], params)
    approx = train_plaintext(x_train, y[train], params, sigmoid=params.sigmoid)
    bank_only = train_plaintext(xb[train], y[train], params)

    with tempfile.TemporaryDirectory(prefix="train-bench-") as tmp:
        root = Path(tmp)
        train_ids = [ids[i] for i in train]
        write_csv(root / "bank.csv", ["id", "y", *bank_names], train_ids, [y[train], xb[train]])
        write_csv(root / "gov.csv", ["id", *gov_names], ids, [xh])
        parties = [LocalParty(BANK, root / "bank.csv"), LocalParty(GOV, root / "gov.csv")]
        started = time.perf_counter()
        local = local_training(parties, "id", "y", work_dir=args.keep, keep=args.keep is not None)
        with local:
            local.start()
            up = time.perf_counter() - started
            mark = time.perf_counter()
            result = train_local(local, params, mode=args.mode)
            joint_s = time.perf_counter() - mark
            node_pids = local.node_pids()

    model = result["model"]
    weights = np.array(
        [model["weights"][BANK][c] for c in bank_names]
        + ([model["weights"][GOV][c] for c in gov_names] if GOV in model["weights"] else [])
    )
    epochs = result["timings"]["epochs"]
    per_epoch = [float(e["seconds"]) for e in epochs]
    out: dict[str, Any] = {
        "data": {
            "rows": n,
            "train": len(train),
            "test": len(test),
            "bank_features": len(bank_names),
            "gov_features": len(gov_names),
        },
        "params": params.to_json(),
        "mode": args.mode,
        "cores": os.cpu_count(),
        "joint": {
            "seconds_per_epoch": float(np.mean(per_epoch)),
            "epoch_seconds": per_epoch,
            # the bank's train.step calls (round trips to the compute party) in each epoch
            "steps_per_epoch": [e.get("steps") for e in epochs],
            "align_s": result["timings"].get("align"),
            "total_s": joint_s,
            "space_up_s": up,
            "nodes": sorted(node_pids),
        },
        "plaintext": {
            "seconds_per_epoch": float(np.mean(exact.seconds)),
            "epochs": exact.epochs_run,
        },
        "auc": {
            "bank_only": auc(bank_only.logits(xb[test]), y[test]),
            "plaintext_exact": auc(exact.logits(x_test), y[test]),
            "plaintext_pwl": auc(approx.logits(x_test), y[test]),
        },
        "model_sha256": result["modelSha256"],
        "target_s_per_epoch": 60.0,
    }
    if args.mode == "analyst-held":
        out["auc"]["joint"] = auc(model["intercept"] + x_test @ weights, y[test])
        out["auc"]["joint_minus_plaintext"] = out["auc"]["joint"] - out["auc"]["plaintext_exact"]
        out["max_weight_error_vs_pwl"] = float(
            np.max(
                np.abs(
                    np.concatenate([[model["intercept"]], weights])
                    - np.concatenate([[approx.intercept], approx.weights])
                )
            )
        )
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        a = out["auc"]
        print(
            f"default_credit: {len(train)} training rows, {len(test)} test rows, "
            f"{params.epochs} epochs, batch {params.batch_size}, lr {params.learning_rate}, "
            f"l2 {params.l2}"
        )
        print(
            f"  joint (real nodes, loopback): {out['joint']['seconds_per_epoch']:.2f} s/epoch, "
            f"{joint_s:.1f} s in all (PSI {out['joint']['align_s']:.2f} s), "
            f"{out['joint']['steps_per_epoch'][0]} train.step calls per epoch"
        )
        print(
            f"  plaintext numpy:              {out['plaintext']['seconds_per_epoch']:.4f} s/epoch"
        )
        if "joint" in a:
            print(
                f"  test AUC joint {a['joint']:.4f} | plaintext {a['plaintext_exact']:.4f} "
                f"(difference {a['joint_minus_plaintext']:+.4f}) | plaintext with the "
                f"piecewise sigmoid {a['plaintext_pwl']:.4f} | bank only {a['bank_only']:.4f}"
            )
            print(
                f"  largest weight difference to the plaintext run with the same sigmoid: "
                f"{out['max_weight_error_vs_pwl']:.2e}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
