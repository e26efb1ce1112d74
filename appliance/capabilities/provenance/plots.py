"""Report figures: the shadow distribution with the suspect marked; attribution bars."""

from __future__ import annotations

from typing import Any

from appliance._internal.reports import register_plotter


def provenance_plots(report: dict[str, Any]) -> list[tuple[str, Any]]:
    """Per source: a histogram of the shadows' per-batch values, each shadow model's value on
    the whole validation set as a tick, the suspect as a line; a bar chart of the deciding
    statistic per source against its critical value when there are several sources."""
    from matplotlib.figure import Figure

    sources = report.get("statistics", {}).get("sources", [])
    figures: list[tuple[str, Any]] = []
    for source in sources:
        fig = Figure(figsize=(5, 3.2))
        ax = fig.add_subplot()
        contrast = source.get("contrast") if source.get("decision") == "contrast" else None
        location = source.get("error_location") if source.get("decision") == "error_location" else None
        hot = source.get("error_location_hot") if source.get("decision") == "error_location_hot" else None
        batches: list[float] = []
        if hot:  # the deciding values: each shadow's standardised error-location sum (validation + hot probes)
            models = source.get("shadow_error_location_hot_values") or []
            ax.hist(models, bins=12, alpha=0.45, color="grey", label="shadow models (same error counts)")
            marked, label = hot["tested"], "standardised error-location sum, validation + hot probes"
        elif location:  # the deciding values: one skill-matched error-location AUC per shadow model
            models = source.get("shadow_error_location_values") or []
            ax.hist(models, bins=12, alpha=0.45, color="grey", label="shadow models (same error count)")
            marked, label = location["tested"], "error-location AUC (errors where G_d models are unsure)"
        elif contrast:  # the deciding values: one log-odds contrast per shadow model
            models = source.get("shadow_contrast_values") or []
            ax.hist(models, bins=12, alpha=0.45, color="grey", label="shadow models")
            marked, label = contrast["tested"], "log-odds accuracy, generator minus reference"
        else:
            batches = [v for values in source.get("shadow_batch_values", []) for v in values]
            models = source.get("shadow_model_values") or []
            marked, label = source["suspect_value"], source.get("variant", "statistic")
        if batches:
            ax.hist(batches, bins=20, alpha=0.45, color="grey", density=True, label="shadows, per batch")
        if models:
            top = ax.get_ylim()[1]
            ax.plot(models, [0.03 * top] * len(models), "|", color="navy", markersize=14,
                    label="shadow models (whole set)")
        ax.axvline(marked, color="red", linewidth=2, label="suspect")
        ax.set_xlabel(label)
        ax.set_title(f"{source['source']} ({source.get('decision', '')}): statistic {source['G']:.2f}, "
                     f"critical {source['G_crit']:.2f}", fontsize=9)
        ax.legend(fontsize=7)
        figures.append((f"Shadow distribution, {source['source']}", fig))
    if len(sources) > 1:
        fig = Figure(figsize=(5, 3.2))
        ax = fig.add_subplot()
        ax.bar([s["source"] for s in sources], [s["G"] for s in sources])
        ax.axhline(sources[0]["G_crit"], color="red", linestyle="--", label="critical value")
        ax.set_ylabel("test statistic (lower = more consistent)")
        ax.legend()
        figures.append(("Source attribution", fig))
    return figures


def register_plots() -> None:
    """Attach :func:`provenance_plots` to the report pages of provenance audits."""
    register_plotter("provenance/trainprove", provenance_plots)
