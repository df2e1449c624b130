"""``trusted-space demo`` and ``trusted-space example default-credit``: see it all work.

``demo`` runs :func:`connectors.demo.run.run` (six nodes, synthetic enterprises, every protocol,
refusals, audit; docs/demo.md) and prints a short summary, or the summary as JSON with ``--json``;
``--keep-running`` leaves the space up, prints the node URLs as one JSON line, and stops it on
SIGINT/SIGTERM. ``example default-credit`` runs :func:`connectors.demo.example.run_default_credit`
on
the real, vertically split credit data set. Both exit 1 when any check fails.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from connectors.common.errors import ConnectorError
from connectors.demo.example import find_data, run_default_credit
from connectors.demo.run import run as run_demo
from connectors.demo.state import DemoOptions, DemoRun
from connectors.spaces.local import LocalSpaceError
from trusted_space.errors import TrustedSpaceError
from trusted_space.policy import PROTOCOLS

__all__ = ["default_credit_command", "demo_command", "example_app", "print_summary", "register"]

example_app = typer.Typer(help="Run the product on real data sets.", no_args_is_help=True)


def _protocols(values: list[str] | None) -> tuple[str, ...]:
    chosen = tuple(values or PROTOCOLS)
    unknown = [p for p in chosen if p not in PROTOCOLS]
    if unknown:
        raise typer.BadParameter(f"unknown protocol {unknown[0]!r}: one of {', '.join(PROTOCOLS)}")
    return chosen


def _pct(value: float) -> str:
    return f"{value:.1%}"


def print_summary(summary: dict[str, Any], console: Console) -> None:
    """The demo's summary for people: what ran, how fast, how exact, and the verdict."""
    data = summary.get("data", {})
    p = console.print
    p(f"[bold]trusted-space demo[/bold]: {summary['what']}", highlight=False)
    if data:
        p(
            f"data: {data['enterprises']:,} synthetic enterprises (seed {data['seed']}), "
            f"{data['applicants']:,} applicants; {_pct(data['applicantDefaultRate'])} of them "
            "default within a year (ground truth)",
            highlight=False,
        )
    if "model" in summary:
        m = summary["model"]
        p(f"model: {m['how']}", highlight=False)
        if "aucJoint" in m:
            p(
                f"training: {m['epochsRun']} epochs, {m['secondsPerEpoch']:.1f} s per epoch; "
                f"AUC {m['aucJoint']:.3f} (plaintext training on the same schedule: "
                f"{m['aucPlaintextReference']:.3f}); {m['receipts']} receipts verified",
                highlight=False,
            )
    if summary.get("protocols"):
        p("")
        p(f"{'protocol':<10}{'seconds':>9}{'per second':>12}{'max |logit err|':>17}{'AUC':>8}")
        for row in summary["protocols"]:
            p(
                f"{row['protocol']:<10}{row['seconds']:>9.2f}{row['entitiesPerSecond']:>12,.0f}"
                f"{row['maxAbsLogitError']:>17.1e}{row['auc']:>8.3f}",
                highlight=False,
            )
    if "auc" in summary:
        a = summary["auc"]
        p(
            f"\nAUC on the applicants: bank alone {a['bankAlone']:.3f} -> jointly with "
            f"government data {a['jointPlaintext']:.3f} (ground truth {a['groundTruth']:.3f})",
            highlight=False,
        )
    if "aggregate" in summary:
        agg = summary["aggregate"]
        counts = ", ".join(f"{g} {c:g}" for g, c in agg["counts"].items())
        p(f"aggregate: {agg['what']}: {counts}", highlight=False)
    for refusal in summary.get("refusals", []):
        reasons = "; ".join(refusal["reasons"])
        p(f"refused ({refusal['case']}): {refusal['refusedBy']}: {reasons}", highlight=False)
    ledgers = summary.get("ledgers", [])
    if ledgers:
        good = sum(1 for entry in ledgers if entry["ok"])
        entries = sum(int(entry["size"] or 0) for entry in ledgers)
        receipts = summary.get("receiptsChecked", {})
        p(
            f"ledgers: {good}/{len(ledgers)} verified from outside ({entries:,} entries, each "
            f"witnessed by the operator); receipts: {receipts.get('verified', 0)} of "
            f"{receipts.get('checked', 0)} verified",
            highlight=False,
        )
    timings = {k: v for k, v in summary.get("timings", {}).items() if k != "total"}
    if timings:
        p("time: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()), highlight=False)
    checks = summary.get("checks", [])
    passed = sum(1 for c in checks if c["ok"])
    for c in checks:
        if not c["ok"]:
            p(f"[bold red]FAILED[/bold red] {c['name']}: {c['detail']}", highlight=False)
    verdict = "[green]ok[/green]" if summary["ok"] else "[bold red]FAILED[/bold red]"
    p(
        f"\n{verdict}: {passed}/{len(checks)} checks passed in "
        f"{summary['timings'].get('total', 0):.0f} s; report: {summary.get('report', '-')}",
        highlight=False,
    )


def demo_command(
    json_output: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    entities: Annotated[
        int, typer.Option(min=1000, max=2_000_000, help="Synthetic enterprises in the city.")
    ] = 20_000,
    applicants: Annotated[
        int, typer.Option(min=50, max=1_000_000, help="Loan applicants to score.")
    ] = 1_000,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic data.")] = 2025,
    protocol: Annotated[
        list[str] | None, typer.Option(help="Protocol to score with (repeatable; default all).")
    ] = None,
    out: Annotated[Path, typer.Option(help="Output directory (nodes, data, report).")] = Path(
        "demo-output"
    ),
    keep_running: Annotated[
        bool,
        typer.Option(
            "--keep-running",
            help="Leave the space up (node URLs printed as one JSON line) until SIGINT/SIGTERM.",
        ),
    ] = False,
    timeout: Annotated[float, typer.Option(min=1, help="Seconds per step at most.")] = 300.0,
) -> None:
    """Run a whole data space on this machine and show data used but not seen."""
    if applicants + 50 > entities:
        raise typer.BadParameter("--applicants must be at most --entities - 50")
    options = DemoOptions(
        entities=entities,
        applicants=applicants,
        seed=seed,
        out=out,
        protocols=_protocols(protocol),
        keep_running=keep_running,
        timeout=timeout,
    )
    console = Console(soft_wrap=True)
    printed = False

    def show(demo: DemoRun) -> None:
        nonlocal printed
        if json_output:
            typer.echo(json.dumps(demo.summary(), indent=2, ensure_ascii=False))
        else:
            print_summary(demo.summary(), console)
        printed = True

    demo = run_demo(options, ready=show)
    if not printed:
        show(demo)
    raise typer.Exit(0 if demo.ok else 1)


@example_app.command("default-credit")
def default_credit_command(
    data: Annotated[
        Path | None,
        typer.Option(help="Directory holding default_credit_hetero_{guest,host}.csv."),
    ] = None,
    protocol: Annotated[
        list[str] | None, typer.Option(help="Protocol to score with (repeatable; default all).")
    ] = None,
    limit: Annotated[
        int | None, typer.Option(min=100, help="Score at most this many held-out rows.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the train/test split.")] = 7,
    json_output: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """The bank (guest, with the label) and a government node (host) on real credit data."""
    directory = find_data(data)
    err = Console(stderr=True)
    if directory is None:
        where = data or "../shared/data/default_credit or /work/shared/data/default_credit"
        err.print(f"error: no default_credit_hetero_guest.csv and _host.csv in {where}")
        raise typer.Exit(2)
    try:
        result = run_default_credit(
            directory,
            protocols=_protocols(protocol),
            limit=limit,
            seed=seed,
            say=lambda line: err.print(line, highlight=False),
        )
    except (LocalSpaceError, ConnectorError, TrustedSpaceError, OSError) as exc:
        err.print(f"error: {exc}", highlight=False, markup=False)
        raise typer.Exit(1) from exc
    summary = result.summary()
    if json_output:
        typer.echo(json.dumps(summary, indent=2))
    else:
        out = Console(soft_wrap=True)
        d = summary["data"]
        out.print(
            f"default credit: {d['rows']:,} card holders; bank {d['bankColumns']} features + "
            f"label, government {d['governmentColumns']} features; trained on {d['training']:,}, "
            f"scored {d['scored']:,}",
            highlight=False,
        )
        m = summary["model"]
        out.print(f"model: {m['how']}", highlight=False)
        out.print(
            f"training: {m['epochsRun']} epochs; AUC {m['aucJoint']:.4f} (plaintext training on "
            f"the same schedule {m['aucPlaintextReference']:.4f}); {m['receiptsVerified']} "
            "receipts verified",
            highlight=False,
        )
        out.print(f"\n{'protocol':<10}{'seconds':>9}{'max |logit err|':>17}{'AUC':>8}{'plain':>8}")
        for row in summary["protocols"]:
            out.print(
                f"{row['protocol']:<10}{row['seconds']:>9.2f}{row['maxAbsLogitError']:>17.1e}"
                f"{row['auc']:>8.4f}{row['aucPlaintext']:>8.4f}",
                highlight=False,
            )
        out.print(
            f"\nAUC with the bank's features alone {summary['aucBankAlone']:.4f}, jointly "
            f"{summary['aucJointPlaintext']:.4f}",
            highlight=False,
        )
        for c in summary["checks"]:
            mark = "ok" if c["ok"] else "FAILED"
            out.print(f"{mark:>6}  {c['name']}: {c['detail']}", highlight=False, markup=False)
    raise typer.Exit(0 if result.ok else 1)


def register(app: typer.Typer) -> None:
    """Add ``demo`` and ``example`` to the main app."""
    app.command("demo")(demo_command)
    app.add_typer(example_app, name="example")
