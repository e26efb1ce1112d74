"""HTTP routes of the catalog: architectures, models (ONNX, safetensors, transformers) and
datasets (npz, JSONL); the logic is in :mod:`appliance.capabilities.catalog.service`."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, current_app, g, request
from flask_limiter import Limiter

from appliance._internal.identity import identity_for
from appliance._internal.store import loads
from appliance._internal.web.db import get_store
from appliance._internal.web.http import Api, parse_json_text
from appliance.capabilities import model_signature_verifier
from appliance.capabilities.catalog.service import dataset_view, model_view, register_dataset, register_model
from appliance.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType, ValidationFailed
from appliance.schemas import (
    ArchitectureList,
    DatasetList,
    DatasetOut,
    DatasetUpload,
    ListQuery,
    ModelList,
    ModelOut,
    ModelUpload,
)
from models.architectures import list_architectures


def _upload_file(*roles: str) -> Any:
    """The upload's 'file' part, once the caller's role may upload (checked first: a refused
    caller never makes the server read its body) and every text field is within the form
    limit."""
    g.principal.require(*roles)
    if request.mimetype != "multipart/form-data":
        raise UnsupportedMediaType(
            f"uploads are multipart/form-data with a 'file' part, got {request.mimetype or 'nothing'}"
        )
    upload = request.files.get("file")
    if upload is None:
        raise ValidationFailed("missing the 'file' part")
    limit = current_app.config["APPLIANCE_SETTINGS"].max_json_bytes
    for field_name, value in request.form.items():
        if len(value.encode("utf-8")) > limit:
            raise PayloadTooLarge(
                f"form field {field_name!r} exceeds the limit of {limit} bytes "
                "(APPLIANCE_MAX_JSON_BYTES)")
    return upload


def _signature_check(store: Any) -> Any:
    """The model.sig part of an upload, bound to the capability that verifies it (or None)."""
    part = request.files.get("signature")
    if part is None:
        return None
    verifier = model_signature_verifier()
    if verifier is None:
        raise ValidationFailed("this appliance does not verify model signatures")
    limit = current_app.config["APPLIANCE_SETTINGS"].max_json_bytes
    data = part.stream.read(limit + 1)
    if len(data) > limit:
        raise ValidationFailed(f"the 'signature' part is larger than {limit} bytes")
    principal = g.principal
    return lambda model_path: verifier(store, principal, model_path, data)


def register(app: Flask, api: Api, limiter: Limiter) -> None:
    """Add ``/v1/architectures``, ``/v1/models`` and ``/v1/datasets`` to the app."""
    bp = Blueprint("catalog", __name__, url_prefix="/v1")

    @api.op(bp, "/architectures", summary="Registered architecture names", tag="models",
            response=ArchitectureList)
    def architectures() -> dict[str, Any]:
        return {"items": list_architectures()}

    # -- models -------------------------------------------------------------------------------
    @api.op(bp, "/models", "POST", summary="Register a model (ONNX, safetensors, transformers tar)",
            tag="models", form=ModelUpload, response=ModelOut, status=201)
    def create_model() -> dict[str, Any]:
        upload = _upload_file("admin", "auditor")
        form = request.form
        config: dict[str, Any] | None = None
        if form.get("config"):
            config = parse_json_text(form["config"], "'config' (a JSON object)")
            if not isinstance(config, dict):
                raise BadRequest("'config' must be a JSON object")
        store = get_store()
        row = register_model(
            store, g.principal, stream=upload.stream, filename=upload.filename,
            name=form.get("name", ""), declared_format=form.get("format") or None,
            kind=form.get("kind") or None, architecture=form.get("architecture") or None,
            config=config, check_signature=_signature_check(store),
        )
        return model_view(row)

    @api.op(bp, "/models", summary="List this tenant's models", tag="models", query=ListQuery,
            response=ModelList)
    def list_models(query: ListQuery) -> dict[str, Any]:
        rows = get_store().list_owned("models", g.principal.tenant_id, limit=query.limit,
                                   offset=query.offset)
        return {"items": [model_view(r) for r in rows]}

    @api.op(bp, "/models/<model_id>", summary="One model", tag="models", response=ModelOut)
    def get_model(model_id: str) -> dict[str, Any]:
        return model_view(get_store().get_owned("models", g.principal.tenant_id, model_id, "model"))

    @api.op(bp, "/models/<model_id>/manifest", summary="Signed manifest (DSSE, in-toto)",
            tag="models")
    def get_manifest(model_id: str) -> dict[str, Any]:
        row = get_store().get_owned("models", g.principal.tenant_id, model_id, "model")
        return {"envelope": loads(row["manifest"]),
                "public_key": identity_for(current_app.config["APPLIANCE_SETTINGS"]).public_key_pem}

    # -- datasets -----------------------------------------------------------------------------
    @api.op(bp, "/datasets", "POST",
            summary="Register a dataset (.npz: x, optional y; or .jsonl text items)",
            tag="datasets", form=DatasetUpload, response=DatasetOut, status=201)
    def create_dataset() -> dict[str, Any]:
        upload = _upload_file("admin", "auditor")
        row = register_dataset(get_store(), g.principal, stream=upload.stream,
                               name=request.form.get("name", ""))
        return dataset_view(row)

    @api.op(bp, "/datasets", summary="List this tenant's datasets", tag="datasets",
            query=ListQuery, response=DatasetList)
    def list_datasets(query: ListQuery) -> dict[str, Any]:
        rows = get_store().list_owned("datasets", g.principal.tenant_id, limit=query.limit,
                                   offset=query.offset)
        return {"items": [dataset_view(r) for r in rows]}

    @api.op(bp, "/datasets/<dataset_id>", summary="One dataset", tag="datasets",
            response=DatasetOut)
    def get_dataset(dataset_id: str) -> dict[str, Any]:
        return dataset_view(
            get_store().get_owned("datasets", g.principal.tenant_id, dataset_id, "dataset"))

    app.register_blueprint(bp)
