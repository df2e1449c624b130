"""``demo-output/report.html``: the demo's findings as one self-contained page with SVG plots.

Why hand-written SVG: three simple plots (score distributions, ROC curves, time per protocol) do
not justify a plotting dependency in ``make demo``; a page with inline SVG and no script opens
anywhere, offline, and can be attached to an e-mail as it is.

Everything shown is escaped (:func:`html.escape`); the page holds no secret: scores of synthetic
enterprises, timings, check results, ledger sizes and roots, and the providers' receipts (public
by design: an auditor checks them).
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from connectors.demo.state import DemoRun

__all__ = ["bar_chart", "histogram_chart", "line_chart", "write_report"]

_W, _H = 520, 320
_M = {"left": 56, "right": 16, "top": 16, "bottom": 44}
_COLOURS = ("#1f6feb", "#d1242f", "#1a7f37", "#9a6700", "#8250df", "#57606a")
_DASHES = ("", "6 4", "2 3", "8 3 2 3", "")


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _frame(
    x_label: str,
    y_label: str,
    x_ticks: Sequence[tuple[float, str]],
    y_ticks: Sequence[tuple[float, str]],
) -> list[str]:
    """Axes, grid and labels; ticks are (position in [0, 1], label)."""
    left, top = _M["left"], _M["top"]
    width = _W - _M["left"] - _M["right"]
    height = _H - _M["top"] - _M["bottom"]
    parts = [
        f'<rect x="{left}" y="{top}" width="{width}" height="{height}" fill="#fff" '
        'stroke="#d0d7de"/>'
    ]
    for pos, label in x_ticks:
        x = left + pos * width
        parts.append(
            f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + height}" stroke="#eaeef2"/>'
            f'<text x="{x:.1f}" y="{top + height + 16}" text-anchor="middle">{_e(label)}</text>'
        )
    for pos, label in y_ticks:
        y = top + height - pos * height
        parts.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{left + width}" y2="{y:.1f}" stroke="#eaeef2"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{_e(label)}</text>'
        )
    parts.append(
        f'<text x="{left + width / 2:.1f}" y="{_H - 6}" text-anchor="middle">{_e(x_label)}</text>'
        f'<text transform="translate(14,{top + height / 2:.1f}) rotate(-90)" '
        f'text-anchor="middle">{_e(y_label)}</text>'
    )
    return parts


def _svg(title: str, parts: Sequence[str], height: int = _H) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W} {height}" width="{_W}" '
        f'height="{height}" role="img" aria-label="{_e(title)}" '
        f'font-family="system-ui, sans-serif" font-size="11">{"".join(parts)}</svg>'
    )


def _to_xy(x: float, y: float) -> tuple[float, float]:
    width = _W - _M["left"] - _M["right"]
    height = _H - _M["top"] - _M["bottom"]
    return _M["left"] + x * width, _M["top"] + height - y * height


def _legend(
    names: Sequence[str], x: float = 0.55, y: float = 0.32, *, boxes: bool = False
) -> list[str]:
    parts = []
    for i, name in enumerate(names):
        px, py = _to_xy(x, y)
        py += i * 15
        colour, dash = _COLOURS[i % len(_COLOURS)], _DASHES[i % len(_DASHES)]
        if boxes:
            parts.append(
                f'<rect x="{px + 6:.1f}" y="{py - 5:.1f}" width="10" height="10" '
                f'fill="{colour}" fill-opacity="0.45"/>'
            )
        else:
            parts.append(
                f'<line x1="{px:.1f}" y1="{py:.1f}" x2="{px + 22:.1f}" y2="{py:.1f}" '
                f'stroke="{colour}" stroke-width="2" stroke-dasharray="{dash}"/>'
            )
        parts.append(f'<text x="{px + 28:.1f}" y="{py + 4:.1f}">{_e(name)}</text>')
    return parts


def line_chart(
    title: str,
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    x_label: str,
    y_label: str,
    *,
    diagonal: bool = False,
) -> str:
    """Lines over [0, 1]² (ROC curves): ``name → (xs, ys)``."""
    ticks = [(t, f"{t:.1f}") for t in np.linspace(0, 1, 6)]
    parts = _frame(x_label, y_label, ticks, ticks)
    if diagonal:
        (x0, y0), (x1, y1) = _to_xy(0, 0), _to_xy(1, 1)
        parts.append(
            f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y1}" stroke="#afb8c1" '
            'stroke-dasharray="3 3"/>'
        )
    for i, (_, (xs, ys)) in enumerate(series.items()):
        xs_a, ys_a = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
        if len(xs_a) > 400:  # enough points for the eye; keeps the page small
            keep = np.unique(np.linspace(0, len(xs_a) - 1, 400).astype(int))
            xs_a, ys_a = xs_a[keep], ys_a[keep]
        points = " ".join(
            "{:.1f},{:.1f}".format(*_to_xy(float(x), float(y)))
            for x, y in zip(xs_a, ys_a, strict=True)
        )
        parts.append(
            f'<polyline fill="none" stroke="{_COLOURS[i % len(_COLOURS)]}" stroke-width="2" '
            f'stroke-dasharray="{_DASHES[i % len(_DASHES)]}" points="{points}"/>'
        )
    parts += _legend(list(series))
    return _svg(title, parts)


def histogram_chart(
    title: str, groups: Mapping[str, Sequence[float]], x_label: str, *, bins: int = 25
) -> str:
    """Overlaid histograms (as densities) of values in [0, 1] per group."""
    edges = np.linspace(0, 1, bins + 1)
    densities = {
        name: np.histogram(np.clip(np.asarray(v, dtype=float), 0, 1), edges)[0] / max(len(v), 1)
        for name, v in groups.items()
    }
    top = max((float(d.max()) for d in densities.values() if len(d)), default=1.0) or 1.0
    x_ticks = [(t, f"{t:.1f}") for t in np.linspace(0, 1, 6)]
    y_ticks = [(t, f"{t * top:.0%}") for t in np.linspace(0, 1, 5)]
    parts = _frame(x_label, "share of the group", x_ticks, y_ticks)
    width = (_W - _M["left"] - _M["right"]) / bins
    for i, (_, density) in enumerate(densities.items()):
        colour = _COLOURS[i % len(_COLOURS)]
        for b, value in enumerate(density):
            if value <= 0:
                continue
            x, y = _to_xy(edges[b], value / top)
            _, base = _to_xy(0, 0)
            parts.append(
                f'<rect x="{x + 1:.1f}" y="{y:.1f}" width="{width - 2:.1f}" '
                f'height="{base - y:.1f}" fill="{colour}" fill-opacity="0.45"/>'
            )
    parts += _legend(list(densities), 0.6, 0.9, boxes=True)
    return _svg(title, parts)


def bar_chart(title: str, bars: Mapping[str, Mapping[str, float]], x_label: str) -> str:
    """Horizontal stacked bars: ``bar → {segment: seconds}``."""
    total = max((sum(s.values()) for s in bars.values()), default=1.0) or 1.0
    scale = float(10 ** np.ceil(np.log10(total)))
    for nice in (0.2, 0.25, 0.5, 1.0):
        if total <= nice * scale:
            scale *= nice
            break
    x_ticks = [(t, f"{t * scale:g}") for t in np.linspace(0, 1, 6)]
    parts = _frame(x_label, "", x_ticks, [])
    names = list(bars)
    height = (_H - _M["top"] - _M["bottom"]) / max(len(names), 1)
    segments: list[str] = []
    for bar in bars.values():
        for s in bar:
            if s not in segments:
                segments.append(s)
    for i, name in enumerate(names):
        left = 0.0
        y = _M["top"] + i * height + height * 0.2
        for seg, value in bars[name].items():
            x0, _ = _to_xy(left / scale, 0)
            x1, _ = _to_xy((left + value) / scale, 0)
            colour = _COLOURS[segments.index(seg) % len(_COLOURS)]
            parts.append(
                f'<rect x="{x0:.1f}" y="{y:.1f}" width="{max(x1 - x0, 0.5):.1f}" '
                f'height="{height * 0.6:.1f}" fill="{colour}"><title>{_e(seg)}: '
                f"{value:.2f} s</title></rect>"
            )
            left += value
        x_end, _ = _to_xy(left / scale, 0)
        parts.append(
            f'<text x="{_M["left"] + 4}" y="{y - 3:.1f}">{_e(name)}</text>'
            f'<text x="{x_end + 4:.1f}" y="{y + height * 0.4:.1f}">{left:.1f} s</text>'
        )
    x = float(_M["left"])
    for i, seg in enumerate(segments):
        parts.append(
            f'<rect x="{x:.1f}" y="{_H + 4}" width="10" height="10" '
            f'fill="{_COLOURS[i % len(_COLOURS)]}"/>'
            f'<text x="{x + 14:.1f}" y="{_H + 13}">{_e(seg)}</text>'
        )
        x += 24 + 6.2 * len(seg)
    return _svg(title, parts, height=_H + 20)


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """
body{font-family:system-ui,-apple-system,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#1f2328;line-height:1.45}
h1{font-size:1.6em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #d0d7de}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}
td,th{border:1px solid #d0d7de;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f6f8fa}.ok{color:#1a7f37;font-weight:600}.bad{color:#d1242f;font-weight:600}
.plots{display:flex;flex-wrap:wrap;gap:1em}figure{margin:0}figcaption{font-size:.85em;color:#57606a}
code,pre{font-family:ui-monospace,monospace;font-size:.85em}pre{background:#f6f8fa;padding:.6em;
overflow-x:auto}
"""


def write_report(run: DemoRun, path: Path) -> Path:
    """Write the report of ``run`` to ``path`` (atomically); returns the path."""
    summary = run.summary()
    facts = summary
    verdict = (
        '<span class="ok">every check passed</span>'
        if run.ok
        else '<span class="bad">some checks FAILED</span>'
    )
    sections: list[str] = [
        "<h1>trusted-space demo: data usable but not visible</h1>",
        f"<p>{_e(summary['what'])}. Result: {verdict} "
        f"({sum(c.ok for c in run.checks)}/{len(run.checks)}), "
        f"{summary['timings'].get('total', 0):.0f} s in all.</p>",
    ]
    plots: list[str] = []
    labels = run.plots.get("labels")
    probabilities = run.plots.get("probabilities")
    if labels is not None and probabilities is not None:
        y = np.asarray(labels).astype(bool)
        p = np.asarray(probabilities, dtype=float)
        plots.append(
            "<figure>"
            + histogram_chart(
                "score distributions",
                {"defaulted later": p[y].tolist(), "repaid": p[~y].tolist()},
                "predicted probability of default (joint model)",
            )
            + "<figcaption>Scores of the applicants, by what happened next.</figcaption></figure>"
        )
    roc = run.plots.get("roc")
    if roc:
        named = {}
        for name, (fpr, tpr) in roc.items():
            value = None
            if name == "bank alone":
                value = facts.get("auc", {}).get("bankAlone")
            else:
                for p_info in run.protocols:
                    if name.endswith(p_info["protocol"]):
                        value = p_info["auc"]
            named[f"{name} (AUC {value:.3f})" if value is not None else name] = (fpr, tpr)
        plots.append(
            "<figure>"
            + line_chart(
                "ROC curves", named, "false-positive rate", "true-positive rate", diagonal=True
            )
            + "<figcaption>ROC on the applicants: the bank alone vs jointly with government "
            "data (the secure protocols' curves coincide with each other).</figcaption></figure>"
        )
    if run.protocols:
        bars = {}
        for p_info in run.protocols:
            phases = {
                k: float(v)
                for k, v in p_info.get("phases", {}).items()
                if k != "total" and float(v) > 0
            }
            rest = max(float(p_info["seconds"]) - sum(phases.values()), 0.0)
            if rest > 0:
                phases["other (HTTP, queueing)"] = rest
            bars[p_info["protocol"]] = phases
        plots.append(
            "<figure>"
            + bar_chart("time per protocol", bars, "seconds for the whole query")
            + f"<figcaption>Time to score {run.protocols[0]['entities']:,} applicants, by "
            "phase (hover for figures).</figcaption></figure>"
        )
    if plots:
        sections.append('<h2>Plots</h2><div class="plots">' + "".join(plots) + "</div>")
    if run.protocols:
        sections.append(
            "<h2>Pre-loan review, per protocol</h2>"
            + _table(
                [
                    "protocol",
                    "entities",
                    "seconds",
                    "entities/s",
                    "max |logit error|",
                    "bound",
                    "AUC (secure)",
                    "AUC (plaintext)",
                ],
                [
                    [
                        p["protocol"],
                        p["entities"],
                        f"{p['seconds']:.2f}",
                        f"{p['entitiesPerSecond']:,.0f}",
                        f"{p['maxAbsLogitError']:.2e}",
                        f"{p['tolerance']:.0e}",
                        f"{p['auc']:.4f}",
                        f"{p['aucPlaintext']:.4f}",
                    ]
                    for p in run.protocols
                ],
            )
        )
    if "auc" in facts:
        a = facts["auc"]
        sections.append(
            f"<p>AUC on the applicants: bank alone <b>{a['bankAlone']:.3f}</b>, jointly with "
            f"government data <b>{a['jointPlaintext']:.3f}</b> (the ground-truth model itself: "
            f"{a['groundTruth']:.3f}).</p>"
        )
    if "model" in facts:
        m = facts["model"]
        sections.append(f"<h2>The model</h2><p>{_e(m['how'])}.</p>")
        if "aucJoint" in m:
            sections.append(
                _table(
                    [
                        "epochs",
                        "s per epoch",
                        "AUC (joint training)",
                        "AUC (plaintext, same schedule)",
                        "largest weight difference",
                        "receipts",
                    ],
                    [
                        [
                            m["epochsRun"],
                            f"{m['secondsPerEpoch']:.2f}",
                            f"{m['aucJoint']:.4f}",
                            f"{m['aucPlaintextReference']:.4f}",
                            f"{m['maxWeightErrorVsPlaintext']:.1e}",
                            m["receipts"],
                        ]
                    ],
                )
            )
    sections.append(
        "<h2>Checks</h2>"
        + _table(
            ["check", "result", "detail"],
            [[c.name, "ok" if c.ok else "FAILED", c.detail] for c in run.checks],
        )
    )
    sections.append(
        "<h2>Nodes</h2>" + _table(["node", "url"], [[n, u] for n, u in run.nodes.items()])
    )
    if "catalog" in facts:
        sections.append(
            "<h2>Catalog (as the bank sees it)</h2>"
            + _table(
                ["provider", "dataset", "title", "tier", "max grade"],
                [
                    [r["provider"], r["dataset"], r["title"], r["tier"], r["maxGrade"]]
                    for r in facts["catalog"]["member"]
                ],
            )
        )
    if "aggregate" in facts:
        agg = facts["aggregate"]
        sections.append(
            f"<h2>Aggregate</h2><p>{_e(agg['what'])}; protocol {_e(agg['protocol'])}, cohort "
            f"{_e(agg['cohortSize'])}.</p>"
            + _table(
                ["grade", "count (secure)", "count (plaintext)"],
                [[g, agg["counts"].get(g), agg["expected"].get(g)] for g in agg["expected"]],
            )
        )
    if "monitoring" in facts:
        mon = facts["monitoring"]
        sections.append(
            f"<h2>Risk monitoring: bands only</h2><p>{_e(mon['what'])}; with "
            f"{_e(', '.join(mon['providers']))}, edges on the logit {_e(mon['edges'])}.</p>"
            + _table(
                ["band", "applicants (secure)", "applicants (float64)"],
                [[b, mon["counts"].get(b), mon["expected"].get(b)] for b in mon["expected"]],
            )
        )
    for refusal in run.refusals:
        sections.append(
            f"<h2>Refused: {_e(refusal['case'])}</h2><p>{_e(refusal['refusedBy'])} refused: "
            f"{_e('; '.join(refusal['reasons']))}</p><p>Blocking steps of its policy trace:</p>"
            "<pre>"
            + _e("\n".join(json.dumps(s, ensure_ascii=False) for s in refusal["blocking"]))
            + "</pre>"
        )
    if run.ledgers:
        sections.append(
            "<h2>Ledgers</h2>"
            + _table(
                ["node", "verified", "entries", "witnessed checkpoints", "root", "key"],
                [
                    [
                        entry["node"],
                        "ok" if entry["ok"] else "FAILED",
                        entry["size"],
                        entry["cosignedCheckpoints"],
                        (entry["root"] or "")[:16] + "…",
                        entry["keySource"],
                    ]
                    for entry in run.ledgers
                ],
            )
        )
    checked = summary.get("receiptsChecked", {})
    if checked:
        sections.append(
            f"<p>Receipts verified: {checked.get('verified', 0)} of {checked.get('checked', 0)} "
            "(scores, aggregate, training), each against the provider's ledger key as "
            "registered at the operator.</p>"
        )
    if run.protocols:
        first = run.protocols[0]
        rows = [
            [provider, r["leafIndex"], r["treeSize"], "ok" if r.get("verified") else "FAILED"]
            for provider, r in first["receipts"].items()
        ]
        sections.append(
            f"<h2>Receipts of the {_e(first['protocol'])} query</h2>"
            + _table(["provider", "leaf index", "tree size", "verified"], rows)
        )
    sections.append(
        "<h2>Timings (s)</h2>"
        + _table(["step", "seconds"], [[k, f"{v:.2f}"] for k, v in summary["timings"].items()])
    )
    page = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        "<title>trusted-space demo report</title>"
        f"<style>{_CSS}</style></head><body>{''.join(sections)}</body></html>\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path
