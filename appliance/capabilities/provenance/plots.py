"""Report figures: the shadow distribution with the suspect marked; attribution bars."""

from __future__ import annotations

from typing import Any


def provenance_plots(report: dict[str, Any]) -> list[tuple[str, Any]]:
    """One histogram per source (pooled shadow batch values, the suspect as a line); a bar
    chart of G per source against G_crit when there are several sources."""
    from matplotlib.figure import Figure

    sources = report.get("statistics", {}).get("sources", [])
    figures: list[tuple[str, Any]] = []
    for source in sources:
        fig = Figure(figsize=(5, 3.2))
        ax = fig.add_subplot()
        for i, values in enumerate(source.get("shadow_batch_values", [])):
            ax.hist(values, bins=12, alpha=0.5, label=f"shadow {i} (per batch)")
        ax.axvline(source["suspect_value"], color="red", linewidth=2, label="suspect")
        ax.set_xlabel(source.get("variant", "statistic"))
        ax.set_title(f"{source['source']}: G = {source['G']:.2f}, G_crit = {source['G_crit']:.2f}")
        ax.legend(fontsize=7)
        figures.append((f"Shadow distribution, {source['source']}", fig))
    if len(sources) > 1:
        fig = Figure(figsize=(5, 3.2))
        ax = fig.add_subplot()
        ax.bar([s["source"] for s in sources], [s["G"] for s in sources])
        ax.axhline(sources[0]["G_crit"], color="red", linestyle="--", label="G_crit")
        ax.set_ylabel("Grubbs G (lower = more consistent)")
        ax.legend()
        figures.append(("Source attribution", fig))
    return figures


def register_plots() -> None:
    """Attach :func:`provenance_plots` to the report pages of provenance audits."""
    from appliance._internal.reports import register_plotter

    register_plotter("provenance/trainprove", provenance_plots)
