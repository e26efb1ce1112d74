"""``appliance refinements ...``: confidential refinement through the SDK, for both parties.

    model owner:  appliance refinements create model.npz --kind softmax --measurement M \\
                      --platform-key platform.hex --result-key-out result.key
    data owner:   appliance refinements provision ID --invitation inv_... --train t.npz \\
                      --validation v.npz --measurement M --platform-key platform.hex
    either:       appliance refinements wait ID
    model owner:  appliance refinements result ID --result-key result.key --out refined.npz

Nothing is sent unless the enclave's quote verifies against the pinned platform key and the
MRENCLAVE allow-list (``--measurement``, repeatable)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from appliance.cli import _client, _fail, _http_options, _run_sdk


def _pins(fn: Any) -> Any:
    fn = click.option("--allow-simulated", is_flag=True,
                      help="accept a quote of the simulated platform (all this appliance has)")(fn)
    fn = click.option("--platform-key", required=True,
                      help="the pinned platform key: 64 hex digits, or a file holding them or a PEM")(fn)
    fn = click.option("--measurement", "measurements", multiple=True, required=True,
                      help="an allowed MRENCLAVE (hex); repeat for several builds")(fn)
    return fn


def _platform_key(value: str) -> str:
    path = Path(value)
    return path.read_text().strip() if path.is_file() else value


def _arrays(path: str, *names: str) -> dict[str, Any]:
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError) as exc:
        _fail(f"{path} is not a readable .npz: {exc}")
    missing = [n for n in names if n not in arrays]
    if missing:
        _fail(f"{path} lacks the arrays {missing} (it has {sorted(arrays)})")
    return arrays


def _sdk(fn: Any) -> Any:
    """Run an SDK call; a refused quote, a bad signature or a wrong key is a clear message
    like any SDK error (the SDK raises the crypto layer's own errors for those)."""
    from crypto.errors import Error
    from crypto.provisioning import ProvisioningError

    try:
        return _run_sdk(fn)
    except ProvisioningError as exc:
        _fail(f"ENCLAVE NOT TRUSTED, nothing was sent: {exc.diagnostics()}")
    except Error as exc:
        _fail(exc.diagnostics())


@click.group()
def refinements() -> None:
    """Confidential refinement: a model owner's model refined in the enclave on a data
    owner's encrypted data."""


@refinements.command("attestation")
@click.option("--nonce", default=None, help="hex, 16-64 bytes (default: fresh random)")
@_http_options
def attestation(nonce: str | None, url: str, token: str) -> None:
    """Print the enclave's quote answer: platform key and measurement. Pin them only after
    checking them out of band; this answer alone proves nothing."""
    try:
        raw = bytes.fromhex(nonce) if nonce else os.urandom(32)
    except ValueError:
        _fail("--nonce must be hex")
    click.echo(json.dumps(_run_sdk(lambda: _client(url, token).enclave_attestation(raw)), indent=2))


@refinements.command("create")
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.option("--kind", type=click.Choice(["softmax", "mlp_last_layer"]), required=True,
              help="softmax: arrays W (d, k), b (k,); mlp_last_layer: also W1 (d, h), b1 (h,)")
@click.option("--epochs", type=int, default=1, show_default=True)
@click.option("--lr", type=float, default=0.5, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--reduction", type=click.Choice(["host", "enclave"]), default="host",
              show_default=True)
@click.option("--name", default=None)
@click.option("--result-key-out", type=click.Path(dir_okay=False), required=True,
              help="new file for the key that opens the result (stays with you, mode 0600)")
@_pins
@_http_options
def create(model: str, kind: str, epochs: int, lr: float, seed: int, batch_size: int,
           reduction: str, name: str | None, result_key_out: str, measurements: tuple[str, ...],
           platform_key: str, allow_simulated: bool, url: str, token: str) -> None:
    """Model owner: verify the enclave, wrap MODEL (.npz) to it and create the refinement;
    prints its id and the one-time invitation for the data owner."""
    arrays = _arrays(model, "W", "b", *(("W1", "b1") if kind == "mlp_last_layer" else ()))
    try:  # before anything is sent: the key must have a home
        fd = os.open(result_key_out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        _fail(f"{result_key_out} exists; the result key is never overwritten")
    try:
        created = _sdk(lambda: _client(url, token).create_refinement(
            arrays, kind=kind, expected_measurements=list(measurements),
            platform_key=_platform_key(platform_key), allow_simulated=allow_simulated,
            epochs=epochs, lr=lr, seed=seed, batch_size=batch_size, reduction=reduction,
            name=name))
        os.write(fd, created.result_key.hex().encode())
    except BaseException:
        os.close(fd)
        os.unlink(result_key_out)
        raise
    os.close(fd)
    click.echo(json.dumps({"id": created.id, "invitation": created.invitation,
                           "state": created.refinement.state}, indent=2))


@refinements.command("provision")
@click.argument("refinement_id")
@click.option("--invitation", required=True, help="the one-time code from the model owner")
@click.option("--train", type=click.Path(exists=True, dir_okay=False), required=True,
              help=".npz with features x (n, d) and labels y (n,)")
@click.option("--validation", type=click.Path(exists=True, dir_okay=False), required=True,
              help=".npz with x and y, as --train")
@_pins
@_http_options
def provision(refinement_id: str, invitation: str, train: str, validation: str,
              measurements: tuple[str, ...], platform_key: str, allow_simulated: bool,
              url: str, token: str) -> None:
    """Data owner: verify the enclave, CKKS-encrypt the data here and upload it (the secret
    key reaches only the enclave); starts the refinement."""
    t, v = _arrays(train, "x", "y"), _arrays(validation, "x", "y")
    out = _sdk(lambda: _client(url, token).provision_refinement(
        refinement_id, invitation, X=t["x"], y=t["y"], X_val=v["x"], y_val=v["y"],
        expected_measurements=list(measurements), platform_key=_platform_key(platform_key),
        allow_simulated=allow_simulated))
    click.echo(out.model_dump_json(indent=2, exclude={"report"}))


@refinements.command("list")
@_http_options
def list_(url: str, token: str) -> None:
    """Refinements where this tenant is the model owner or the data owner."""
    items = _run_sdk(lambda: _client(url, token).list_refinements())
    for item in items:
        click.echo(f"{item.id}  {item.state:13} {item.role:11} {item.terms.kind} "
                   f"{item.name or ''}")


@refinements.command("status")
@click.argument("refinement_id")
@click.option("--invitation", default=None, help="a data owner who has not provisioned yet")
@click.option("--field", help="print one field only, e.g. state")
@_http_options
def status(refinement_id: str, invitation: str | None, field: str | None, url: str,
           token: str) -> None:
    """Show a refinement: state, terms, job, checkpoint (the report with `wait`)."""
    out = _run_sdk(lambda: _client(url, token).get_refinement(refinement_id,
                                                               invitation=invitation))
    data = out.model_dump(mode="json", exclude={"report"})
    if field:
        if field not in data:
            _fail(f"no field {field!r}; fields: {', '.join(data)}")
        value = data[field]
        click.echo("" if value is None else value if isinstance(value, str) else json.dumps(value))
    else:
        click.echo(json.dumps(data, indent=2))


@refinements.command("wait")
@click.argument("refinement_id")
@click.option("--timeout", type=float, default=3600.0, show_default=True)
@_http_options
def wait(refinement_id: str, timeout: float, url: str, token: str) -> None:
    """Wait with a progress bar; print the state, the job's reason and the report's key
    figures; exit 2 if it did not succeed."""
    out = _run_sdk(lambda: _client(url, token).wait_refinement(refinement_id, timeout=timeout,
                                                               progress=True))
    report = (out.report or {}).get("report", {})
    stats = report.get("statistics", {})
    click.echo(json.dumps({"id": out.id, "state": out.state,
                           "error": out.job.error if out.job else None,
                           "report": report.get("id"),
                           "final_accuracy": stats.get("final_accuracy")}, indent=1))
    if out.state != "succeeded":
        sys.exit(2)


@refinements.command("retry")
@click.argument("refinement_id")
@click.option("--resume/--restart", default=True, show_default=True,
              help="resume from the last sealed checkpoint, or start over")
@_http_options
def retry(refinement_id: str, resume: bool, url: str, token: str) -> None:
    """Model owner: run a failed refinement again; prints the new job."""
    job = _run_sdk(lambda: _client(url, token).retry_refinement(refinement_id, resume=resume))
    click.echo(job.model_dump_json(indent=2))


@refinements.command("result")
@click.argument("refinement_id")
@click.option("--result-key", type=click.Path(exists=True, dir_okay=False), required=True,
              help="the file `create --result-key-out` wrote")
@click.option("--out", type=click.Path(dir_okay=False), required=True,
              help="where to save the refined model's arrays (.npz)")
@click.option("--key", type=click.Path(exists=True, dir_okay=False),
              help="the appliance's public key (PEM) to check the signed manifest against "
              "(default: the key the server names)")
@_http_options
def result(refinement_id: str, result_key: str, out: str, key: str | None, url: str,
           token: str) -> None:
    """Model owner: fetch the refined model, check its signed manifest and open it."""
    import numpy as np

    try:
        secret = bytes.fromhex(Path(result_key).read_text().strip())
    except ValueError:
        _fail(f"{result_key} does not hold a hex result key")
    pem = Path(key).read_text() if key else None
    refined = _sdk(lambda: _client(url, token).refinement_result(
        refinement_id, secret, trusted_key_pem=pem))
    np.savez(out, **refined.arrays)
    click.echo(json.dumps({"refinement_id": refined.refinement_id, "job_id": refined.job_id,
                           "report_id": refined.report_id, "sha256": refined.sha256,
                           "arrays": sorted(refined.arrays), "saved": out}, indent=1))


def group() -> click.Group:
    """The ``refinements`` command group."""
    return refinements
