"""HTTP routes of private ensemble inference; the logic is in :mod:`appliance.capabilities.inference.service`.

    POST   /v1/ensembles                          owner registers ensemble.json + .safetensors
    GET    /v1/ensembles                          this tenant's ensembles
    GET    /v1/ensembles/{id}                     public spec (templates, classes, layout; no weights)
    POST   /v1/inference/sessions?ensemble_id=... evaluation keys in (octet-stream), session out
    DELETE /v1/inference/sessions/{id}            close a session, delete its keys
    POST   /v1/ensembles/{id}/predict?session=... ciphertext in, ciphertext out (octet-stream)
           ...&batch=true   PEB1-framed ciphertexts (single layout, up to 32)
           ...&layout=wide  PEW1 wide batch (slots index queries; up to 64 MB)

Binary bodies are read with a hard bound and are never logged.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, request
from flask_limiter import Limiter

from appliance._internal.config import Settings
from appliance._internal.store import loads
from appliance._internal.web.db import get_store
from appliance._internal.web.http import Api, read_bounded
from appliance.capabilities.inference.service import (
    KEYS_HINT,
    MAX_BATCH_BYTES,
    MAX_QUERY_BYTES,
    MAX_SESSION_TTL_SECONDS,
    MAX_SPEC_BYTES,
    MAX_WIDE_BYTES,
    EnsembleList,
    EnsembleOut,
    EnsembleSpec,
    EnsembleUpload,
    EvaluatorCache,
    Evaluators,
    PredictQuery,
    SessionCreateQuery,
    SessionOut,
    check_client_layout,
    close_session,
    context_limit,
    ensemble_spec,
    ensemble_view,
    get_ensemble,
    is_wide_body,
    open_session,
    predict,
    register_ensemble,
    session_view,
    wide_body_sent_as_single,
)
from appliance.errors import PayloadTooLarge, UnsupportedMediaType, ValidationFailed
from appliance.schemas import ListQuery

OCTET = "application/octet-stream"


def _store() -> Any:
    return get_store()


def evaluators_for(settings: Settings) -> Evaluators:
    """The sessions' evaluators the settings ask for (see ``inference_evaluators``)."""
    if settings.inference_evaluators == "inline":
        return EvaluatorCache()
    from appliance.capabilities.inference.host import HostedEvaluators

    return HostedEvaluators(blobs=settings.blob_dir, tmp_dir=settings.tmp_dir,
                            idle_seconds=settings.inference_idle_seconds)


def _cache() -> Evaluators:
    cache = current_app.extensions.get("appliance.inference_cache")
    if cache is None:
        cache = current_app.extensions.setdefault(
            "appliance.inference_cache", evaluators_for(current_app.config["APPLIANCE_SETTINGS"]))
    return cache  # type: ignore[no-any-return]


def _binary_body(limit: int, what: str, *, hint: str | None = None, single: bool = False) -> bytes:
    """The request body as bytes (application/octet-stream), at most ``limit`` bytes.

    ``single``: the body should be single-layout ciphertexts; an oversize body that starts
    like a wide-layout body gets the 422 that says so rather than a 413 about its size.
    """
    if request.mimetype != OCTET:
        raise UnsupportedMediaType(f"{what} is sent as {OCTET}, got {request.mimetype or 'nothing'}")
    if request.content_length is not None and request.content_length > limit:
        if single and is_wide_body(read_bounded(request.stream, 4)):
            raise wide_body_sent_as_single()
        raise PayloadTooLarge(f"{what} is limited to {limit} bytes", hint=hint)
    raw = read_bounded(request.stream, limit + 1)
    if len(raw) > limit:
        if single and is_wide_body(raw):
            raise wide_body_sent_as_single()
        raise PayloadTooLarge(f"{what} is limited to {limit} bytes", hint=hint)
    return raw


def _file_part(name: str, limit: int) -> bytes:
    upload = request.files.get(name)
    if upload is None:
        raise ValidationFailed(f"missing the {name!r} file part")
    data = read_bounded(upload.stream, limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge(f"{name!r} is limited to {limit} bytes")
    return data


def register(app: Flask, api: Api, limiter: Limiter) -> None:
    """Add the private-inference routes to ``app`` and document them in ``api``."""
    v1 = Blueprint("inference", __name__, url_prefix="/v1")
    app.extensions.setdefault("appliance.inference_cache", evaluators_for(app.config["APPLIANCE_SETTINGS"]))

    @api.op(v1, "/ensembles", "POST", summary="Register a private ensemble (owner: admin, auditor)",
            tag="inference", form=EnsembleUpload, response=EnsembleOut, status=201)
    def create_ensemble() -> dict[str, Any]:
        if request.mimetype != "multipart/form-data":
            raise UnsupportedMediaType(
                "ensembles are multipart/form-data with 'ensemble_json' and "
                f"'ensemble_safetensors' parts, got {request.mimetype or 'nothing'}")
        g.principal.require("admin", "auditor")
        settings = current_app.config["APPLIANCE_SETTINGS"]
        json_bytes = _file_part("ensemble_json", MAX_SPEC_BYTES)
        tensors = _file_part("ensemble_safetensors", settings.max_upload_bytes)
        name = request.form.get("name") or None
        if name is not None and len(name) > 128:
            raise ValidationFailed("'name' is at most 128 characters")
        row = register_ensemble(_store(), g.principal, json_bytes=json_bytes,
                                tensors_bytes=tensors, name=name)
        return ensemble_view(row)

    @api.op(v1, "/ensembles", summary="List this tenant's private ensembles", tag="inference",
            query=ListQuery, response=EnsembleList)
    def list_ensembles(query: ListQuery) -> dict[str, Any]:
        rows = _store().list_owned("ensembles", g.principal.tenant_id, limit=query.limit,
                                   offset=query.offset)
        return {"items": [ensemble_view(r) for r in rows]}

    @api.op(v1, "/ensembles/<ensemble_id>", summary="An ensemble's public spec (never weights)",
            tag="inference", response=EnsembleSpec)
    def get_ensemble_spec(ensemble_id: str) -> dict[str, Any]:
        return ensemble_spec(get_ensemble(_store(), g.principal, ensemble_id))

    @api.op(v1, "/inference/sessions", "POST",
            summary="Open a session: upload evaluation keys (public context, no secret key)",
            tag="inference", query=SessionCreateQuery, raw_body=OCTET, response=SessionOut,
            status=201)
    def create_session(query: SessionCreateQuery) -> dict[str, Any]:
        store = _store()
        ensemble = get_ensemble(store, g.principal, query.ensemble_id)  # 404 before reading megabytes
        check_client_layout(loads(ensemble["spec"]), query.layout)  # and 422 for another packing
        keys = _binary_body(context_limit(str(loads(ensemble["spec"])["preset"])), "evaluation keys",
                            hint=KEYS_HINT)
        ttl = min(current_app.config["APPLIANCE_SETTINGS"].inference_session_ttl_seconds,
                  MAX_SESSION_TTL_SECONDS)
        if query.ttl_seconds is not None:
            ttl = min(ttl, query.ttl_seconds)
        row = open_session(store, _cache(), g.principal, ensemble_id=query.ensemble_id,
                           keys=keys, ttl_seconds=ttl, layout=query.layout)
        return session_view(row)

    @api.op(v1, "/inference/sessions/<session_id>", "DELETE",
            summary="Close a session and delete its evaluation keys", tag="inference",
            status=204)
    def delete_session(session_id: str) -> Response:
        close_session(_store(), _cache(), g.principal, session_id)
        return Response(status=204)

    @api.op(v1, "/ensembles/<ensemble_id>/predict", "POST",
            summary="Evaluate the ensemble on ciphertext; the reply is ciphertext",
            tag="inference", query=PredictQuery, raw_body=OCTET, produces=OCTET,
            errors=(409, 410))
    def predict_encrypted(ensemble_id: str, query: PredictQuery) -> Response:
        store = _store()
        if query.layout == "wide":
            limit, what = MAX_WIDE_BYTES, "a wide batch body"
        else:
            limit = MAX_BATCH_BYTES if query.batch else MAX_QUERY_BYTES
            what = "the batch body" if query.batch else "a query ciphertext"
        if request.mimetype != OCTET:
            raise UnsupportedMediaType(f"{what} is sent as {OCTET}, got "
                                       f"{request.mimetype or 'nothing'}")
        reply = predict(store, _cache(), g.principal, ensemble_id=ensemble_id,
                        session_id=query.session,
                        body=lambda: _binary_body(limit, what, single=query.layout != "wide"),
                        batch=query.batch, layout=query.layout)
        return Response(reply, status=200, mimetype=OCTET)

    app.register_blueprint(v1)
