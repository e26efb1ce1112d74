"""Figures of an unlearning audit report: score distributions, recovery under noise, patching
depth."""

from __future__ import annotations

from typing import Any


def audit_plots(report: dict[str, Any]) -> list[tuple[str, Any]]:
    """The report page's figures (matplotlib ``Figure`` objects, no pyplot state)."""
    from matplotlib.figure import Figure

    audits = report.get("statistics", {}).get("audits", {})
    figures: list[tuple[str, Any]] = []
    if audits:
        fig = Figure(figsize=(10, 2.2 * ((len(audits) + 1) // 2)))
        for index, (name, result) in enumerate(audits.items()):
            scores = result["statistics"].get("item_scores", {})
            ax = fig.add_subplot((len(audits) + 1) // 2, 2, index + 1)
            for key, colour in (("forget", "tab:red"), ("holdout", "tab:blue")):
                if scores.get(key):
                    ax.hist(scores[key], bins=20, alpha=0.5, color=colour, label=key)
            ax.set_title(f"{name}: AUC {result['statistics'].get('auc_forget_vs_holdout', 0):.2f},"
                         f" p {result['p_value']:.2g}", fontsize=8)
            ax.tick_params(labelsize=7)
            if index == 0:
                ax.legend(fontsize=7)
        fig.tight_layout()
        figures.append(("Item scores, forget vs holdout", fig))
    noise = audits.get("activation_perturbation", {}).get("statistics", {}).get("recovery_curve")
    if noise:
        fig = Figure(figsize=(5, 3))
        ax = fig.add_subplot()
        for key in ("forget", "holdout", "reference_forget"):
            if key in noise:
                ax.plot(noise["amplitudes"], noise[key], marker="o", label=key)
        ax.set_xlabel("noise amplitude (x layer spread)")
        ax.set_ylabel("mean log-prob recovered")
        ax.legend(fontsize=7)
        figures.append(("Recovery vs noise amplitude", fig))
    depth = audits.get("patching_depth", {}).get("statistics", {}).get("per_layer")
    if depth:
        fig = Figure(figsize=(5, 3))
        ax = fig.add_subplot()
        for key in ("audited_forget", "reference_forget", "audited_holdout"):
            ax.plot(range(len(depth[key])), depth[key], marker="o", label=key)
        ax.axhline(depth["original_forget"], color="k", linestyle="--", label="original, forget")
        ax.set_xlabel("patched block")
        ax.set_ylabel("answer log-prob per token")
        ax.legend(fontsize=7)
        figures.append(("Patching depth", fig))
    return figures
