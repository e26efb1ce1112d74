"""Core routes: health, whoami, models, datasets, jobs, reports, the transparency log."""

from __future__ import annotations

import hmac
import json
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, request, send_file
from flask_limiter import Limiter

from appliance import __version__
from appliance._internal.auth import (
    format_timestamp,
    list_tenant_tokens,
    mint_tenant_token,
    parse_duration,
    revoke_tenant_token,
    token_view,
)
from appliance._internal.identity import LOG_ORIGIN, identity_for
from appliance._internal.jobs.runner import cancel_job, job_kinds, job_view, make_enqueuer, submit_job
from appliance._internal.reports import render_html, report_body, report_bundle
from appliance._internal.store import loads
from appliance._internal.web.http import Api, parse_json_text
from appliance.capabilities.catalog.service import dataset_view, model_view, register_dataset, register_model
from appliance.errors import BadRequest, NotFound, PayloadTooLarge, ValidationFailed
from appliance.schemas import (
    ArchitectureList,
    Checkpoint,
    ConsistencyProof,
    ConsistencyQuery,
    DatasetList,
    DatasetOut,
    DatasetUpload,
    Health,
    JobCreate,
    JobKindList,
    JobList,
    JobLogs,
    JobOut,
    ListQuery,
    LogsQuery,
    ModelList,
    ModelOut,
    ModelUpload,
    PublicKey,
    ReportBundle,
    ReportList,
    ReportQuery,
    ReportSummary,
    TokenCreate,
    TokenIssued,
    TokenList,
    WhoAmI,
)

# evaluation outputs a report names by digest; other methods' artifacts (a refined model)
# have their own routes and access rules
SERVED_ARTIFACTS = ("confusion_matrix.npz", "embeddings.npy")


def _settings() -> Any:
    return current_app.config["APPLIANCE_SETTINGS"]


def _store() -> Any:
    from appliance._internal.web.app import get_store

    return get_store()


def _enqueue() -> Any:
    fn = current_app.extensions.get("appliance.enqueue")
    if fn is None:
        fn = current_app.extensions["appliance.enqueue"] = make_enqueuer(_settings())
    return fn


def _upload_file(*roles: str) -> Any:
    """The upload's 'file' part, once the caller's role may upload (checked first: a refused
    caller never makes the server read its body) and every text field is within the form
    limit."""
    g.principal.require(*roles)
    if request.mimetype != "multipart/form-data":
        from appliance.errors import UnsupportedMediaType

        raise UnsupportedMediaType(
            f"uploads are multipart/form-data with a 'file' part, got {request.mimetype or 'nothing'}"
        )
    upload = request.files.get("file")
    if upload is None:
        raise ValidationFailed("missing the 'file' part")
    limit = _settings().max_json_bytes
    for field_name, value in request.form.items():
        if len(value.encode("utf-8")) > limit:
            raise PayloadTooLarge(
                f"form field {field_name!r} exceeds the limit of {limit} bytes "
                "(APPLIANCE_MAX_JSON_BYTES)")
    return upload


def _signature_check(store: Any) -> Any:
    """The model.sig part of an upload, bound to the capability that verifies it (or None)."""
    from appliance.capabilities import model_signature_verifier

    part = request.files.get("signature")
    if part is None:
        return None
    verifier = model_signature_verifier()
    if verifier is None:
        raise ValidationFailed("this appliance does not verify model signatures")
    limit = _settings().max_json_bytes
    data = part.stream.read(limit + 1)
    if len(data) > limit:
        raise ValidationFailed(f"the 'signature' part is larger than {limit} bytes")
    principal = g.principal
    return lambda model_path: verifier(store, principal, model_path, data)


def register_core(app: Flask, api: Api, limiter: Limiter) -> None:
    root = Blueprint("root", __name__)
    v1 = Blueprint("v1", __name__, url_prefix="/v1")

    @api.op(root, "/healthz", summary="Liveness and configuration summary", tag="meta",
            response=Health, auth=False)
    @limiter.exempt
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "version": __version__,
                "queue": "redis" if _settings().cluster else "sqlite"}

    @api.op(root, "/openapi.json", summary="This document", tag="meta", auth=False)
    @limiter.exempt
    def openapi() -> dict[str, Any]:
        return api.openapi(title="Audit appliance API", version=__version__)

    @api.op(v1, "/whoami", summary="The caller's tenant and role", tag="meta", response=WhoAmI)
    def whoami() -> dict[str, Any]:
        p = g.principal
        return {"tenant": p.tenant_name, "role": p.role, "token_id": p.token_id,
                "expires_at": format_timestamp(p.expires_at)}

    # -- tokens: a tenant admin onboards its own clients and auditors --------------------------
    @api.op(v1, "/tokens", "POST", summary="Mint a client or auditor token for this tenant",
            tag="meta", body=TokenCreate, response=TokenIssued, status=201, errors=(403,))
    def create_tenant_token(body: TokenCreate) -> dict[str, Any]:
        lifetime = None if body.expires_in is None else parse_duration(body.expires_in)
        store = _store()
        issued = mint_tenant_token(store, g.principal, role=body.role, label=body.label,
                                   expires_in=lifetime)
        row = store.conn.execute("SELECT * FROM tokens WHERE id = ?", (issued.token_id,)).fetchone()
        return {**token_view(dict(row)), "token": issued.token}

    @api.op(v1, "/tokens", summary="This tenant's tokens (never the tokens themselves)",
            tag="meta", response=TokenList, errors=(403,))
    def list_tokens() -> dict[str, Any]:
        return {"items": list_tenant_tokens(_store(), g.principal)}

    @api.op(v1, "/tokens/<token_id>", "DELETE", summary="Revoke one of this tenant's tokens",
            tag="meta", status=204, errors=(403,))
    def revoke_tenant_token_view(token_id: str) -> Response:
        revoke_tenant_token(_store(), g.principal, token_id)
        return Response(status=204)

    @api.op(v1, "/architectures", summary="Registered architecture names", tag="models",
            response=ArchitectureList)
    def architectures() -> dict[str, Any]:
        from models.architectures import list_architectures

        return {"items": list_architectures()}

    # -- models -------------------------------------------------------------------------------
    @api.op(v1, "/models", "POST", summary="Register a model (ONNX, safetensors, transformers tar)",
            tag="models", form=ModelUpload, response=ModelOut, status=201)
    def create_model() -> dict[str, Any]:
        upload = _upload_file("admin", "auditor")
        form = request.form
        config: dict[str, Any] | None = None
        if form.get("config"):
            config = parse_json_text(form["config"], "'config' (a JSON object)")
            if not isinstance(config, dict):
                raise BadRequest("'config' must be a JSON object")
        store = _store()
        row = register_model(
            store, g.principal, stream=upload.stream, filename=upload.filename,
            name=form.get("name", ""), declared_format=form.get("format") or None,
            kind=form.get("kind") or None, architecture=form.get("architecture") or None,
            config=config, check_signature=_signature_check(store),
        )
        return model_view(row)

    @api.op(v1, "/models", summary="List this tenant's models", tag="models", query=ListQuery,
            response=ModelList)
    def list_models(query: ListQuery) -> dict[str, Any]:
        rows = _store().list_owned("models", g.principal.tenant_id, limit=query.limit,
                                   offset=query.offset)
        return {"items": [model_view(r) for r in rows]}

    @api.op(v1, "/models/<model_id>", summary="One model", tag="models", response=ModelOut)
    def get_model(model_id: str) -> dict[str, Any]:
        return model_view(_store().get_owned("models", g.principal.tenant_id, model_id, "model"))

    @api.op(v1, "/models/<model_id>/manifest", summary="Signed manifest (DSSE, in-toto)",
            tag="models")
    def get_manifest(model_id: str) -> dict[str, Any]:
        row = _store().get_owned("models", g.principal.tenant_id, model_id, "model")
        return {"envelope": loads(row["manifest"]),
                "public_key": identity_for(_settings()).public_key_pem}

    # -- datasets -----------------------------------------------------------------------------
    @api.op(v1, "/datasets", "POST",
            summary="Register a dataset (.npz: x, optional y; or .jsonl text items)",
            tag="datasets", form=DatasetUpload, response=DatasetOut, status=201)
    def create_dataset() -> dict[str, Any]:
        upload = _upload_file("admin", "auditor")
        row = register_dataset(_store(), g.principal, stream=upload.stream,
                               name=request.form.get("name", ""))
        return dataset_view(row)

    @api.op(v1, "/datasets", summary="List this tenant's datasets", tag="datasets",
            query=ListQuery, response=DatasetList)
    def list_datasets(query: ListQuery) -> dict[str, Any]:
        rows = _store().list_owned("datasets", g.principal.tenant_id, limit=query.limit,
                                   offset=query.offset)
        return {"items": [dataset_view(r) for r in rows]}

    @api.op(v1, "/datasets/<dataset_id>", summary="One dataset", tag="datasets",
            response=DatasetOut)
    def get_dataset(dataset_id: str) -> dict[str, Any]:
        return dataset_view(
            _store().get_owned("datasets", g.principal.tenant_id, dataset_id, "dataset"))

    # -- jobs ---------------------------------------------------------------------------------
    @api.op(v1, "/job-kinds", summary="Job kinds and their parameter schemas", tag="jobs",
            response=JobKindList)
    def list_job_kinds() -> dict[str, Any]:
        return {"items": [
            {"name": k.name, "description": k.description, "roles": list(k.roles),
             "params_schema": k.params_model.model_json_schema()}
            for k in job_kinds().values()]}

    @api.op(v1, "/jobs", "POST", summary="Start a job", tag="jobs", body=JobCreate,
            response=JobOut, status=202, errors=(409,))
    def create_job(body: JobCreate) -> dict[str, Any]:
        job = submit_job(_store(), g.principal, body.kind, body.params, _enqueue())
        return job_view(job)

    @api.op(v1, "/jobs", summary="List this tenant's jobs", tag="jobs", query=ListQuery,
            response=JobList)
    def list_jobs(query: ListQuery) -> dict[str, Any]:
        rows = _store().list_owned("jobs", g.principal.tenant_id, limit=query.limit,
                                   offset=query.offset)
        return {"items": [job_view(r) for r in rows]}

    @api.op(v1, "/jobs/<job_id>", summary="One job: state, progress, report id", tag="jobs",
            response=JobOut)
    def get_job(job_id: str) -> dict[str, Any]:
        return job_view(_store().get_owned("jobs", g.principal.tenant_id, job_id, "job"))

    @api.op(v1, "/jobs/<job_id>/logs", summary="A job's log lines", tag="jobs", query=LogsQuery,
            response=JobLogs)
    def get_job_logs(job_id: str, query: LogsQuery) -> dict[str, Any]:
        store = _store()
        store.get_owned("jobs", g.principal.tenant_id, job_id, "job")
        return {"items": store.job_logs(job_id, after=query.after, limit=query.limit)}

    @api.op(v1, "/jobs/<job_id>/cancel", "POST", summary="Cancel a queued or running job",
            tag="jobs", response=JobOut, errors=(409,))
    def cancel(job_id: str) -> dict[str, Any]:
        return job_view(cancel_job(_store(), _settings(), g.principal, job_id))

    # -- reports ------------------------------------------------------------------------------
    @api.op(v1, "/reports", summary="List this tenant's reports", tag="reports", query=ListQuery,
            response=ReportList)
    def list_reports(query: ListQuery) -> dict[str, Any]:
        rows = _store().list_owned("reports", g.principal.tenant_id, limit=query.limit,
                                   offset=query.offset)
        return {"items": [ReportSummary(
            id=r["id"], job_id=r["job_id"], method=r["method"], verdict=r["verdict"],
            log_index=r["log_index"], created_at=r["created_at"]).model_dump() for r in rows]}

    @api.op(v1, "/reports/<report_id>.html", summary="A report as a readable page", tag="reports",
            produces="text/html")
    def get_report_html(report_id: str) -> Response:
        row = _store().get_owned("reports", g.principal.tenant_id, report_id, "report")
        page = render_html(report_body(row), log_index=row["log_index"])
        resp = Response(page, mimetype="text/html")
        # the page is self-contained: inline CSS and data: images, never scripts
        resp.headers["Content-Security-Policy"] = (
            "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
            "frame-ancestors 'none'")
        return resp

    @api.op(v1, "/reports/<report_id>/artifacts/<name>",
            summary="A file an evaluation report binds by sha256 (confusion_matrix.npz, "
            "embeddings.npy)", tag="reports", produces="application/octet-stream")
    def get_report_artifact(report_id: str, name: str) -> Response:
        row = _store().get_owned("reports", g.principal.tenant_id, report_id, "report")
        body = report_body(row)
        artifacts = (body.get("extra") or {}).get("artifacts") or {}
        digest = artifacts.get(name) if name in SERVED_ARTIFACTS else None
        if body.get("method", {}).get("name") != "evaluation" or not isinstance(digest, str):
            raise NotFound(f"report {report_id!r} has no downloadable artifact {name[:80]!r}")
        path = _store().blobs.path(digest)
        if not path.is_file():
            raise NotFound(f"artifact {name!r} of report {report_id!r} is no longer stored")
        return send_file(path, mimetype="application/octet-stream", download_name=name)

    @api.op(v1, "/reports/<report_id>", summary="A signed report bundle (verify offline)",
            tag="reports", query=ReportQuery, response=ReportBundle)
    def get_report(report_id: str, query: ReportQuery) -> dict[str, Any]:
        row = _store().get_owned("reports", g.principal.tenant_id, report_id, "report")
        identity = identity_for(_settings())
        size = identity.log.size()
        if query.tree_size is not None and not row["log_index"] < query.tree_size <= size:
            raise ValidationFailed(
                f"tree_size must be in ({row['log_index']}, {size}] for this report")
        bundle = report_bundle(identity, row, query.tree_size)
        bundle["report"] = report_body(row)
        return bundle

    # -- transparency log (public: anyone may audit it) ---------------------------------------
    @api.op(v1, "/log/checkpoint", summary="The latest signed checkpoint", tag="log",
            response=Checkpoint, auth=False)
    def checkpoint() -> dict[str, Any]:
        identity = identity_for(_settings())
        envelope = identity.log.checkpoint()
        body = json.loads(__import__("base64").b64decode(envelope["payload"]))
        return {"envelope": envelope, "tree_size": body["tree_size"],
                "root_hash": body["root_hash"]}

    @api.op(v1, "/log/consistency", summary="Consistency proof between two tree sizes",
            tag="log", query=ConsistencyQuery, response=ConsistencyProof, auth=False)
    def consistency(query: ConsistencyQuery) -> dict[str, Any]:
        log = identity_for(_settings()).log
        size = log.size()
        second = query.second or size
        if not 1 <= query.first <= second <= size:
            raise ValidationFailed(f"need 1 <= first <= second <= {size}")
        proof = log.consistency_proof(query.first, second)
        return {"first": query.first, "second": second, "proof": [h.hex() for h in proof]}

    @api.op(v1, "/log/public-key", summary="The appliance's report-signing key", tag="log",
            response=PublicKey, auth=False)
    def public_key() -> dict[str, Any]:
        identity = identity_for(_settings())
        return {"public_key": identity.public_key_pem, "key_id": identity.key_id,
                "log_origin": LOG_ORIGIN}

    # -- cluster-internal blob exchange (not in the public document) ---------------------------
    def _check_cluster() -> None:
        token = _settings().cluster_token
        presented = request.headers.get("X-Cluster-Token", "")
        if not token or not hmac.compare_digest(token.encode(), presented.encode()):
            raise NotFound(f"no route for {request.path}")

    @api.op(v1, "/internal/blobs/<digest>", summary="cluster blob fetch", tag="internal",
            auth=False, hidden=True)
    @limiter.exempt
    def internal_blob(digest: str) -> Response:
        _check_cluster()
        path = _store().blobs.path(digest)
        if not path.is_file():
            raise NotFound("no such blob")
        return send_file(path, mimetype="application/octet-stream")

    @api.op(v1, "/internal/blobs", "POST", summary="cluster artifact upload", tag="internal",
            auth=False, hidden=True, status=201)
    @limiter.exempt
    def internal_blob_put() -> dict[str, Any]:
        _check_cluster()
        store = _store()
        digest, size = store.blobs.put_stream(request.stream,
                                              max_bytes=_settings().max_upload_bytes)
        store.record_blob(digest, size)
        return {"digest": digest, "size": size}

    app.register_blueprint(root)
    app.register_blueprint(v1)
