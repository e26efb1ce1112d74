"""CLI commands of private ensemble inference, part of the ``appliance`` command::

    appliance ensembles create ./my-ensemble --name topics     # folder with the artifact files
    appliance ensembles create --json ensemble.json --tensors ensemble.safetensors
    appliance ensembles list
    appliance ensembles show ENSEMBLE_ID
    appliance predict ENSEMBLE_ID "some text" "another text"   # private round trip via the SDK
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from appliance.cli import _client, _fail, _http_options, _run_sdk


@click.group()
def ensembles() -> None:
    """Private ensembles (encrypted inference)."""


@ensembles.command("create")
@click.argument("folder", required=False, type=click.Path(exists=True, file_okay=False))
@click.option("--json", "json_path", type=click.Path(exists=True, dir_okay=False),
              help="ensemble.json (instead of FOLDER)")
@click.option("--tensors", "tensors_path", type=click.Path(exists=True, dir_okay=False),
              help="ensemble.safetensors (instead of FOLDER)")
@click.option("--name", default=None, help="display name")
@click.option("--id-only", is_flag=True, help="print only the new ensemble's id")
@_http_options
def ensembles_create(folder: str | None, json_path: str | None, tensors_path: str | None,
                     name: str | None, id_only: bool, url: str, token: str) -> None:
    """Register a private ensemble from its artifact files (owner: admin or auditor).

    Linear heads (format v1) and hidden-layer heads (format v2, ``head: quadratic_mlp``) alike,
    one-hot ensembles (format v3, ``output: onehot``, built with
    ``EnsembleArtifact(output="onehot")``) and label ensembles (format v4, ``output: label``: the
    label alone, in two rounds); the output mode is the owner's choice, so it lives in the
    artifact, not in a flag here.
    """
    from crypto.ensemble import JSON_NAME, TENSORS_NAME

    if folder is not None and (json_path or tensors_path):
        _fail("give either FOLDER or --json/--tensors, not both")
    if folder is not None:
        files = {n: (Path(folder) / n).read_bytes() for n in (JSON_NAME, TENSORS_NAME)
                 if (Path(folder) / n).is_file()}
        if len(files) != 2:
            _fail(f"{folder} must hold {JSON_NAME} and {TENSORS_NAME}")
    elif json_path and tensors_path:
        files = {JSON_NAME: Path(json_path).read_bytes(),
                 TENSORS_NAME: Path(tensors_path).read_bytes()}
    else:
        _fail("give FOLDER, or both --json and --tensors")
        return
    out = _run_sdk(lambda: _client(url, token).create_ensemble(files, name=name))
    click.echo(out.id if id_only else out.model_dump_json(indent=2))


@ensembles.command("list")
@_http_options
def ensembles_list(url: str, token: str) -> None:
    """List this tenant's ensembles."""
    items = _run_sdk(lambda: _client(url, token).list_ensembles())
    click.echo(json.dumps([i.model_dump() for i in items], indent=2))


@ensembles.command("show")
@click.argument("ensemble_id")
@_http_options
def ensembles_show(ensemble_id: str, url: str, token: str) -> None:
    """Print an ensemble's public spec (templates, classes, layout; never weights)."""
    spec = _run_sdk(lambda: _client(url, token).ensemble_spec(ensemble_id))
    click.echo(json.dumps(spec, indent=2))


@click.command("predict")
@click.argument("ensemble_id")
@click.argument("texts", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="labels and win counts (or one-hot values) as JSON")
@click.option("--no-batch", is_flag=True, help="one request per text instead of the batch form")
@_http_options
def predict(ensemble_id: str, texts: tuple[str, ...], as_json: bool, no_batch: bool, url: str,
            token: str) -> None:
    """Private inference: embed TEXTS locally, encrypt, send, decrypt the labels.

    The texts are embedded with the encoder the ensemble names (MiniLM, in float or 8 bits)."""
    def run() -> object:
        # opens a session for the call (keys made while MiniLM embeds) and closes it; with
        # APPLIANCE_KEY_PASSPHRASE set the keys come from, and go to, the local key store
        with _client(url, token) as client:
            return client.private_predict(ensemble_id, list(texts), batch=not no_batch)

    result = _run_sdk(run)
    if as_json:
        key, values = ("one_hot", result.one_hot) if result.win_counts is None else ("win_counts", result.win_counts)
        click.echo(json.dumps([
            {"text_index": i, "label": lb, key: [round(float(v), 4) for v in row]}
            for i, (lb, row) in enumerate(zip(result.labels, values, strict=True))
        ], indent=2))
    else:
        for label in result.labels:
            click.echo(label)
