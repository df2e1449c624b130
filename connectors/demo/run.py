"""The demonstration behind ``make demo`` / ``trusted-space demo``: a whole data space, for real.

What a newcomer sees in two minutes is what a city would run: six connector nodes, each its own
process with its own SQLite store, keys and ledger under ``demo-output/nodes/<name>/`` — the
city's big-data centre (operator), market registration, the tax bureau, social insurance, the
court (providers) and a bank (consumer, and provider of its own loan history). Nothing in the
flow is simulated; the demo does what the institutions' staff would do, over the same HTTP APIs:

1. **Data**: :mod:`connectors.demo.data` draws 20,000 enterprises (valid USCCs, seeded) and writes
   each institution's table as its own file (CSV, Parquet, SQLite), rows shuffled per file, and
   the bank's training set (its earlier applicants and their outcome) as a file of its own.
2. **Space**: it writes a space config (``demo-output/space/space.toml``, dataset descriptions and
   ODRL offers beside it) and starts it with :func:`connectors.spaces.space.up`: a graded
   three-level
   catalog with one ``unconditional`` dataset (the public registry), one ``conditional`` (court
   records) and ``zone`` datasets (tax, social insurance — consent required for scores — and
   the bank's own two).
3. **Catalog and contracts**: the bank reads the federated catalog at the operator, first as an
   outsider (only the registry is visible) and then as a member (everything), and negotiates an
   agreement for each provider's dataset (DSP 2025-1, node to node).
4. **Consent**: applicants sign consents for the bank's pre-loan review with their own keys;
   the social-insurance node registers them (one applicant never does).
5. **Joint training**: the bank's logistic model is trained through the nodes on its 8,000
   earlier applicants with known outcome (:mod:`trusted_space.protocols.train`: two-party secure
   SGD between the bank and one provider, the others sharing their columns with the two; a use
   and a receipt per epoch at every provider) and compared with the plaintext reference trained
   on the same schedule. A model on the bank's own columns (its own data, fitted in plaintext)
   is the comparison.
6. **Pre-loan review**: the applicants are scored jointly with each protocol (``paillier``,
   ``ckks``, ``additive``) from the bank's node, and each result is compared with float64
   plaintext (largest logit error; AUC against what happened next). An aggregate (a histogram of
   tax credit grades over the applicants, aligned by PSI, with the noise the tax bureau's policy
   requires) runs too. **Risk monitoring** scores them again for ``risk-monitoring``, where the
   tax bureau lets only a risk band leave (``release eq band``): the additive protocol compares
   the shared logit with the band edges and the bank receives bands, never a logit.
7. **Refusals**: a query for the wrong purpose (refused with the provider's policy trace), a
   query naming an applicant without consent (refused, naming the entity), the column read (a
   weight of 1 on one tax column, refused by the model binding) and a Paillier monitoring score
   (refused: only a band may leave, and Paillier decrypts the logit at the bank).
8. **Audit**: every node submits a checkpoint to the operator's witness; every node's ledger is
   verified from outside (:func:`connectors.client.verify.verify_node`), with its key as registered
   at
   the operator and the witness key; every receipt of every result is verified with
   :func:`connectors.client.results.verified_summary`.
9. **Report**: a short summary (JSON with ``--json``), ``demo-output/report.html`` (inline SVG
   plots, :mod:`connectors.demo.report`), then every node is stopped (``--keep-running`` leaves
   the space up until SIGINT/SIGTERM).

Each step is a list of :class:`~connectors.client.verify.Check`; the run is ``ok`` only if every
check
passed, and the command exits 1 otherwise.

Threats and care: the demo acts as every institution's staff, so it reads each node's admin token
from that node's directory (mode 0600 under a 0700 directory) and sends it only to that node over
loopback; the entities' consent keys live only in this process. The output directory is the
demo's own: a previous run's nodes (from ``--keep-running`` killed without cleanup) are stopped
through their ``space.json`` before their directories are replaced.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import httpx
import numpy as np

from connectors.client.analyst import QueryFailed
from connectors.client.catalog import FINAL_STATES, catalog_rows, fetch_catalog
from connectors.client.http import AdminClient
from connectors.client.results import verified_summary, write_scores
from connectors.client.verify import verify_node
from connectors.common.settings import load_settings
from connectors.demo.data import (
    BANK,
    BANK_OUTCOMES,
    COLUMN_BOUNDS,
    COURT,
    LABEL,
    MARKET,
    MODEL_COLUMNS,
    PARTIES,
    PROVIDERS,
    SOCIAL,
    TAX,
    DemoData,
    generate,
    write_tables,
)
from connectors.demo.report import write_report
from connectors.demo.state import DemoOptions, DemoRun
from connectors.demo.stats import auc, fit_logistic, roc_curve
from connectors.node.runtime import NodeRuntime
from connectors.spaces.space import SPACE_FILE, SpaceError, down, load_config, up
from trusted_space.consent import sign_consent
from trusted_space.errors import TrustedSpaceError
from trusted_space.keys import SigningKey
from trusted_space.policy import PROTOCOLS
from trusted_space.protocols.aggregate.bounds import NOISE_TAIL
from trusted_space.protocols.train import train_plaintext
from trusted_space.queries.score import Model, ScoreQuery, logistic
from trusted_space.queries.train import TrainParams, TrainQuery

__all__ = [
    "BASE_PORT",
    "TRAIN_PARAMS",
    "DATASET_IDS",
    "OPERATOR",
    "PURPOSE",
    "TOLERANCE",
    "DemoOptions",
    "DemoRun",
    "MONITORING",
    "RISK_BANDS",
    "run",
    "space_files",
]

OPERATOR: Final = "city-centre"
BASE_PORT: Final = 18800
PURPOSE: Final = "pre-loan-review"
MONITORING: Final = "risk-monitoring"
RISK_BANDS: Final = (0.05, 0.15, 0.40)
"""The probabilities of default that separate the risk bands of the monitoring step (A … D)."""
TOLERANCE: Final[Mapping[str, float]] = {"paillier": 1e-6, "ckks": 1e-3, "additive": 1e-3}
"""Largest |logit - float64 logit| accepted per protocol (docs/protocols.md, Accuracy)."""
DATASET_IDS: Final[Mapping[str, str]] = {
    MARKET: "enterprise-registry",
    TAX: "tax-credit",
    SOCIAL: "social-insurance-contributions",
    COURT: "court-enforcement",
    BANK: "bank-loan-history",
    BANK_OUTCOMES: "bank-loan-outcomes",
}
_TIERS: Final = {
    MARKET: "unconditional",
    TAX: "zone",
    SOCIAL: "zone",
    COURT: "conditional",
    BANK: "zone",
    BANK_OUTCOMES: "zone",
}
_CONSENT_SAMPLE: Final = 20
_CONSENT_WORKERS: Final = 8
TRAIN_PARAMS: Final[Mapping[str, Any]] = {"epochs": 5, "batch_size": 512, "learning_rate": 0.4}
"""Hyper-parameters of the joint training (the seed is the data's)."""
"""Applicants named beside the one without consent in the consent-refusal query."""


# -- catalog: datasets and offers ---------------------------------------------------------------


def _field(name: str, kind: str, grade: int, description: str) -> dict[str, Any]:
    """A catalog field; a numeric one declares its range (its values are raw magnitudes)."""
    field = {"name": name, "type": kind, "grade": grade, "description": description}
    if name in COLUMN_BOUNDS:
        field["bound"] = COLUMN_BOUNDS[name]
    return field


_USCC_FIELD: Final = _field("uscc", "string", 1, "unified social credit code (GB 32100-2015)")


_BANK_RESPONSIBILITY = {
    "id": "credit-business",
    "title": "Credit business",
    "legalBasis": "Commercial Banking Law",
}


def _loan_fields() -> list[dict[str, Any]]:
    """The bank's loan-history fields, shared by its scoring and its training datasets."""
    return [
        _USCC_FIELD,
        _field("prior_loans", "int", 4, "earlier loans with the bank"),
        _field("max_overdue_days", "int", 4, "most days overdue, last 24 months"),
        _field("overdue_30", "int", 4, "1: ever 30+ days overdue"),
        _field("utilisation", "float", 4, "credit-line utilisation"),
    ]


def _datasets() -> dict[str, dict[str, Any]]:
    """Each party's dataset description (trusted_space.catalog Dataset JSON)."""
    return {
        MARKET: {
            "id": DATASET_IDS[MARKET],
            "title": "Enterprise registry (public)",
            "description": "Registration facts every enterprise must publish: status, date of "
            "establishment, capital, and whether it is on the abnormal-operation list. Open to "
            "anyone, raw rows included.",
            "keywords": ["registry", "public", "enterprise"],
            "tier": "unconditional",
            "keyColumn": "uscc",
            "keyKind": "uscc",
            "responsibility": {
                "id": "market-entity-registration",
                "title": "Registration of market entities",
                "legalBasis": "Regulations on the Registration of Market Entities",
            },
            "resource": {"id": "registry", "title": "Register of market entities"},
            "table": {
                "name": "registry",
                "description": "one row per enterprise",
                "fields": [
                    _USCC_FIELD,
                    _field("status", "category", 1, "active, revoked or cancelled"),
                    _field("established", "date", 1, "date of establishment"),
                    _field("age_years", "float", 1, "years since establishment"),
                    _field("registered_capital", "float", 1, "registered capital, CNY"),
                    _field("paid_in_ratio", "float", 1, "paid-in / registered capital"),
                    _field("abnormal_operation", "int", 1, "1: on the abnormal-operation list"),
                ],
            },
        },
        TAX: {
            "id": DATASET_IDS[TAX],
            "title": "Tax credit and payments",
            "description": "Tax credit grade, tax paid, growth and arrears per enterprise. "
            "Computation only: rows never leave the tax bureau.",
            "keywords": ["tax", "credit", "pre-loan"],
            "tier": "zone",
            "keyColumn": "uscc",
            "keyKind": "uscc",
            "responsibility": {
                "id": "tax-administration",
                "title": "Tax collection and credit rating",
                "legalBasis": "Law on the Administration of Tax Collection",
            },
            "resource": {"id": "tax-records", "title": "Enterprise tax records"},
            "table": {
                "name": "tax_credit",
                "description": "one row per enterprise, last fiscal year",
                "fields": [
                    _USCC_FIELD,
                    _field("credit_grade", "category", 3, "tax credit grade A, B, M, C or D"),
                    _field("credit_rank", "int", 3, "the grade as 0 (A) … 4 (D); M = 2"),
                    _field("tax_paid", "float", 3, "tax paid, CNY"),
                    _field("log_tax_paid", "float", 3, "log10 of tax paid in CNY"),
                    _field("tax_growth", "float", 3, "year-on-year growth of tax paid"),
                    _field("tax_arrears", "int", 3, "1: tax in arrears"),
                ],
            },
        },
        SOCIAL: {
            "id": DATASET_IDS[SOCIAL],
            "title": "Social insurance contributions",
            "description": "Insured staff, years of contributions and months in arrears. "
            "Computation only, and only for enterprises that consented.",
            "keywords": ["social insurance", "employment", "pre-loan"],
            "tier": "zone",
            "keyColumn": "uscc",
            "keyKind": "uscc",
            "responsibility": {
                "id": "social-insurance-collection",
                "title": "Collection of social insurance contributions",
                "legalBasis": "Social Insurance Law",
            },
            "resource": {"id": "contributions", "title": "Employer contribution records"},
            "table": {
                "name": "contributions",
                "description": "one row per employer",
                "fields": [
                    _USCC_FIELD,
                    _field("insured_staff", "int", 3, "employees insured"),
                    _field("log_insured_staff", "float", 3, "log10(1 + insured staff)"),
                    _field("contribution_years", "float", 3, "years of continuous contributions"),
                    _field("arrears_months", "int", 3, "months of contributions in arrears"),
                ],
            },
        },
        COURT: {
            "id": DATASET_IDS[COURT],
            "title": "Enforcement and litigation",
            "description": "Dishonest-debtor listing, amounts under enforcement and lawsuits "
            "as defendant. Raw rows only after an agreed contract.",
            "keywords": ["court", "enforcement", "risk"],
            "tier": "conditional",
            "keyColumn": "uscc",
            "keyKind": "uscc",
            "responsibility": {
                "id": "enforcement",
                "title": "Enforcement of judgments",
                "legalBasis": "Civil Procedure Law",
            },
            "resource": {"id": "enforcement-records", "title": "Enforcement records"},
            "table": {
                "name": "court_records",
                "description": "one row per enterprise",
                "fields": [
                    _USCC_FIELD,
                    _field("dishonest_debtor", "int", 1, "1: on the dishonest-debtor list"),
                    _field("enforcement_amount", "float", 2, "amount under enforcement, CNY"),
                    _field("log_enforcement", "float", 2, "log10(1 + amount, 10k CNY)"),
                    _field("lawsuits", "int", 2, "lawsuits as defendant, last 3 years"),
                ],
            },
        },
        BANK: {
            "id": DATASET_IDS[BANK],
            "title": "Bank loan history",
            "description": "The bank's own loan history per enterprise. Computation only, for "
            "the bank's own joint scoring.",
            "keywords": ["bank", "loans"],
            "tier": "zone",
            "keyColumn": "uscc",
            "keyKind": "uscc",
            "responsibility": _BANK_RESPONSIBILITY,
            "resource": {"id": "loan-book", "title": "Loan book"},
            "table": {
                "name": "loan_history",
                "description": "one row per enterprise (zeros: never borrowed here)",
                "fields": [
                    *_loan_fields(),
                ],
            },
        },
        BANK_OUTCOMES: {
            "id": DATASET_IDS[BANK_OUTCOMES],
            "title": "Bank loan outcomes",
            "description": "The bank's earlier applicants: their loan history when they applied "
            "and whether they defaulted. The label of the bank's joint training; it never leaves "
            "the bank.",
            "keywords": ["bank", "loans", "training"],
            "tier": "zone",
            "keyColumn": "uscc",
            "keyKind": "uscc",
            "responsibility": _BANK_RESPONSIBILITY,
            "resource": {"id": "loan-book", "title": "Loan book"},
            "table": {
                "name": "loan_outcomes",
                "description": "one row per earlier borrower",
                "fields": [
                    *_loan_fields(),
                    _field(LABEL, "int", 4, "1: defaulted within twelve months"),
                ],
            },
        },
    }


def _offer_id(name: str) -> str:
    return f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'trusted-space-demo/offer/{name}')}"


def _integer(value: int) -> dict[str, str]:
    return {"@value": str(value), "@type": "xsd:integer"}


def _decimal(value: float) -> dict[str, str]:
    return {"@value": repr(float(value)), "@type": "xsd:decimal"}


DEMO_EPSILON: Final = 1.0
"""The epsilon the tax bureau's aggregate permission allows a release at most (and the demo
asks): noise is required, an exact aggregate is refused."""


def _constraint(left: str, operator: str, right: Any) -> dict[str, Any]:
    return {"leftOperand": left, "operator": operator, "rightOperand": right}


def _offer(name: str, *permissions: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "@id": _offer_id(name),
        "@type": "Offer",
        "profile": "urn:trusted-space:odrl-profile:1",
        "permission": list(permissions),
        **extra,
    }


def _permission(*constraints: dict[str, Any], duties: Sequence[str] = ("log",)) -> dict[str, Any]:
    out: dict[str, Any] = {"action": "use", "duty": [{"action": d} for d in duties]}
    if constraints:
        out["constraint"] = list(constraints)
    return out


_SCORE_MODELS: Final = ("party-held",)
"""The weights the departments' score permissions accept (policy operand ``model``): only
weights they hold, from the joint training they took part in (or a model part their staff
approved) — never weights the bank chooses per query, so a score is not a column read."""
MODEL_ID: Final = "credit-lr-demo"
"""The id the bank trains its model under (each party keeps its own weights under it)."""


def _offers() -> dict[str, dict[str, Any]]:
    """Each dataset's ODRL offer.

    Training releases only weights (output ``aggregate``), with the ``additive`` protocol; a
    permission for it is separate from the scoring one wherever the scoring one has a
    per-entity or per-cohort condition that a training alignment cannot present (consent,
    ``minCohort``).
    """
    protocols = list(PROTOCOLS)
    purposes = [PURPOSE, MONITORING]
    train = (
        _constraint("computation", "eq", "train"),
        _constraint("protocol", "eq", "additive"),
        _constraint("output", "eq", "aggregate"),
    )
    return {
        MARKET: _offer("open-registry", _permission()),
        TAX: _offer(
            "tax-credit",
            _permission(
                _constraint("purpose", "eq", PURPOSE),
                _constraint("computation", "eq", "score"),
                _constraint("protocol", "isAnyOf", protocols),
                _constraint("output", "eq", "score"),
                _constraint("model", "isAnyOf", list(_SCORE_MODELS)),
                _constraint("modelMinColumns", "gteq", _integer(2)),
                _constraint("count", "lteq", _integer(100)),
            ),
            # monitoring existing borrowers: only a risk band leaves, never the logit
            _permission(
                _constraint("purpose", "eq", MONITORING),
                _constraint("computation", "eq", "score"),
                _constraint("protocol", "eq", "additive"),
                _constraint("output", "eq", "score"),
                _constraint("model", "isAnyOf", list(_SCORE_MODELS)),
                _constraint("modelMinColumns", "gteq", _integer(2)),
                _constraint("release", "eq", "band"),
                _constraint("releaseBands", "lteq", _integer(len(RISK_BANDS) + 1)),
                _constraint("count", "lteq", _integer(100)),
            ),
            _permission(
                _constraint("purpose", "isAnyOf", purposes),
                _constraint("computation", "eq", "aggregate"),
                _constraint("protocol", "isAnyOf", protocols),
                _constraint("output", "eq", "aggregate"),
                _constraint("minCohort", "gteq", _integer(10)),
                # noise is required: at most epsilon 1 a release, 10 in all per member
                _constraint("epsilon", "lteq", _decimal(DEMO_EPSILON)),
                _constraint("epsilonTotal", "lteq", _decimal(10.0)),
                _constraint("count", "lteq", _integer(100)),
            ),
            _permission(_constraint("purpose", "eq", PURPOSE), *train),
            prohibition=[
                {"action": "use", "constraint": [_constraint("purpose", "eq", "marketing")]}
            ],
        ),
        SOCIAL: _offer(
            "social-insurance",
            _permission(
                _constraint("purpose", "eq", PURPOSE),
                _constraint("computation", "eq", "score"),
                _constraint("protocol", "isAnyOf", protocols),
                _constraint("output", "eq", "score"),
                _constraint("model", "isAnyOf", list(_SCORE_MODELS)),
                _constraint("modelMinColumns", "gteq", _integer(2)),
                _constraint("consent", "eq", "required"),
                # pre-loan review touches an applicant a few times, not hundreds
                _constraint("entityCount", "lteq", _integer(20)),
                _constraint("entityPeriod", "eq", "P30D"),
                _constraint("count", "lteq", _integer(100)),
                duties=("log", "notify"),
            ),
            _permission(_constraint("purpose", "eq", PURPOSE), *train),
        ),
        COURT: _offer(
            "court-enforcement",
            _permission(
                _constraint("purpose", "isAnyOf", purposes),
                _constraint("role", "eq", "consumer"),
                _constraint("computation", "isAnyOf", ["score", "aggregate", "train"]),
                _constraint("protocol", "isAnyOf", protocols),
                _constraint("output", "isAnyOf", ["score", "aggregate"]),
                _constraint("model", "isAnyOf", list(_SCORE_MODELS)),
                _constraint("modelMinColumns", "gteq", _integer(2)),
                _constraint("retention", "lteq", "P90D"),
            ),
        ),
        BANK: _offer(
            "bank-own-use",
            _permission(
                _constraint("assignee", "eq", BANK),
                _constraint("purpose", "isAnyOf", purposes),
                _constraint("computation", "isAnyOf", ["score", "train"]),
                _constraint("output", "isAnyOf", ["score", "aggregate"]),
                # the bank's own data under its own model: it opts in to its own weights
                _constraint("model", "isAnyOf", ["analyst-held", "party-held"]),
            ),
        ),
        BANK_OUTCOMES: _offer(
            "bank-outcomes-own-use",
            _permission(
                _constraint("assignee", "eq", BANK),
                _constraint("purpose", "eq", PURPOSE),
                *train,
            ),
        ),
    }


def _toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string for these values


def _ports_free(host: str, first: int, count: int) -> bool:
    for port in range(first, first + count):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def space_files(out: Path, sources: Mapping[str, tuple[str, Path, str | None]]) -> Path:
    """Write the space config, dataset descriptions and offers under ``out/space``; its path.

    The files are what a person would write to run the same space with ``trusted-space space
    up demo-output/space/space.toml``; paths in it are relative to it. The nodes listen on
    :data:`BASE_PORT` + 0…5 (operator, market registration, tax, social insurance, court, bank)
    when those ports are free, else on free ports.
    """
    root = out / "space"
    (root / "datasets").mkdir(parents=True, exist_ok=True)
    (root / "policies").mkdir(parents=True, exist_ok=True)
    datasets, offers = _datasets(), _offers()
    # Fixed ports when they are free (the README's tour uses them), free ports otherwise.
    base_port = BASE_PORT if _ports_free("127.0.0.1", BASE_PORT, len(PARTIES) + 1) else 0
    lines = [
        "# The demo's space, written by `trusted-space demo` (docs/demo.md).",
        "[space]",
        'name = "demo"',
        'dir = "../nodes"',
        'host = "127.0.0.1"',
        f"base_port = {base_port}",
        "",
        "[[node]]",
        f"name = {_toml_string(OPERATOR)}",
        'roles = ["operator"]',
    ]
    tables = {party: (party,) for party in PROVIDERS} | {BANK: (BANK, BANK_OUTCOMES)}
    for party, names in tables.items():
        roles = '["consumer", "provider"]' if party == BANK else '["provider"]'
        lines += ["", "[[node]]", f"name = {_toml_string(party)}", f"roles = {roles}"]
        for name in names:
            kind, path, table = sources[name]
            dataset_file = root / "datasets" / f"{name}.json"
            offer_file = root / "policies" / f"{name}.json"
            dataset_file.write_text(json.dumps(datasets[name], indent=2) + "\n", encoding="utf-8")
            offer_file.write_text(json.dumps(offers[name], indent=2) + "\n", encoding="utf-8")
            relative = Path("..") / path.relative_to(out)
            source = f"{{ kind = {_toml_string(kind)}, path = {_toml_string(str(relative))}"
            source += f", table = {_toml_string(table)} }}" if table else " }"
            lines += [
                "",
                "[[node.dataset]]",
                f'file = "datasets/{name}.json"',
                f"source = {source}",
                f'offers = ["policies/{name}.json"]',
            ]
    config = root / "space.toml"
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return config


# -- the run ------------------------------------------------------------------------------------


def _prepare_output(out: Path) -> None:
    """Stop a previous run's nodes (if its space file says some run) and clear its files."""
    nodes = out / "nodes"
    if (nodes / SPACE_FILE).exists():
        with contextlib.suppress(SpaceError, OSError):
            down(nodes, timeout=5.0)
    for child in ("nodes", "data", "space"):
        shutil.rmtree(out / child, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)


def _start(run: DemoRun) -> DemoData:
    options = run.options
    with run.step("data", f"generating {options.entities:,} enterprises (seed {options.seed})"):
        data = generate(options.entities, applicants=options.applicants, seed=options.seed)
        sources = write_tables(data, options.out / "data")
        run.data = data
        run.facts["data"] = {
            "enterprises": data.n,
            "applicants": len(data.applicants),
            "trainingSet": len(data.train),
            "seed": data.seed,
            "defaultRate": round(float(data.labels.mean()), 4),
            "applicantDefaultRate": round(float(data.labels[data.applicants].mean()), 4),
            "files": {p: str(path) for p, (_, path, _) in sources.items()},
        }
    with run.step("spaceUp", "starting six nodes (operator, four departments, a bank)"):
        config = load_config(space_files(options.out, sources))
        run.space = up(config, timeout=options.timeout)
        run.nodes = run.space.urls
        run.check(
            "space up",
            len(run.nodes) == 6,
            f"{len(run.nodes)} nodes running, each in its own process: {', '.join(run.nodes)}",
        )
    return data


def _browse_and_negotiate(run: DemoRun) -> dict[str, str]:
    """Read the federated catalog as an outsider and as the bank; negotiate every dataset."""
    assert run.space is not None
    operator_url = run.space.operator.url
    agreements: dict[str, str] = {}
    with run.step("catalog", "the bank browses the federated catalog"):
        anonymous = catalog_rows(fetch_catalog(operator_url, federated=True))
        runtime = NodeRuntime(load_settings(run.node_dir(BANK)))
        try:
            member = catalog_rows(
                fetch_catalog(
                    operator_url,
                    federated=True,
                    signer=runtime.client,
                    audience=OPERATOR,
                )
            )
            participants = runtime.client.get_json(
                f"{operator_url}/operator/participants", audience=OPERATOR
            )
        finally:
            runtime.close()
        run._vkeys = {str(p["id"]): str(p["ledgerVkey"]) for p in participants}
        with httpx.Client(timeout=30) as http:
            run._vkeys[OPERATOR] = str(http.get(f"{operator_url}/identity").json()["ledgerVkey"])
        seen_open = sorted(r["dataset"] for r in anonymous)
        seen_member = sorted(r["dataset"] for r in member)
        run.facts["catalog"] = {
            "anonymous": [_catalog_row(r) for r in anonymous],
            "member": [_catalog_row(r) for r in member],
        }
        run.check(
            "catalog: an outsider sees only open data",
            seen_open == [DATASET_IDS[MARKET]],
            f"anonymous request to the operator lists {seen_open}",
        )
        run.check(
            "catalog: a member sees every tier",
            set(DATASET_IDS.values()) <= set(seen_member),
            f"the bank, signed, sees {len(seen_member)} datasets: "
            + ", ".join(f"{r['dataset']} ({r['tier']})" for r in member),
        )
    with run.step("negotiate", "the bank negotiates an agreement for each dataset (DSP)"):
        offers = _offers()
        with run.admin(BANK) as bank:
            started = {
                p: bank.post(
                    "/management/negotiations",
                    {"provider": p, "datasetId": DATASET_IDS[p], "offerId": offers[p]["@id"]},
                )
                for p in PROVIDERS
            }
            deadline = time.monotonic() + run.options.timeout
            views = dict(started)
            while time.monotonic() < deadline and any(
                v["state"] not in FINAL_STATES for v in views.values()
            ):
                time.sleep(0.1)
                views = {
                    p: v
                    if v["state"] in FINAL_STATES
                    else bank.get(f"/management/negotiations/{v['id']}")
                    for p, v in views.items()
                }
        for p, view in views.items():
            if run.check(
                f"agreement with {p}",
                view["state"] == "FINALIZED" and bool(view.get("agreementId")),
                f"negotiation {view['state']}, agreement {view.get('agreementId')}",
            ):
                agreements[p] = str(view["agreementId"])
        run.facts["agreements"] = agreements
    return agreements


def _catalog_row(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in ("provider", "dataset", "title", "tier", "maxGrade")}


def _consent(social: AdminClient, entity: str, now: datetime) -> None:
    """The enterprise makes a key, has the node record it, and signs a consent for the bank."""
    key = SigningKey.generate()
    social.post(
        "/management/consents/entity-keys",
        {"entity": entity, "publicKey": key.verify_key.to_b64()},
    )
    consent = sign_consent(
        key,
        issuer=entity,
        entity=entity,
        grantee=BANK,
        purpose=PURPOSE,
        not_before=now - timedelta(minutes=5),
        expires_at=now + timedelta(days=90),
        now=now,
    )
    social.post("/management/consents", {"token": consent.token})


def _register_consents(run: DemoRun, data: DemoData) -> None:
    """Each applicant signs a consent for the bank's pre-loan review with its own key."""
    applicants = data.ids_at(data.applicants)
    now = datetime.now(UTC)
    with (
        run.step("consents", f"{len(applicants):,} applicants sign their consent"),
        run.admin(SOCIAL) as social,
        ThreadPoolExecutor(max_workers=_CONSENT_WORKERS) as pool,
    ):
        list(pool.map(lambda entity: _consent(social, entity, now), applicants))
        run.facts["consents"] = {
            "registeredAt": SOCIAL,
            "applicants": len(applicants),
            "withoutConsent": data.ids[data.no_consent],
        }


def _bank_alone(data: DemoData) -> Model:
    """The bank's model on its own three columns (its own data: fitted in plaintext)."""
    fit = fit_logistic(data.matrix(BANK)[data.train], data.labels[data.train])
    return Model.from_json(
        {
            "intercept": round(fit.intercept, 8),
            "link": "logistic",
            "weights": {
                BANK: {
                    c: round(float(w), 8)
                    for c, w in zip(MODEL_COLUMNS[BANK], fit.weights, strict=True)
                }
            },
        }
    )


def _held_weights(run: DemoRun, bound: Model) -> Model:
    """The whole model, for the demo's own checks: the bank's part and each provider's weights.

    Each provider keeps its weights (party-held); the demo plays every party's staff, so it reads
    them from each provider's management API (``GET /management/models``) to compare the secure
    results with float64. No member could: the bank holds its own part only.
    """
    weights: dict[str, dict[str, float]] = {
        BANK: dict(zip(bound.columns(BANK), bound.weights_of(BANK).tolist(), strict=True))
    }
    for provider in PROVIDERS:
        with run.admin(provider) as admin:
            held = [
                m
                for m in admin.get("/management/models")
                if m["owner"] == BANK and m["model"] == bound.id
            ]
        if len(held) != 1:
            raise ValueError(f"{provider} holds no model {bound.id!r} of {BANK}")
        weights[provider] = {c: float(held[0]["weights"][c]) for c in MODEL_COLUMNS[provider]}
    return Model.from_json({"intercept": bound.intercept, "link": "logistic", "weights": weights})


def _train(
    run: DemoRun, data: DemoData, agreements: Mapping[str, str]
) -> tuple[Model, Model, Model]:
    """Train the bank's model jointly through the nodes; compare it with the plaintext reference.

    Two-party secure SGD between the bank and one provider (the compute party), the other
    providers sharing their columns with the two (:mod:`trusted_space.protocols.train`): no party
    sees another's rows, the label or an intermediate weight; the bank receives the weights.
    """
    training_ids = data.ids_at(data.train)
    params = TrainParams(**TRAIN_PARAMS, seed=run.options.seed)
    doc = {
        "purpose": PURPOSE,
        "mode": "party-held",
        "modelId": MODEL_ID,
        "agreements": dict(agreements),
        "datasets": {BANK: DATASET_IDS[BANK_OUTCOMES], **{p: DATASET_IDS[p] for p in PROVIDERS}},
        "features": {p: list(MODEL_COLUMNS[p]) for p in PARTIES},
        "label": LABEL,
        "entities": training_ids,
        "idKind": "uscc",
        "params": params.to_json(),
    }
    label = (
        f"joint training on the bank's {len(training_ids):,} earlier applicants "
        f"({params.epochs} epochs, secure SGD)"
    )
    with run.step("train", label), run.analyst() as bank:
        view = bank.submit_train(doc)
        result = bank.wait(view["id"], timeout=run.options.timeout)
    bound = Model.from_json(result["model"])  # the bank's part, the intercept and the id
    model = _held_weights(run, bound)
    # The plaintext reference: the same schedule, initialisation and sigmoid approximation, in
    # float64 on the rows in the same (query) order and the columns in the protocol's layout.
    query = TrainQuery.from_json(doc)
    layout = [p for p, _ in query.layout]
    x = np.hstack([data.matrix(p)[data.train] for p in layout])
    reference = train_plaintext(x, data.labels[data.train], params, sigmoid=params.sigmoid)
    joint_w = np.concatenate([model.weights_of(p) for p in layout])
    weight_error = float(
        max(np.max(np.abs(joint_w - reference.weights)), abs(model.intercept - reference.intercept))
    )
    test = data.applicants
    labels = data.labels[test]
    auc_joint = auc(labels, _plain_logits(model, data, test))
    auc_reference = auc(labels, reference.logits(np.hstack([data.matrix(p)[test] for p in layout])))
    receipts: dict[str, Any] = {}
    for provider, per in dict(result.get("receipts", {})).items():
        items = [("align", per.get("align"))] + [
            (f"epoch {e + 1}", r) for e, r in enumerate(per.get("epochs", []))
        ]
        receipts.update(
            _verify_receipts(
                run, {f"{provider} {name}": dict(r) for name, r in items if isinstance(r, dict)}
            )
        )
    (run.options.out / "model.json").write_text(
        json.dumps(bound.to_json(), indent=2) + "\n", encoding="utf-8"
    )
    epochs = [float(e["seconds"]) for e in result.get("timings", {}).get("epochs", [])]
    run.facts["model"] = {
        "how": f"trained jointly through the nodes: two-party secure SGD (additive sharing) "
        f"between the bank and {query.compute_party}, the other providers sharing their "
        f"columns with the two, on the bank's {len(training_ids):,} earlier applicants; the bank "
        "received the weights, nobody saw another's rows or the label",
        "query": result.get("query"),
        "computeParty": query.compute_party,
        "params": params.to_json(),
        "epochsRun": result.get("epochsRun"),
        "secondsPerEpoch": round(float(np.mean(epochs)), 3) if epochs else None,
        "phases": {
            k: round(float(v), 3)
            for k, v in result.get("timings", {}).items()
            if isinstance(v, int | float)
        },
        "trainingSet": len(training_ids),
        "features": {p: list(MODEL_COLUMNS[p]) for p in PARTIES},
        "modelSha256": result.get("modelSha256"),
        "aucJoint": round(auc_joint, 4),
        "aucPlaintextReference": round(auc_reference, 4),
        "maxWeightErrorVsPlaintext": weight_error,
        "receipts": len(receipts),
        "file": str(run.options.out / "model.json"),
    }
    run.check(
        "joint training agrees with plaintext training",
        abs(auc_joint - auc_reference) <= 0.005,
        f"AUC of the jointly trained model {auc_joint:.4f} vs the plaintext reference "
        f"{auc_reference:.4f} (same schedule); largest weight difference {weight_error:.1e}",
    )
    run.check(
        "training receipts verify",
        bool(receipts) and all(r["verified"] for r in receipts.values()),
        f"{len(receipts)} receipts (an alignment and one use per epoch at each provider)",
    )
    return bound, model, _bank_alone(data)


def _plain_logits(model: Model, data: DemoData, rows: np.ndarray) -> np.ndarray:
    z = np.full(len(rows), model.intercept)
    for p in model.parties:
        z += data.matrix(p, model.columns(p))[rows] @ model.weights_of(p)
    return z


def _verify_receipts(run: DemoRun, receipts: Mapping[str, Any]) -> dict[str, Any]:
    """Every receipt against the provider's ledger key as registered at the operator."""
    out: dict[str, Any] = {}
    for label, receipt in receipts.items():
        participant = str(receipt.get("participant") or label)
        vkey = run._vkeys.get(participant, "")
        try:
            summary = verified_summary(receipt, vkey)
        except (TrustedSpaceError, ValueError) as exc:
            summary = {"participant": participant, "verified": False, "error": str(exc)}
        out[label] = summary
        run.receipts["checked"] = run.receipts.get("checked", 0) + 1
        run.receipts["verified"] = run.receipts.get("verified", 0) + int(bool(summary["verified"]))
    return out


def _bound_query(
    bound: Model,
    entities: Sequence[str],
    agreements: Mapping[str, str],
    providers: Sequence[str],
    *,
    protocol: str,
    purpose: str,
) -> ScoreQuery:
    """A party-held score: the bank's part and the model id; each provider uses its own weights."""
    return ScoreQuery(
        purpose=purpose,
        protocol=protocol,
        model=bound,
        agreements={p: agreements[p] for p in providers},
        datasets={BANK: DATASET_IDS[BANK], **{p: DATASET_IDS[p] for p in providers}},
        entities=tuple(entities),
        id_kind="uscc",
        mode="party-held",
    )


def _score(
    run: DemoRun,
    data: DemoData,
    bound: Model,
    model: Model,
    alone: Model,
    agreements: Mapping[str, str],
) -> None:
    applicants = data.ids_at(data.applicants)
    labels = data.labels[data.applicants]
    plain = _plain_logits(model, data, data.applicants)
    plain_bank = _plain_logits(alone, data, data.applicants)
    auc_plain = auc(labels, plain)
    auc_bank = auc(labels, plain_bank)
    run.facts["auc"] = {
        "bankAlone": round(auc_bank, 4),
        "jointPlaintext": round(auc_plain, 4),
        "groundTruth": round(auc(labels, data.truth_logit[data.applicants]), 4),
    }
    run.plots["labels"] = labels
    run.plots["roc"] = {"bank alone": roc_curve(labels, plain_bank)}
    run.plots["probabilities"] = logistic(plain)
    run.check(
        "government data improve the prediction",
        auc_plain > auc_bank,
        f"AUC on the applicants: {auc_plain:.3f} jointly vs {auc_bank:.3f} with the bank's own "
        "data alone",
    )
    for protocol in run.options.protocols:
        with (
            run.step(
                f"score.{protocol}", f"pre-loan review of {len(applicants):,} with {protocol}"
            ),
            run.analyst() as bank,
        ):
            query = _bound_query(
                bound, applicants, agreements, PROVIDERS, protocol=protocol, purpose=PURPOSE
            )
            started = time.perf_counter()
            result = bank.score_json(query, timeout=run.options.timeout)
            seconds = time.perf_counter() - started
        position = {e: i for i, e in enumerate(applicants)}
        order = np.array([position[e] for e in result["entities"]], dtype=np.int64)
        logits = np.asarray(result["logits"], dtype=np.float64)
        error = float(np.max(np.abs(logits - plain[order]))) if len(order) else float("inf")
        secure_auc = auc(labels[order], logits)
        receipts = _verify_receipts(run, result.get("receipts", {}))
        write_scores(run.options.out / f"scores-{protocol}.csv", result)
        run.plots["roc"][f"joint, {protocol}"] = roc_curve(labels[order], logits)
        run.protocols.append(
            {
                "protocol": protocol,
                "entities": len(order),
                "seconds": round(seconds, 3),
                "entitiesPerSecond": round(len(order) / seconds, 1) if seconds else None,
                "phases": {k: round(float(v), 3) for k, v in result.get("timings", {}).items()},
                "maxAbsLogitError": error,
                "tolerance": TOLERANCE[protocol],
                "auc": round(secure_auc, 4),
                "aucPlaintext": round(auc_plain, 4),
                "query": result.get("query"),
                "receipts": receipts,
            }
        )
        run.check(
            f"{protocol}: every applicant scored",
            len(order) == len(applicants),
            f"{len(order)} of {len(applicants)} scores",
        )
        run.check(
            f"{protocol}: logits agree with float64",
            error <= TOLERANCE[protocol],
            f"max |logit error| {error:.2e} (bound {TOLERANCE[protocol]:.0e})",
        )
        run.check(
            f"{protocol}: AUC equals the plaintext AUC (3 decimals)",
            abs(secure_auc - auc_plain) < 5e-4,
            f"{secure_auc:.4f} vs {auc_plain:.4f}",
        )
        run.check(
            f"{protocol}: every receipt verifies",
            set(receipts) == set(PROVIDERS) and all(r["verified"] for r in receipts.values()),
            f"receipts from {', '.join(sorted(receipts))}, each checked against the provider's "
            "ledger key as registered at the operator",
        )


def _monitor(
    run: DemoRun, data: DemoData, bound: Model, model: Model, agreements: Mapping[str, str]
) -> None:
    """Risk monitoring under the tax bureau's band-only permission: bands leave, logits do not.

    The bank scores its applicants again, now for ``risk-monitoring`` with the tax bureau and the
    court, asking for the bands of ``RISK_BANDS``; the additive protocol compares the shared logit
    with the edges, so the bank receives one band per applicant and never the logit.
    """
    applicants = data.ids_at(data.applicants)
    providers = [TAX, COURT]
    edges = tuple(float(np.log(p / (1 - p))) for p in RISK_BANDS)
    parties = [BANK, *providers]
    plain = np.full(len(applicants), model.intercept)
    for p in parties:
        plain += data.matrix(p, model.columns(p))[data.applicants] @ model.weights_of(p)
    with (
        run.step("monitor", f"risk monitoring of {len(applicants):,}: risk bands only"),
        run.analyst() as bank,
    ):
        query = dataclasses.replace(
            _bound_query(
                bound, applicants, agreements, providers, protocol="additive", purpose=MONITORING
            ),
            band_edges=edges,
        )
        result = bank.score_json(query, timeout=run.options.timeout)
    position = {e: i for i, e in enumerate(applicants)}
    order = np.array([position[e] for e in result["entities"]], dtype=np.int64)
    bands = np.asarray(result.get("bands", []), dtype=np.int64)
    expected = np.searchsorted(edges, plain[order], side="left")
    # A logit within the protocol's precision of an edge may fall either side of it.
    near = (
        np.min(np.abs(plain[order][:, None] - np.array(edges)[None, :]), axis=1)
        <= (TOLERANCE["additive"])
    )
    wrong = int(np.sum((bands != expected) & ~near)) if len(bands) == len(order) else len(order)
    receipts = _verify_receipts(run, result.get("receipts", {}))
    names = "ABCD"
    run.facts["monitoring"] = {
        "what": "risk bands of the applicants (probability of default below 5%, 15%, 40%, "
        "above), computed inside the additive protocol: the tax bureau's policy lets only a "
        "band leave for risk monitoring",
        "purpose": MONITORING,
        "providers": providers,
        "edges": [round(e, 6) for e in edges],
        "counts": {names[b]: int(np.sum(bands == b)) for b in range(len(edges) + 1)},
        "expected": {names[b]: int(np.sum(expected == b)) for b in range(len(edges) + 1)},
        "wrongBands": wrong,
        "nearEdge": int(np.sum(near)),
        "logitsReleased": "logits" in result,
        "receipts": receipts,
    }
    run.check(
        "monitoring: only bands leave",
        "logits" not in result and "outputs" not in result and len(bands) == len(applicants),
        f"{len(bands)} bands, no logit in the result",
    )
    run.check(
        "monitoring: bands equal the float64 bands",
        wrong == 0,
        f"{wrong} of {len(order)} differ ({int(np.sum(near))} within {TOLERANCE['additive']:.0e} "
        "of an edge not counted)",
    )
    run.check(
        "monitoring: every receipt verifies",
        set(receipts) == set(providers) and all(r["verified"] for r in receipts.values()),
        f"receipts from {', '.join(sorted(receipts))}",
    )


def _aggregate(run: DemoRun, data: DemoData, agreements: Mapping[str, str]) -> None:
    applicants = data.ids_at(data.applicants)
    edges = [-0.5, 0.5, 1.5, 2.5, 3.5, 4.5]
    with (
        run.step("aggregate", "aggregate: tax credit grades of the applicants (PSI cohort)"),
        run.analyst() as bank,
    ):
        body = {
            "provider": TAX,
            "agreement": agreements[TAX],
            "dataset": DATASET_IDS[TAX],
            "column": "credit_rank",
            "statistic": "histogram",
            "protocol": "additive",
            "purpose": PURPOSE,
            "cohort": applicants,
            "bins": edges,
            "epsilon": DEMO_EPSILON,
        }
        view = bank.submit_aggregate(body)
        result = bank.wait(view["id"], timeout=run.options.timeout)
    expected, _ = np.histogram(
        np.asarray(data.tables[TAX]["credit_rank"], dtype=np.float64)[data.applicants], edges
    )
    counts = [round(float(c), 6) for c in result.get("counts", [])]
    scales = [float(b) for b in result.get("noiseScales", [])]
    # The release is noisy (required by the policy); Laplace noise is clamped at NOISE_TAIL
    # scales, so each bin is within that of the plaintext count, never by chance.
    tolerance = np.asarray(scales or [0.0], dtype=np.float64) * NOISE_TAIL + 1e-3
    receipts = _verify_receipts(
        run, {f"{TAX}#{i}": r for i, r in enumerate(result.get("receipts", []))}
    )
    run.facts["aggregate"] = {
        "what": "histogram of tax credit grades (A, B, M, C, D) over the applicants, cohort "
        "aligned by PSI (the tax bureau never learns who applied), released with the Laplace "
        "noise the tax bureau's policy requires",
        "protocol": "additive",
        "cohortSize": result.get("cohortSize"),
        "counts": dict(zip(["A", "B", "M", "C", "D"], counts, strict=False)),
        "epsilon": result.get("epsilon"),
        "noiseScales": scales,
        "expected": dict(zip(["A", "B", "M", "C", "D"], expected.tolist(), strict=True)),
        "receipts": receipts,
    }
    run.check(
        "aggregate within its noise bound of the plaintext",
        len(counts) == len(expected)
        and bool(np.all(np.abs(np.asarray(counts) - expected) <= tolerance))
        and bool(scales)
        and result.get("cohortSize") == len(applicants),
        f"counts {counts} vs {expected.tolist()} (noise scales {scales}), "
        f"cohort {result.get('cohortSize')}",
    )
    run.check(
        "aggregate receipt verifies",
        bool(receipts) and all(r["verified"] for r in receipts.values()),
        f"{len(receipts)} receipt(s)",
    )


def _blocking(trace: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [dict(s) for s in trace if s.get("blocking")]


def _refusals(run: DemoRun, data: DemoData, bound: Model, agreements: Mapping[str, str]) -> None:
    sample = data.ids_at(data.applicants[:_CONSENT_SAMPLE])
    # The column read: weights of the bank's choice, one weight of 1 on one tax column and the
    # identity link, would return that column for every entity. The tax bureau binds the model.
    column_read = Model.from_json(
        {"intercept": 0.0, "link": "identity", "weights": {TAX: {"credit_rank": 1.0}}}
    )
    cases: list[tuple[str, ScoreQuery, str, str | None, str | None]] = [
        (
            "wrong purpose",
            _bound_query(bound, sample, agreements, [TAX], protocol="ckks", purpose="marketing"),
            TAX,
            None,
            None,
        ),
        (
            "no consent",
            _bound_query(
                bound,
                [*sample, data.ids[data.no_consent]],
                agreements,
                [SOCIAL],
                protocol="ckks",
                purpose=PURPOSE,
            ),
            SOCIAL,
            data.ids[data.no_consent],
            None,
        ),
        (
            "column read",
            ScoreQuery(
                purpose=PURPOSE,
                protocol="ckks",
                model=column_read,
                agreements={TAX: agreements[TAX]},
                datasets={TAX: DATASET_IDS[TAX]},
                entities=tuple(sample),
                id_kind="uscc",
                mode="analyst-held",
            ),
            TAX,
            None,
            "model",
        ),
        (
            "logit where a band is required",
            _bound_query(bound, sample, agreements, [TAX], protocol="paillier", purpose=MONITORING),
            TAX,
            None,
            "release",
        ),
    ]
    with run.step("refusals", "four queries the providers must refuse"), run.analyst() as bank:
        for name, query, provider, entity, operand in cases:
            purpose = query.purpose
            try:
                bank.score_json(query, timeout=run.options.timeout)
            except QueryFailed as refused:
                blocking = _blocking(refused.trace)
                # The steps that name entities are the reason when there are any (the other
                # permissions' steps say why they did not apply either).
                reasons = [
                    str(s.get("message")) for s in blocking if s.get("refused_entities")
                ] or [str(s.get("message")) for s in blocking]
                refused_entities = sorted(
                    {e for s in blocking for e in s.get("refused_entities", [])}
                )
                run.refusals.append(
                    {
                        "case": name,
                        "purpose": purpose,
                        "refusedBy": refused.peer,
                        "detail": refused.problem.get("detail"),
                        "reasons": reasons,
                        "blocking": blocking,
                        "trace": refused.trace,
                        "refusedEntities": refused_entities,
                    }
                )
                ok = refused.peer == provider and bool(blocking)
                if operand is not None:
                    ok = ok and operand in {s.get("left_operand") for s in blocking}
                if entity is not None:
                    ok = ok and refused_entities == [entity]
                run.check(
                    f"refused: {name}",
                    ok,
                    f"{refused.peer} refused: " + "; ".join(reasons),
                )
            else:
                run.check(f"refused: {name}", False, "the query was allowed")


def _audit(run: DemoRun) -> None:
    """Checkpoints to the witness, then every ledger verified from outside."""
    assert run.space is not None
    with run.step("audit", "checkpoints to the witness; every ledger verified from outside"):
        names = [n for n in run.nodes if n != OPERATOR] + [OPERATOR]
        for name in names:
            with run.admin(name) as admin:
                answer = admin.post("/management/ledger/checkpoint")
            run.check(
                f"{name}: checkpoint cosigned by the witness",
                bool(answer.get("cosigned")),
                "cosigned" if answer.get("cosigned") else "the witness did not cosign",
            )
        with httpx.Client(timeout=run.options.timeout) as http:
            witness = str(
                http.get(f"{run.space.operator.url}/operator/identity").json()["witnessVkey"]
            )
            for name, url in run.nodes.items():
                # The operator is the only anchor: the key it registered, the head its
                # witness cosigned last (a rewritten or rolled-back log fails here).
                report = verify_node(
                    http,
                    url,
                    operator=run.space.operator.url,
                    vkey=run._vkeys.get(name),
                    witness_vkeys=[witness],
                    samples=16,
                )
                cosigned = len(http.get(f"{url}/ledger/cosignatures").json()["notes"])
                run.ledgers.append(
                    {
                        "node": name,
                        "ok": report.ok,
                        "size": report.size,
                        "root": report.root,
                        "cosignedCheckpoints": cosigned,
                        "keySource": report.key_source,
                        "events": report.kinds,
                        "checks": [c.to_json() for c in report.checks],
                    }
                )
                failed = [c.name for c in report.checks if not c.ok]
                run.check(
                    f"{name}: ledger verifies",
                    report.ok and cosigned > 0,
                    f"{report.size} entries, root recomputed, {cosigned} witnessed checkpoint(s)"
                    if report.ok
                    else f"failed: {', '.join(failed)}",
                )


def _serve_until_signalled(run: DemoRun) -> None:
    """Print the node URLs as one JSON line and wait for SIGINT or SIGTERM."""
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        sys.stdout.flush()
        print(json.dumps({"ready": True, "nodes": run.nodes}, separators=(",", ":")), flush=True)
        run.say("the space keeps running: stop it with Ctrl-C (SIGINT) or SIGTERM")
        while not stop.wait(0.5):
            pass
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def run(
    options: DemoOptions,
    *,
    say: Callable[[str], None] | None = None,
    ready: Callable[[DemoRun], None] | None = None,
) -> DemoRun:
    """Run the demonstration (see the module docstring); the space is stopped before returning.

    Args:
        options: what to run.
        say: progress lines (default: stderr).
        ready: with ``keep_running``, called once the run is complete and before waiting for a
            signal (the CLI prints the summary there).

    Returns:
        The run: ``ok``, ``checks`` and ``summary()``. A step that fails with an error becomes a
        failed check (the remaining steps are skipped); the space is stopped in any case.
    """
    speak = say or (lambda line: print(line, file=sys.stderr, flush=True))
    demo = DemoRun(options, speak)
    started = time.perf_counter()
    _prepare_output(options.out)
    try:
        data = _start(demo)
        agreements = _browse_and_negotiate(demo)
        if len(agreements) == len(PROVIDERS):
            # The applicants sign their consents while the bank trains its model: the two do
            # not depend on each other, and both spend most of their time waiting on HTTP.
            with ThreadPoolExecutor(max_workers=1) as background:
                consents = background.submit(_register_consents, demo, data)
                bound, model, alone = _train(demo, data, agreements)
                consents.result()
            _score(demo, data, bound, model, alone, agreements)
            _monitor(demo, data, bound, model, agreements)
            _aggregate(demo, data, agreements)
            _refusals(demo, data, bound, agreements)
        _audit(demo)
    except Exception as exc:
        demo.check("the run finished", False, f"{type(exc).__name__}: {exc}")
    try:
        demo.timings["total"] = round(time.perf_counter() - started, 3)
        demo.facts["report"] = str(write_report(demo, options.out / "report.html"))
        if options.keep_running and demo.space is not None:
            if ready is not None:
                ready(demo)
            _serve_until_signalled(demo)
    finally:
        if demo.space is not None:
            with demo.step("shutdown", "stopping every node"):
                demo.space.stop()
    return demo
