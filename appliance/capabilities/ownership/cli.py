"""``appliance ownership watermark|watermarks|audit``: dataset-ownership verification through
the SDK (``client.ownership``)."""

from __future__ import annotations

import json
import sys
from typing import Any, cast

import click

from appliance.capabilities.ownership.schemas import OwnershipMethod
from appliance.cli import _client, _fail, _http_options, _json_object, _key_values, _run_sdk


@click.group()
def ownership() -> None:
    """Dataset ownership: was a suspect model trained on my dataset?"""


@ownership.command("watermark")
@click.argument("dataset_id")
@click.option("--fraction", type=float, default=0.01, show_default=True,
              help="share of images that carry the trigger")
@click.option("--target-class", type=int, default=0, show_default=True)
@click.option("--clean-label", is_flag=True, help="mark only images of the target class")
@click.option("--strength", type=float, default=0.15, show_default=True)
@click.option("--decoy-fraction", type=float, default=0.03, show_default=True)
@click.option("--name", default=None, help="name of the marked copy")
@click.option("--out", type=click.Path(dir_okay=False),
              help="also save the marked copy (.npz) here: the file to release")
@click.option("--id-only", is_flag=True, help="print only the watermark's id")
@_http_options
def watermark(dataset_id: str, fraction: float, target_class: int, clean_label: bool,
              strength: float, decoy_fraction: float, name: str | None, out: str | None,
              id_only: bool, url: str, token: str) -> None:
    """Mark a copy of an image dataset with a secret-keyed watermark before release (the key
    stays sealed in the appliance)."""
    client = _client(url, token)
    mark = _run_sdk(lambda: client.ownership.watermark(
        dataset_id, fraction=fraction, target_class=target_class, clean_label=clean_label,
        strength=strength, decoy_fraction=decoy_fraction, name=name))
    if out:
        _run_sdk(lambda: client.ownership.download(mark.marked_dataset.id, out))
        click.echo(f"saved the marked copy to {out}", err=True)
    click.echo(mark.id if id_only else mark.model_dump_json(indent=2))


@ownership.command("watermarks")
@_http_options
def watermarks(url: str, token: str) -> None:
    """List this tenant's watermarks."""
    marks = _run_sdk(lambda: _client(url, token).ownership.watermarks())
    click.echo(json.dumps([m.model_dump(mode="json") for m in marks], indent=2))


@ownership.command("audit")
@click.option("--method", type=click.Choice(["watermark_dvbw", "dov4cl"]), required=True)
@click.option("--suspect", help="the suspect's model id")
@click.option("--suspect-endpoint", metavar="JSON",
              help='a remote suspect instead: {"url": ..., "timeout_s": 10, "query_budget": 5000}')
@click.option("--watermark", "watermark_id", help="watermark_dvbw: the watermark's id")
@click.option("--benign", help="watermark_dvbw: a labelled held-out dataset id")
@click.option("--public", help="dov4cl: the released dataset id")
@click.option("--private", help="dov4cl: a private same-distribution dataset id")
@click.option("--shadow", "shadows", multiple=True, help="dov4cl: a shadow encoder id (repeat)")
@click.option("--shadow-training", metavar="JSON",
              help='dov4cl: train shadows here, e.g. {"dataset_id": ..., "objective": "simclr"}')
@click.option("--param", "-p", "pairs", multiple=True,
              help="a method parameter KEY=VALUE, e.g. -p mode=label -p m=100")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--wait/--no-wait", default=True, show_default=True)
@click.option("--id-only", is_flag=True, help="print only the job id (with --no-wait)")
@_http_options
def audit(method: str, suspect: str | None, suspect_endpoint: str | None,
          watermark_id: str | None, benign: str | None, public: str | None,
          private: str | None, shadows: tuple[str, ...], shadow_training: str | None,
          pairs: tuple[str, ...], seed: int, wait: bool, id_only: bool, url: str,
          token: str) -> None:
    """Start an ownership audit; with --wait show its progress and print the verdict, p-value
    and report id (exit 2 if the job did not succeed)."""
    from appliance.client import ClientError, JobNotSucceeded

    if (suspect is None) == (suspect_endpoint is None):
        _fail("give exactly one of --suspect and --suspect-endpoint")
    client = _client(url, token)
    job = _run_sdk(lambda: client.ownership.audit(
        cast(OwnershipMethod, method), suspect_model_id=suspect,
        suspect_endpoint=_json_object(suspect_endpoint, "--suspect-endpoint"),
        watermark_id=watermark_id, benign_dataset_id=benign, public_dataset_id=public,
        private_dataset_id=private, shadow_model_ids=list(shadows) or None,
        shadow_training=_json_object(shadow_training, "--shadow-training"),
        method_params=_key_values(pairs), seed=seed))
    if not wait:
        click.echo(job.id if id_only else job.model_dump_json(indent=2))
        return
    try:
        result = client.ownership.wait(job, progress=True)
    except JobNotSucceeded as exc:
        click.secho(exc.diagnostics(), fg="red", err=True)
        sys.exit(2)
    except ClientError as exc:
        _fail(exc.diagnostics())
        return
    printed: dict[str, Any] = {"job": result.job.id, "report": result.report_id, "method": result.method,
                               "verdict": result.verdict, "p_value": result.p_value, "alpha": result.alpha,
                               "queries": result.queries}
    shadows = result.report.inputs.get("shadows")
    if isinstance(shadows, dict):  # DOV4CL: each shadow's model id, trained here or reused
        printed["shadows"] = [{"model_id": m.get("model_id"), "status": m.get("status")}
                              for m in shadows.get("models", [])]
    click.echo(json.dumps(printed, indent=1))


def group() -> click.Group:
    """The ``ownership`` command group."""
    return ownership
