"""``appliance provenance ...``: register generators and run provenance audits over HTTP."""

from __future__ import annotations

import json
from typing import Any

import click


def _options(fn: Any) -> Any:
    fn = click.option("--url", envvar="APPLIANCE_URL", default="http://127.0.0.1:8080", show_default=True)(fn)
    return click.option("--token", envvar="APPLIANCE_TOKEN", required=True, help="API token (or $APPLIANCE_TOKEN)")(fn)


def group() -> click.Group:
    """The ``provenance`` command group."""

    @click.group("provenance")
    def provenance() -> None:
        """Training-data provenance: was a suspect trained on samples of my generator?"""

    @provenance.command("register")
    @click.argument("path", type=click.Path(exists=True, dir_okay=False))
    @click.option("--name", required=True)
    @click.option("--num-classes", type=int, required=True)
    @click.option("--class-names", default=None, help="comma-separated class names")
    @click.option("--id-only", is_flag=True, help="print only the new generator's id")
    @_options
    def register(path: str, name: str, num_classes: int, class_names: str | None, id_only: bool,
                 url: str, token: str) -> None:
        """Register an ONNX generator; prints its model record as JSON."""
        from appliance.client import Client

        with Client(url, token=token) as client:
            names = class_names.split(",") if class_names else None
            model = client.provenance.register_generator(path, name=name, num_classes=num_classes,
                                                         class_names=names)
        click.echo(model.id if id_only else json.dumps(model.model_dump(mode="json"), indent=1))

    @provenance.command("audit")
    @click.option("--generator", "generators", multiple=True, required=True,
                  help="generator model id (repeat for attribution)")
    @click.option("--suspect", required=True, help="suspect model id")
    @click.option("--reference", "references", multiple=True,
                  help="registered labelled dataset of real samples: a reference of the contrast test (repeatable)")
    @click.option("--param", "extra", multiple=True, help="key=value (JSON value), e.g. n_shadow=100")
    @click.option("--wait/--no-wait", default=True)
    @_options
    def audit(generators: tuple[str, ...], suspect: str, references: tuple[str, ...], extra: tuple[str, ...],
              wait: bool, url: str, token: str) -> None:
        """Start a provenance audit; with --wait print the verdict and the report id."""
        from appliance.client import Client

        params: dict[str, Any] = {}
        for item in extra:
            key, sep, value = item.partition("=")
            if not sep:
                raise click.BadParameter(f"{item!r} is not key=value", param_hint="--param")
            try:
                params[key] = json.loads(value)
            except json.JSONDecodeError:
                params[key] = value
        if references:
            params["reference_dataset_ids"] = list(references)
        with Client(url, token=token) as client:
            job = client.provenance.audit(generator_ids=list(generators), suspect_model_id=suspect, **params)
            if not wait:
                click.echo(job.id)
                return
            job = client.wait(job)
            if job.state != "succeeded":
                raise click.ClickException(f"job {job.id} {job.state}: {job.error}")
            report = client.get_report(str(job.report_id))
        body = report["report"]
        stats = body.get("statistics", {})
        click.echo(json.dumps({"job": job.id, "report": job.report_id, "verdict": body.get("verdict"),
                               "decision": stats.get("decision"), "G": stats.get("G"),
                               "G_crit": stats.get("G_crit"), "n": stats.get("n"),
                               "best_source": stats.get("best_source"), "queries": stats.get("queries")},
                              indent=1))

    @provenance.command("demo-data")
    @click.option("--out", type=click.Path(file_okay=False), required=True)
    def demo_data(out: str) -> None:
        """Write a reference generator (per-class PCA on a quarter of digits, ONNX) and two
        suspects (safetensors MLPs, 64 -> 64 -> 10): one trained on its samples, one on real
        digits it never saw; and the owner's real digits (a labelled .npz) as a contrast reference."""
        from pathlib import Path

        import numpy as np
        import torch
        from safetensors.torch import save_file

        from models.generators import export_onnx, fit_linear_gaussian
        from models.provenance import ShadowSpec, balanced_labels, digits_provenance_splits, train_shadow

        torch.set_num_threads(1)
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        parts = digits_provenance_splits(seed=0)
        generator = fit_linear_gaussian(*parts[0])
        export_onnx(generator, folder / "generator.onnx")
        labels = balanced_labels(10, 200)
        sources = {"suspect-own": (generator.sample(labels, seed=12345, temperature=1.0), labels),
                   "suspect-real": parts[3]}
        for name, (x, y) in sources.items():
            model = train_shadow(x, y, ShadowSpec("mlp", {"hidden": 64}, epochs=20, lr=3e-3, seed=7),
                                 num_classes=10)
            save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                      str(folder / f"{name}.safetensors"))
        # the owner's real data (the quarter the generator was fitted on): a contrast reference
        np.savez(folder / "owner-real.npz", x=parts[0][0].astype(np.float32), y=parts[0][1].astype(np.int64))
        click.echo(f"wrote {folder}/generator.onnx, suspect-own.safetensors, suspect-real.safetensors "
                   "(architecture mlp, config {\"in_features\": 64, \"hidden\": 64, \"num_classes\": 10}), "
                   "owner-real.npz (x [n, 1, 8, 8], y)")

    return provenance
