"""Signed audit reports: build the JSON, sign it as DSSE, append it to the transparency log,
and render it as a readable HTML page with plots.

>>> report_id = publish_report(store, identity, tenant_id=..., job_id=..., body=body)
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Callable
from typing import Any

from appliance._internal.identity import Identity, code_digest
from appliance._internal.store import Store, dumps, new_id, utcnow
from crypto.bundle import make_bundle
from crypto.dsse import canonical_json, sign_envelope

REPORT_PAYLOAD_TYPE = "application/vnd.audit-appliance.report+json"
REPORT_SCHEMA = "https://audit-appliance.dev/schemas/report/v1"


def build_report(
    *,
    report_id: str,
    job_id: str | None,
    tenant: str,
    method: str,
    version: str,
    parameters: dict[str, Any],
    inputs: dict[str, Any],
    statistics: dict[str, Any],
    p_value: float | None,
    verdict: str | None,
    alpha: float | None,
    seed: int | None,
    device: str | None,
    timings: dict[str, float],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The report body every conclusion of the appliance is published as."""
    body: dict[str, Any] = {
        "schema": REPORT_SCHEMA,
        "id": report_id,
        "job_id": job_id,
        "tenant": tenant,
        "method": {"name": method, "version": version},
        "parameters": parameters,
        "seed": seed,
        "inputs": inputs,
        "statistics": statistics,
        "p_value": p_value,
        "alpha": alpha,
        "verdict": verdict,
        "device": device,
        "timings": timings,
        "appliance": {"code_digest": code_digest()},
        "created_at": utcnow(),
    }
    if extra:
        body["extra"] = extra
    return body


def sign_and_log(identity: Identity, body: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """Sign a report as DSSE and append it to the transparency log: (envelope, log index).
    Done outside the store's write transaction: the log has its own file and fsyncs."""
    envelope = sign_envelope(canonical_json(body), REPORT_PAYLOAD_TYPE, identity.signing_key)
    return envelope, identity.log.append(canonical_json(envelope))


def publish_report(
    store: Store, identity: Identity, *, tenant_id: str, job_id: str | None, body: dict[str, Any],
    signed: tuple[dict[str, Any], int] | None = None,
) -> str:
    """Sign, log and store a report; returns its id. The log append happens first so a stored
    report always has an index (``signed`` passes one made earlier by :func:`sign_and_log`)."""
    envelope, index = signed if signed is not None else sign_and_log(identity, body)
    verdict = body.get("verdict")
    store.conn.execute(
        "INSERT INTO reports (id, tenant_id, job_id, method, verdict, log_index, envelope, "
        "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            body["id"], tenant_id, job_id, body["method"]["name"], verdict, index,
            dumps(envelope), body["created_at"],
        ),
    )
    return str(body["id"])


def new_report_id() -> str:
    return new_id("rpt")


def report_bundle(identity: Identity, row: dict[str, Any], tree_size: int | None = None) -> dict[str, Any]:
    """The offline-verifiable bundle: envelope, inclusion proof, signed checkpoint, key."""
    envelope = json.loads(row["envelope"])
    return make_bundle(envelope, identity.log, int(row["log_index"]), identity.public_key, tree_size)


def report_body(row: dict[str, Any]) -> dict[str, Any]:
    envelope = json.loads(row["envelope"])
    body: dict[str, Any] = json.loads(base64.b64decode(envelope["payload"]))
    return body


# -- HTML ------------------------------------------------------------------------------------

PlotFn = Callable[[dict[str, Any]], list[tuple[str, Any]]]
_PLOTTERS: dict[str, PlotFn] = {}


def register_plotter(method: str, plotter: PlotFn) -> None:
    """A method names the figures its report page shows (matplotlib Figure objects)."""
    _PLOTTERS[method] = plotter


MAX_PLOTTED_CLASSES = 256
PREVIEW_CHARS = 600


def _preview(value: Any) -> str:
    """The first :data:`PREVIEW_CHARS` characters of ``value`` as indented JSON, encoding no
    more of it than that (a value can be megabytes in an old report)."""
    pieces: list[str] = []
    length = 0
    for piece in json.JSONEncoder(indent=1).iterencode(value):
        pieces.append(piece)
        length += len(piece)
        if length > PREVIEW_CHARS:
            return "".join(pieces)[:PREVIEW_CHARS] + " …"
    return "".join(pieces)


def _figure_png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _evaluation_plots(report: dict[str, Any]) -> list[tuple[str, Any]]:
    from matplotlib.figure import Figure

    stats = report.get("statistics", {})
    figures: list[tuple[str, Any]] = []
    matrix = stats.get("confusion_matrix")
    # reports signed before the cap can hold thousands of classes: no plot of those
    if matrix and len(matrix) <= MAX_PLOTTED_CLASSES:
        fig = Figure(figsize=(4.5, 4))
        ax = fig.add_subplot()
        image = ax.imshow(matrix, cmap="Blues")
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        fig.colorbar(image, ax=ax)
        figures.append(("Confusion matrix", fig))
    rel = stats.get("reliability")
    if rel and rel.get("bin_count"):
        fig = Figure(figsize=(4.5, 4))
        ax = fig.add_subplot()
        edges = rel["bin_edges"]
        centers = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:], strict=True)]
        width = (edges[1] - edges[0]) * 0.9 if len(edges) > 1 else 0.05
        accuracy = [0.0 if v is None else float(v) for v in rel["bin_accuracy"]]
        ax.bar(centers, accuracy, width=width, alpha=0.7, label="accuracy")
        ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
        ax.set_title(f"ECE = {stats.get('ece', float('nan')):.4f}")
        ax.legend(loc="upper left")
        figures.append(("Reliability diagram", fig))
    return figures


register_plotter("evaluation", _evaluation_plots)


def _generic_plots(report: dict[str, Any]) -> list[tuple[str, Any]]:
    from matplotlib.figure import Figure

    numbers = {
        k: float(v)
        for k, v in report.get("statistics", {}).items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
    if not numbers:
        return []
    fig = Figure(figsize=(6, 0.4 * len(numbers) + 1))
    ax = fig.add_subplot()
    ax.barh(list(numbers), list(numbers.values()))
    ax.set_xlabel("value")
    return [("Statistics", fig)]


def report_figures(report: dict[str, Any]) -> list[tuple[str, str]]:
    """The figures a report's method registered, as (title, base64 PNG) pairs."""
    method = report.get("method", {}).get("name", "?")
    plotter = _PLOTTERS.get(method, _generic_plots)
    return [(title, _figure_png(fig)) for title, fig in plotter(report)]


def render_html(report: dict[str, Any], *, log_index: int | None = None) -> str:
    """A self-contained page: summary, verdict, statistics, inputs, plots."""
    method = report.get("method", {}).get("name", "?")
    try:
        figures = report_figures(report)
    except Exception as exc:  # a plot must never hide the report itself
        figures = []
        plot_error = f"<p class='warn'>plots unavailable: {html.escape(str(exc))}</p>"
    else:
        plot_error = ""

    def table(data: dict[str, Any]) -> str:
        rows = []
        for key, value in data.items():
            if isinstance(value, dict | list):
                cell = f"<pre>{html.escape(_preview(value))}</pre>"
            else:
                cell = html.escape(str(value))
            rows.append(f"<tr><th>{html.escape(str(key))}</th><td>{cell}</td></tr>")
        return "<table>" + "".join(rows) + "</table>"

    verdict = report.get("verdict")
    summary = {
        "report": report.get("id"),
        "method": f"{method} {report.get('method', {}).get('version', '')}",
        "verdict": verdict if verdict is not None else "— (no hypothesis test)",
        "p-value": report.get("p_value"),
        "alpha": report.get("alpha"),
        "seed": report.get("seed"),
        "device": report.get("device"),
        "created": report.get("created_at"),
        "log index": log_index,
        "code digest": report.get("appliance", {}).get("code_digest"),
    }
    images = "".join(
        f"<figure><img alt='{html.escape(title)}' src='data:image/png;base64,{png}'>"
        f"<figcaption>{html.escape(title)}</figcaption></figure>"
        for title, png in figures
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Report {html.escape(str(report.get('id')))}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}}
table{{border-collapse:collapse;margin:1rem 0}}th,td{{border:1px solid #ccc;padding:.3rem .6rem;
text-align:left;vertical-align:top}}th{{background:#f4f4f4}}pre{{margin:0;white-space:pre-wrap}}
figure{{display:inline-block;margin:1rem}}.warn{{color:#a00}}</style></head><body>
<h1>Audit report</h1>
<p>This page is a rendering. The signed JSON bundle at <code>/v1/reports/{html.escape(str(report.get('id')))}</code>
is the evidence; verify it offline with <code>appliance verify</code>.</p>
<h2>Summary</h2>{table(summary)}
<h2>Statistics</h2>{table(report.get('statistics', {}))}
<h2>Parameters</h2>{table(report.get('parameters', {}))}
<h2>Inputs</h2>{table(report.get('inputs', {}))}
<h2>Timings (s)</h2>{table(report.get('timings', {}))}
<h2>Plots</h2>{plot_error}{images or '<p>none</p>'}
</body></html>"""
