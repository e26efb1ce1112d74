"""``appliance unlearning audit|unlearn|audits``: the SDK from the command line."""

from __future__ import annotations

import json
from typing import Any

import click

from appliance.cli import _client, _fail, _http_options, _run_sdk


@click.group()
def unlearning() -> None:
    """Unlearning audits of causal language models, and reference unlearning."""


def _audit_params(option: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """``--set relearning.steps=5`` pairs as per-audit parameters (values parsed as JSON)."""
    params: dict[str, dict[str, Any]] = {}
    for pair in option:
        key, sep, raw = pair.partition("=")
        audit, dot, name = key.partition(".")
        if not sep or not dot:
            _fail(f"--set takes AUDIT.PARAM=VALUE, got {pair!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        params.setdefault(audit, {})[name] = value
    return params


@unlearning.command("audits")
@_http_options
def audits(url: str, token: str) -> None:
    """List the audits with their default parameters."""
    listing = _run_sdk(lambda: _client(url, token).unlearning.audits())
    click.echo(listing.model_dump_json(indent=2))


@unlearning.command("audit")
@click.option("--model", "model_id", required=True, help="the audited model's id")
@click.option("--forget", "forget_dataset_id", required=True, help="forget dataset id (JSONL)")
@click.option("--holdout", "holdout_dataset_id", required=True, help="holdout dataset id")
@click.option("--retain", "retain_dataset_id", help="retain dataset id (demonstrations)")
@click.option("--reference", "reference_model_id", help="model trained without the forget set")
@click.option("--original", "original_model_id", help="the model before unlearning")
@click.option("--audit", "audit_names", multiple=True, help="run only these audits")
@click.option("--set", "settings", multiple=True, help="AUDIT.PARAM=VALUE, e.g. relearning.steps=5")
@click.option("--alpha", type=float, default=0.05, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--wait/--no-wait", default=True, show_default=True)
@_http_options
def audit(model_id: str, forget_dataset_id: str, holdout_dataset_id: str,
          retain_dataset_id: str | None, reference_model_id: str | None,
          original_model_id: str | None, audit_names: tuple[str, ...], settings: tuple[str, ...],
          alpha: float, seed: int, wait: bool, url: str, token: str) -> None:
    """Audit whether MODEL forgot the forget set; prints the job, or its verdicts when done."""
    params: dict[str, Any] = {"model_id": model_id, "forget_dataset_id": forget_dataset_id,
                              "holdout_dataset_id": holdout_dataset_id, "alpha": alpha,
                              "seed": seed, "audit_params": _audit_params(settings)}
    for key, value in (("retain_dataset_id", retain_dataset_id),
                       ("reference_model_id", reference_model_id),
                       ("original_model_id", original_model_id)):
        if value:
            params[key] = value
    if audit_names:
        params["audits"] = list(audit_names)
    client = _client(url, token)
    job = _run_sdk(lambda: client.unlearning.audit(**params))
    if not wait:
        click.echo(job.model_dump_json(indent=2))
        return
    job = _run_sdk(lambda: client.wait(job))
    if job.state != "succeeded":
        _fail(f"job {job.id} {job.state}: {job.error}")
    bundle = _run_sdk(lambda: client.get_report(job.report_id))
    body = _verified_body(bundle)
    stats = body["statistics"]
    for name, result in stats["audits"].items():
        click.echo(f"{name:24s} p_knowledge={result['p_value']:.3g} "
                   f"p_unlearned={result['statistics']['p_unlearned']:.3g} {result['verdict']}")
    click.echo(f"overall: {body['verdict']} ({stats['correction']})")
    click.echo(f"report: {job.report_id}")


def _verified_body(bundle: dict[str, Any]) -> dict[str, Any]:
    """The report inside a bundle whose signature and log inclusion check out."""
    from appliance.client import verify_report

    return dict(verify_report(bundle).report)


@unlearning.command("unlearn")
@click.option("--model", "model_id", required=True)
@click.option("--forget", "forget_dataset_id", required=True)
@click.option("--retain", "retain_dataset_id", required=True)
@click.option("--algorithm", required=True,
              type=click.Choice(["grad_ascent", "grad_diff", "kl_min", "npo", "idk", "rmu"]))
@click.option("--steps", type=int, default=60, show_default=True)
@click.option("--lr", type=float, default=5e-4, show_default=True)
@click.option("--name", help="name of the new model")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--id-only", is_flag=True, help="print only the new model's id")
@_http_options
def unlearn(model_id: str, forget_dataset_id: str, retain_dataset_id: str, algorithm: str,
            steps: int, lr: float, name: str | None, seed: int, id_only: bool, url: str,
            token: str) -> None:
    """Unlearn the forget set from MODEL; waits, registers the new model and prints its id."""
    params: dict[str, Any] = {"model_id": model_id, "forget_dataset_id": forget_dataset_id,
                              "retain_dataset_id": retain_dataset_id, "algorithm": algorithm,
                              "steps": steps, "lr": lr, "seed": seed}
    if name:
        params["name"] = name
    client = _client(url, token)
    job = _run_sdk(lambda: client.wait(client.unlearning.unlearn(**params)))
    if job.state != "succeeded":
        _fail(f"job {job.id} {job.state}: {job.error}")
    model = _run_sdk(lambda: client.unlearning.register_model(job))
    click.echo(model.id if id_only else f"model: {model.id} ({model.name}); "
               f"report: {job.report_id}")
