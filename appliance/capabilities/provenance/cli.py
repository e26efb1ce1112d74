"""``appliance provenance ...``: register generators and run provenance audits over HTTP."""

from __future__ import annotations

import json
from pathlib import Path

import click

from appliance.cli import _http_options, _json_object, _key_values, _run_sdk


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
    @click.option("--architecture", default=None,
                  help="safetensors generators: conditional_mlp or linear_gaussian")
    @click.option("--config", "config_text", default=None, metavar="JSON|@FILE",
                  help="safetensors generators: the architecture's config as JSON, or @file.json")
    @click.option("--id-only", is_flag=True, help="print only the new generator's id")
    @_http_options
    def register(path: str, name: str, num_classes: int, class_names: str | None, architecture: str | None,
                 config_text: str | None, id_only: bool, url: str, token: str) -> None:
        """Register a generator: an ONNX graph, or safetensors weights with --architecture and
        --config; prints its model record as JSON."""
        from appliance.client import Client

        config = _json_object(config_text, "--config")
        names = class_names.split(",") if class_names else None
        with Client(url, token=token) as client:
            model = _run_sdk(lambda: client.provenance.register_generator(
                path, name=name, num_classes=num_classes, class_names=names,
                architecture=architecture, config=config))
        click.echo(model.id if id_only else json.dumps(model.model_dump(mode="json"), indent=1))

    @provenance.command("audit")
    @click.option("--generator", "generators", multiple=True, required=True,
                  help="generator model id (repeat for attribution)")
    @click.option("--suspect", required=True, help="suspect model id")
    @click.option("--reference", "references", multiple=True,
                  help="registered labelled dataset of real samples: a reference of the contrast test (repeatable)")
    @click.option("--param", "extra", multiple=True, help="key=value (JSON value), e.g. n_shadow=100")
    @click.option("--wait/--no-wait", default=True)
    @_http_options
    def audit(generators: tuple[str, ...], suspect: str, references: tuple[str, ...], extra: tuple[str, ...],
              wait: bool, url: str, token: str) -> None:
        """Start a provenance audit; with --wait print the verdict and the report id."""
        from appliance.client import Client

        params = _key_values(extra)
        if references:
            params["reference_dataset_ids"] = list(references)
        with Client(url, token=token) as client:
            job = _run_sdk(lambda: client.provenance.audit(generator_ids=list(generators),
                                                           suspect_model_id=suspect, **params))
            if not wait:
                click.echo(job.id)
                return
            job = _run_sdk(lambda: client.wait(job))
            if job.state != "succeeded":
                raise click.ClickException(f"job {job.id} {job.state}: {job.error}")
            report = _run_sdk(lambda: client.get_report(str(job.report_id)))
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
        """Write a reference generator (per-class PCA on a quarter of digits, as ONNX and as
        safetensors of architecture linear_gaussian with its config in generator.config.json), two
        suspects (safetensors MLPs, 64 -> 64 -> 10): one trained on its samples, one on real
        digits it never saw; and the owner's real digits (a labelled .npz) as a contrast reference."""
        import numpy as np
        import torch
        from safetensors.torch import save_file

        from models.generators import export_onnx, fit_linear_gaussian, save_safetensors_generator
        from models.provenance import ShadowSpec, balanced_labels, digits_provenance_splits, train_shadow

        torch.set_num_threads(1)
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        parts = digits_provenance_splits(seed=0)
        generator = fit_linear_gaussian(*parts[0])
        export_onnx(generator, folder / "generator.onnx")
        architecture, config = save_safetensors_generator(generator, folder / "generator.safetensors")
        (folder / "generator.config.json").write_text(json.dumps(config) + "\n", encoding="utf-8")
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
        click.echo(f"wrote {folder}/generator.onnx, generator.safetensors (architecture {architecture}, "
                   "config generator.config.json), suspect-own.safetensors, suspect-real.safetensors "
                   "(architecture mlp, config {\"in_features\": 64, \"hidden\": 64, \"num_classes\": 10}), "
                   "owner-real.npz (x [n, 1, 8, 8], y)")

    return provenance
