"""``appliance signatures ...``: signer keys of this tenant and the appliance's model-signing
key, through the SDK."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click


def _client(url: str, token: str | None) -> Any:
    from appliance.client import Client

    return Client(url, token=token)


def _run(fn: Any) -> Any:
    from appliance.client import ClientError

    try:
        return fn()
    except ClientError as exc:
        click.secho(exc.diagnostics(), fg="red", err=True)
        sys.exit(1)


_url = click.option("--url", envvar="APPLIANCE_URL", default="http://127.0.0.1:8080",
                    show_default=True)
_token = click.option("--token", envvar="APPLIANCE_TOKEN", required=True,
                      help="API token (or $APPLIANCE_TOKEN)")


@click.group()
def signatures() -> None:
    """Model signatures (OpenSSF model-signing): signer keys, the appliance's key."""


@signatures.command("add-signer")
@click.argument("name")
@click.option("--public-key", "public_key", required=True,
              type=click.Path(exists=True, dir_okay=False),
              help="the signer's ECDSA P-256/P-384 public key (PEM)")
@_url
@_token
def add_signer(name: str, public_key: str, url: str, token: str) -> None:
    """Trust model.sig uploads signed by this key (this tenant only)."""
    signer = _run(lambda: _client(url, token).signatures.add_signer(
        name, Path(public_key).read_text()))
    click.echo(signer.model_dump_json(indent=2))


@signatures.command("signers")
@_url
@_token
def list_signers(url: str, token: str) -> None:
    """List this tenant's signer keys."""
    for signer in _run(lambda: _client(url, token).signatures.list_signers()):
        click.echo(f"{signer.id}  {signer.name}  {signer.curve}  {signer.fingerprint}")


@signatures.command("remove-signer")
@click.argument("signer_id")
@_url
@_token
def remove_signer(signer_id: str, url: str, token: str) -> None:
    """Stop trusting a signer key (models it verified keep their recorded signer)."""
    _run(lambda: _client(url, token).signatures.remove_signer(signer_id))
    click.echo(f"removed {signer_id}")


@signatures.command("public-key")
@click.option("--out", type=click.Path(dir_okay=False), required=True)
@_url
def public_key(out: str, url: str) -> None:
    """Save the appliance's model-signing public key (PEM) for model_signing --public_key."""
    Path(out).write_text(_run(lambda: _client(url, None).signatures.public_key()))
    click.echo(f"saved {out}")
