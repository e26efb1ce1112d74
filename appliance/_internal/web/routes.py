"""Platform routes: health, the OpenAPI document, whoami, jobs, reports, the transparency log
and the cluster-internal blob exchange."""

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
from appliance._internal.jobs.kinds import job_kinds
from appliance._internal.jobs.service import cancel_job, job_view, submit_job
from appliance._internal.reports import render_html, report_body, report_bundle
from appliance._internal.web.db import get_enqueue, get_store
from appliance._internal.web.http import Api
from appliance.errors import NotFound, ValidationFailed
from appliance.schemas import (
    Checkpoint,
    ConsistencyProof,
    ConsistencyQuery,
    Health,
    JobCreate,
    JobKindList,
    JobList,
    JobLogs,
    JobOut,
    ListQuery,
    LogsQuery,
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
    return get_store()


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
        job = submit_job(_store(), g.principal, body.kind, body.params, get_enqueue())
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
