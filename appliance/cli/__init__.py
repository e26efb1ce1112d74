"""The ``appliance`` command line. Every command honours ``$APPLIANCE_HOME``; commands that
talk to a server use the SDK (``$APPLIANCE_URL``, ``$APPLIANCE_TOKEN``)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from appliance._internal.config import Settings
from appliance.errors import Error


def _settings(home: str | None = None) -> Settings:
    return Settings.from_env(home=Path(home) if home else None)


def _explain(exc: BaseException) -> str:
    """The project's errors explain themselves (title, detail, hint); others by name."""
    return exc.diagnostics() if isinstance(exc, Error) else f"{type(exc).__name__}: {exc}"


def _fail(message: str) -> NoReturn:
    click.secho(message, fg="red", err=True)
    sys.exit(1)


class _Appliance(click.Group):
    """The top-level group; the capabilities' commands join it on first use (each capability
    module imports this package's helpers, so they cannot be added while it is imported)."""

    def _add_capabilities(self) -> None:
        from appliance.capabilities import CapabilityLoadError, cli_groups

        try:
            commands = cli_groups()
        except CapabilityLoadError as exc:  # a misspelt APPLIANCE_CAPABILITIES stops here
            _fail(exc.diagnostics())
            return
        for command in commands:
            if command.name not in self.commands:
                self.add_command(command)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._add_capabilities()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        self._add_capabilities()
        return super().get_command(ctx, cmd_name)


@click.group(cls=_Appliance)
@click.version_option(package_name="audit-appliance")
def main() -> None:
    """The audit appliance: signed, verifiable audits of models and data."""


# -- server side ------------------------------------------------------------------------------
@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option("--workers", default=None, type=int, help="gunicorn worker processes")
@click.option("--threads", default=8, show_default=True, type=int, help="threads per worker")
@click.option("--consumer/--no-consumer", default=True, show_default=True,
              help="also start the embedded job consumer (or the cluster event collector)")
def serve(host: str, port: int, workers: int | None, threads: int, consumer: bool) -> None:
    """Run the API with gunicorn (plus the job consumer in embedded mode)."""
    from appliance._internal.web.server import run_server

    settings = _settings()
    settings.ensure_dirs()
    children: list[subprocess.Popen[bytes]] = []
    if consumer:
        role = "collector" if settings.cluster else "worker"
        children.append(subprocess.Popen([sys.executable, "-m", "appliance", role]))

    def stop_children(*_: Any) -> None:
        for child in children:
            if child.poll() is None:
                child.terminate()

    def on_term(*_: Any) -> None:
        stop_children()
        sys.exit(0)

    signal.signal(signal.SIGTERM, on_term)
    try:
        run_server(settings, host=host, port=port, workers=workers, threads=threads)
    finally:
        stop_children()
        for child in children:
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()


@main.command()
@click.option("--workers", default=None, type=int, help="worker threads")
def worker(workers: int | None) -> None:
    """Run a job worker (Huey consumer) for this home folder or the cluster queue."""
    from appliance._internal.jobs.worker import run_worker
    from appliance._internal.web.app import configure_logging

    settings = _settings()
    configure_logging(settings.log_level)
    run_worker(settings, workers=workers)


@main.command(hidden=True)
def collector() -> None:
    """Cluster mode, API node: apply worker events from Redis to the store."""
    import threading

    from appliance._internal.jobs.worker import collect_events
    from appliance._internal.web.app import configure_logging

    settings = _settings()
    configure_logging(settings.log_level)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    signal.signal(signal.SIGINT, lambda *a: stop.set())
    collect_events(settings, stop=stop)


@main.command("init-db")
def init_db() -> None:
    """Create the home folder, database, keys and log (idempotent)."""
    from appliance._internal.identity import identity_for
    from appliance._internal.store import Store

    settings = _settings()
    Store.open(settings).close()
    identity = identity_for(settings)
    click.echo(f"home: {settings.home}\nsigning key id: {identity.key_id}")


@main.group()
def tokens() -> None:
    """API tokens: ``create``/``revoke`` on the appliance host (any tenant, any role);
    ``mint``/``list``/``remove`` against a server with a tenant admin's token (own tenant,
    client and auditor tokens)."""


@tokens.command("create")
@click.option("--tenant", required=True)
@click.option("--role", type=click.Choice(["admin", "auditor", "client"]), required=True)
@click.option("--label", default=None)
@click.option("--expires-in", default=None, metavar="DURATION",
              help="refuse the token after this long: 90m, 12h, 30d, 2w (default: never)")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def tokens_create(tenant: str, role: str, label: str | None, expires_in: str | None,
                  as_json: bool) -> None:
    """Print a new token once; only its hash is stored."""
    from appliance._internal.auth import create_token, format_timestamp, parse_duration
    from appliance._internal.store import Store
    from appliance.errors import ApplianceError

    store = Store.open(_settings())
    try:
        lifetime = None if expires_in is None else parse_duration(expires_in)
        issued = create_token(store, tenant=tenant, role=role, label=label, expires_in=lifetime)
    except ApplianceError as exc:
        _fail(exc.diagnostics())
        return
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps({"token": issued.token, "token_id": issued.token_id,
                               "tenant": tenant, "role": role,
                               "expires_at": format_timestamp(issued.expires_at)}))
    else:
        click.echo(issued.token)
        expiry = format_timestamp(issued.expires_at) or "never"
        click.echo(f"# token id {issued.token_id}, tenant {tenant}, role {role}, expires "
                   f"{expiry}; shown once, store it now", err=True)


@tokens.command("revoke")
@click.argument("token_id")
def tokens_revoke(token_id: str) -> None:
    from appliance._internal.auth import revoke_token
    from appliance._internal.store import Store

    store = Store.open(_settings())
    try:
        if not revoke_token(store, token_id):
            _fail(f"no active token {token_id}")
    finally:
        store.close()
    click.echo(f"revoked {token_id}")


# -- offline verification --------------------------------------------------------------------
@main.command()
@click.argument("report", type=click.Path(exists=True, dir_okay=False))
@click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False),
              help="a checkpoint (JSON envelope) you trust; the proof must match it")
@click.option("--key", type=click.Path(exists=True, dir_okay=False),
              help="the appliance's public key (PEM) you trust")
def verify(report: str, checkpoint: str | None, key: str | None) -> None:
    """Verify a saved report bundle offline: signature, log inclusion, checkpoint."""
    from appliance.client import verify_report

    try:
        bundle = json.loads(Path(report).read_text())
        cp = json.loads(Path(checkpoint).read_text()) if checkpoint else None
        if cp is not None and "envelope" in cp and "payload" not in cp:
            cp = cp["envelope"]
        pem = Path(key).read_text() if key else None
        result = verify_report(bundle, trusted_key_pem=pem, checkpoint=cp)
    except Exception as exc:  # every failure is a refusal with its reason
        _fail(f"VERIFICATION FAILED: {_explain(exc)}")
        return
    body = result.report
    click.secho("OK", fg="green", nl=False)
    click.echo(f": report {body.get('id')} ({body.get('method', {}).get('name')}) signed, "
               f"entry {result.index} of log size {result.tree_size}, verdict "
               f"{body.get('verdict')!r}"
               + ("" if pem else " [key taken from the bundle: pin it with --key]"))


@main.group()
def models() -> None:
    """Model commands."""


@models.command("verify")
@click.argument("path", type=click.Path(exists=True))
@click.option("--manifest", "--signature", "manifest", required=True,
              type=click.Path(exists=True, dir_okay=False),
              help="the appliance's manifest JSON, or a Sigstore bundle model.sig "
              "(from model_signing or `appliance models signature`)")
@click.option("--key", type=click.Path(exists=True, dir_okay=False),
              help="the signer's public key (PEM) you pin: the appliance's Ed25519 key for a "
              "manifest, an ECDSA key for a model.sig")
@click.option("--ca-bundle", type=click.Path(exists=True, dir_okay=False),
              help="PEM roots you trust, for a certificate-based model.sig")
def models_verify(path: str, manifest: str, key: str | None, ca_bundle: str | None) -> None:
    """Check a model folder or file against its signed manifest or model.sig, offline."""
    from appliance.capabilities.catalog.service import MANIFEST_PAYLOAD_TYPE
    from crypto.dsse import verify_envelope
    from crypto.keys import load_public_key_pem
    from crypto.sigstore import (
        BUNDLE_MEDIA_TYPE,
        load_ca_bundle,
        load_ec_public_key_pem,
        parse_bundle_bytes,
        verify_bundle,
    )
    from models.manifest import verify_manifest

    self_signed = False
    try:
        raw = Path(manifest).read_bytes()
        doc = parse_bundle_bytes(raw)
        if isinstance(doc, dict) and doc.get("mediaType") == BUNDLE_MEDIA_TYPE:
            if not key and not ca_bundle:
                raise ValueError("a model.sig names no trusted key: pin the signer's public key "
                                 "with --key (or its CA with --ca-bundle)")
            verified = verify_bundle(
                doc, trusted_keys=[load_ec_public_key_pem(Path(key).read_bytes())] if key else [],
                trusted_roots=load_ca_bundle(Path(ca_bundle).read_bytes()) if ca_bundle else [])
            statement = verified.statement
            signer = verified.signer.subject or f"key {verified.signer.fingerprint[:16]}"
        else:
            envelope = doc.get("envelope", doc) if isinstance(doc, dict) else doc
            embedded = doc.get("public_key") if isinstance(doc, dict) else None
            pem = Path(key).read_text() if key else embedded
            if not pem:
                raise ValueError("no public key: pass --key")
            self_signed = not key
            payload = verify_envelope(envelope, load_public_key_pem(pem),
                                      payload_type=MANIFEST_PAYLOAD_TYPE)
            statement = json.loads(payload)
            signer = "the key in the manifest file" if self_signed else "the pinned key"
        verify_manifest(Path(path), statement)
    except Exception as exc:
        _fail(f"VERIFICATION FAILED: {_explain(exc)}")
        return
    if self_signed:
        click.secho(
            "WARNING: SELF-SIGNED CHECK. No --key was given, so the public key was taken from "
            "the file being verified: this proves the files match the manifest, NOT who "
            "signed it. Pin the appliance's key: appliance log public-key --out appliance.pem, "
            "then --key appliance.pem.", fg="yellow", err=True)
    click.secho("OK", fg="green", nl=False)
    click.echo(f": {path} matches its signed manifest (signed by {signer})")


# -- over HTTP ----------------------------------------------------------------------------------
def _client(url: str | None, token: str | None) -> Any:
    from appliance.client import Client

    return Client(url, token=token)


def _http_options(fn: Any) -> Any:
    fn = click.option("--url", envvar="APPLIANCE_URL", default="http://127.0.0.1:8080",
                      show_default=True)(fn)
    fn = click.option("--token", envvar="APPLIANCE_TOKEN", required=True,
                      help="API token (or $APPLIANCE_TOKEN)")(fn)
    return fn


def _json_object(text: str | None, option: str) -> dict[str, Any] | None:
    """A JSON-object option: inline JSON, or ``@path`` to a file that holds it (a message and
    exit 1 when it is neither; exit 2 is kept for jobs that failed)."""
    if text is None:
        return None
    source = text
    if text.startswith("@"):
        try:
            source = Path(text[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            _fail(f"{option}: cannot read {text[1:]}: {exc.strerror}")
    try:
        value = json.loads(source)
    except json.JSONDecodeError as exc:
        _fail(f"{option} is not JSON: {exc}")
    if not isinstance(value, dict):
        _fail(f"{option} must be a JSON object")
    return dict(value)


def _key_values(pairs: tuple[str, ...], option: str = "--param") -> dict[str, Any]:
    """``KEY=VALUE`` options as a dict, each value parsed as JSON where it parses (else kept
    as a string)."""
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            _fail(f"{option} takes KEY=VALUE, got {pair!r}")
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
    return params


def _run_sdk(fn: Any) -> Any:
    from appliance.client import ClientError

    try:
        return fn()
    except ClientError as exc:
        _fail(exc.diagnostics())


@tokens.command("mint")
@click.option("--role", type=click.Choice(["client", "auditor"]), required=True)
@click.option("--label", default=None)
@click.option("--expires-in", default=None, metavar="DURATION",
              help="90m, 12h, 30d, 2w (default 30d, at most 365d)")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@_http_options
def tokens_mint(role: str, label: str | None, expires_in: str | None, as_json: bool, url: str,
                token: str) -> None:
    """Mint a client or auditor token for your tenant on a server (tenant admins)."""
    issued = _run_sdk(lambda: _client(url, token).create_token(role, label=label,
                                                               expires_in=expires_in))
    if as_json:
        click.echo(issued.model_dump_json())
    else:
        click.echo(issued.token)
        click.echo(f"# token id {issued.id}, role {issued.role}, expires {issued.expires_at}; "
                   "shown once, store it now", err=True)


@tokens.command("list")
@_http_options
def tokens_list(url: str, token: str) -> None:
    """List your tenant's tokens on a server (ids, roles, expiry; never the tokens)."""
    items = _run_sdk(lambda: _client(url, token).list_tokens())
    click.echo(json.dumps([i.model_dump() for i in items], indent=2))


@tokens.command("remove")
@click.argument("token_id")
@_http_options
def tokens_remove(token_id: str, url: str, token: str) -> None:
    """Revoke one of your tenant's tokens on a server (tenant admins)."""
    _run_sdk(lambda: _client(url, token).revoke_token(token_id))
    click.echo(f"revoked {token_id}")


@models.command("upload")
@click.argument("path", type=click.Path(exists=True))
@click.option("--name", required=True)
@click.option("--format", "fmt", type=click.Choice(["onnx", "safetensors", "transformers"]))
@click.option("--kind", type=click.Choice(["classifier", "encoder", "causal_lm", "generator"]),
              help="generators: `appliance provenance register` does the same with its options")
@click.option("--architecture")
@click.option("--config", "config_json", metavar="JSON|@FILE", help="architecture config as JSON, or @file.json")
@click.option("--signature", type=click.Path(exists=True, dir_okay=False),
              help="model.sig from model_signing sign; refused unless a registered signer "
              "(appliance signatures add-signer) or the operator's CA signed these files")
@click.option("--id-only", is_flag=True, help="print only the new model's id")
@_http_options
def models_upload(path: str, name: str, fmt: str | None, kind: str | None,
                  architecture: str | None, config_json: str | None, signature: str | None,
                  id_only: bool, url: str, token: str) -> None:
    """Upload a model file or transformers folder."""
    config = _json_object(config_json, "--config")
    model = _run_sdk(lambda: _client(url, token).upload_model(
        path, name=name, format=fmt, kind=kind, architecture=architecture, config=config,
        signature=signature))
    click.echo(model.id if id_only else model.model_dump_json(indent=2))


@models.command("list")
@click.option("--tag", help="only models the appliance trained with this tag (e.g. dov4cl_shadow)")
@click.option("--json", "as_json", is_flag=True, help="print the models as JSON")
@_http_options
def models_list(tag: str | None, as_json: bool, url: str, token: str) -> None:
    """List your tenant's models: id, kind, format, tag (for models the appliance trained), name."""
    items = _run_sdk(lambda: _client(url, token).list_models())
    if tag is not None:
        items = [m for m in items if (m.origin or {}).get("tag") == tag]
    if as_json:
        click.echo(json.dumps([m.model_dump() for m in items], indent=2))
        return
    for m in items:
        origin = m.origin or {}
        recipe = origin.get("recipe") or {}
        trained = (f" ({recipe.get('objective')} {recipe.get('family')}, {recipe.get('epochs')} epochs, "
                   f"seed {recipe.get('seed')}, job {origin.get('job_id')})" if recipe else "")
        click.echo(f"{m.id}  {m.kind:<10} {m.format:<12} {origin.get('tag', '-'):<14} {m.name}{trained}")


@models.command("manifest")
@click.argument("model_id")
@click.option("--out", type=click.Path(dir_okay=False), required=True)
@_http_options
def models_manifest(model_id: str, out: str, url: str, token: str) -> None:
    """Save a model's signed manifest for offline verification."""
    doc = _run_sdk(lambda: _client(url, token).model_manifest(model_id))
    Path(out).write_text(json.dumps(doc, indent=2))
    click.echo(f"saved {out}")


@models.command("signature")
@click.argument("model_id")
@click.option("--out", type=click.Path(dir_okay=False), default="model.sig", show_default=True)
@_http_options
def models_signature(model_id: str, out: str, url: str, token: str) -> None:
    """Save the model's manifest as a Sigstore bundle signed by the appliance (check it with
    model_signing verify key --public_key appliance.pub, after appliance signatures public-key)."""
    _run_sdk(lambda: _client(url, token).signatures.save_model_signature(model_id, out))
    click.echo(f"saved {out}")


@main.group()
def datasets() -> None:
    """Dataset commands."""


@datasets.command("upload")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--name", required=True)
@click.option("--id-only", is_flag=True, help="print only the new dataset's id")
@_http_options
def datasets_upload(path: str, name: str, id_only: bool, url: str, token: str) -> None:
    """Upload an .npz dataset (arrays 'x' and optional 'y')."""
    ds = _run_sdk(lambda: _client(url, token).upload_dataset(path, name=name))
    click.echo(ds.id if id_only else ds.model_dump_json(indent=2))


@main.group()
def jobs() -> None:
    """Job commands."""


@jobs.command("submit")
@click.argument("kind")
@click.option("--param", "-p", multiple=True, help="key=value (value parsed as JSON if it can)")
@click.option("--params", "params_json", metavar="JSON|@FILE", help="all parameters as a JSON object, or @file.json")
@click.option("--wait/--no-wait", default=False)
@click.option("--id-only", is_flag=True, help="print only the job id")
@_http_options
def jobs_submit(kind: str, param: tuple[str, ...], params_json: str | None, wait: bool,
                id_only: bool, url: str, token: str) -> None:
    """Start a job, e.g. `appliance jobs submit evaluation -p model_id=... -p dataset_id=...`."""
    params = {**(_json_object(params_json, "--params") or {}), **_key_values(param)}
    client = _client(url, token)
    job = _run_sdk(lambda: client.create_job(kind, params))
    if wait:
        job = _run_sdk(lambda: client.wait(job, progress=not id_only))
    click.echo(job.id if id_only else job.model_dump_json(indent=2))
    if job.state == "failed":
        sys.exit(2)


@jobs.command("wait")
@click.argument("job_id")
@_http_options
def jobs_wait(job_id: str, url: str, token: str) -> None:
    """Wait for a job with a progress bar; exit 2 if it did not succeed."""
    job = _run_sdk(lambda: _client(url, token).wait(job_id, progress=True))
    click.echo(job.model_dump_json(indent=2))
    if job.state != "succeeded":
        sys.exit(2)


@jobs.command("status")
@click.argument("job_id")
@click.option("--field", help="print one field only, e.g. state or report_id")
@_http_options
def jobs_status(job_id: str, field: str | None, url: str, token: str) -> None:
    """Show a job (or one of its fields)."""
    job = _run_sdk(lambda: _client(url, token).get_job(job_id))
    if field:
        data = job.model_dump(mode="json")
        if field not in data:
            _fail(f"no field {field!r}; fields: {', '.join(data)}")
        click.echo("" if data[field] is None else data[field])
    else:
        click.echo(job.model_dump_json(indent=2))


@jobs.command("logs")
@click.argument("job_id")
@_http_options
def jobs_logs(job_id: str, url: str, token: str) -> None:
    for line in _run_sdk(lambda: _client(url, token).job_logs(job_id)):
        click.echo(f"{line.ts} {line.level:7} {line.message}")


@jobs.command("cancel")
@click.argument("job_id")
@_http_options
def jobs_cancel(job_id: str, url: str, token: str) -> None:
    job = _run_sdk(lambda: _client(url, token).cancel_job(job_id))
    click.echo(job.model_dump_json(indent=2))


@main.group()
def reports() -> None:
    """Report commands."""


@reports.command("get")
@click.argument("report_id")
@click.option("--out", type=click.Path(dir_okay=False), required=True)
@click.option("--html", "as_html", is_flag=True, help="save the HTML page instead")
@_http_options
def reports_get(report_id: str, out: str, as_html: bool, url: str, token: str) -> None:
    """Save a report bundle (JSON, verifiable offline) or its HTML page."""
    client = _client(url, token)
    if as_html:
        Path(out).write_text(_run_sdk(lambda: client.report_html(report_id)))
    else:
        Path(out).write_text(json.dumps(_run_sdk(lambda: client.get_report(report_id)), indent=2))
    click.echo(f"saved {out}")


@main.command("demo-data")
@click.option("--out", type=click.Path(file_okay=False), default=".", show_default=True)
def demo_data(out: str) -> None:
    """Write digits.onnx (a trained classifier) and digits-test.npz (held-out digits)."""
    from appliance.cli.demo import write_digits_demo

    model, data = write_digits_demo(Path(out))
    click.echo(f"wrote {model} and {data}")


@main.group("log")
def log_group() -> None:
    """Transparency log commands."""


@log_group.command("checkpoint")
@click.option("--out", type=click.Path(dir_okay=False), required=True)
@click.option("--url", envvar="APPLIANCE_URL", default="http://127.0.0.1:8080")
def log_checkpoint(out: str, url: str) -> None:
    """Save the latest signed checkpoint (public)."""
    from appliance.client import Client

    cp = _run_sdk(lambda: Client(url).checkpoint())
    Path(out).write_text(json.dumps(cp, indent=2))
    click.echo(f"saved {out}")


@log_group.command("public-key")
@click.option("--out", type=click.Path(dir_okay=False), required=True)
@click.option("--url", envvar="APPLIANCE_URL", default="http://127.0.0.1:8080")
def log_public_key(out: str, url: str) -> None:
    """Save the appliance's report-signing public key (PEM); pin it when verifying."""
    from appliance.client import Client

    Path(out).write_text(_run_sdk(lambda: Client(url).public_key()))
    click.echo(f"saved {out}")

