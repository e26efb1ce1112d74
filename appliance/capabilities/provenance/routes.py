"""Routes of the provenance capability: start an audit, list this tenant's generators."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, g
from flask_limiter import Limiter

from appliance._internal.jobs.service import job_view, submit_job
from appliance._internal.web.db import get_enqueue, get_store
from appliance._internal.web.http import Api
from appliance.capabilities.catalog.service import model_view
from appliance.capabilities.provenance.schemas import ProvenanceParams
from appliance.schemas import JobOut, ModelList


def register(app: Flask, api: Api, limiter: Limiter) -> None:
    """Add ``/v1/provenance/...`` to the app."""
    bp = Blueprint("provenance", __name__, url_prefix="/v1/provenance")

    @api.op(bp, "/audits", "POST", summary="Start a provenance audit (job kind 'provenance')",
            tag="provenance", body=ProvenanceParams, response=JobOut, status=202)
    def start_audit(body: ProvenanceParams) -> dict[str, Any]:
        job = submit_job(get_store(), g.principal, "provenance", body.model_dump(mode="json"),
                         get_enqueue())
        return job_view(job)

    @api.op(bp, "/generators", summary="This tenant's registered generators", tag="provenance",
            response=ModelList)
    def list_generators() -> dict[str, Any]:
        rows = get_store().conn.execute(
            "SELECT * FROM models WHERE tenant_id = ? AND kind = 'generator' ORDER BY created_at",
            (g.principal.tenant_id,)).fetchall()
        return {"items": [model_view(dict(r)) for r in rows]}

    app.register_blueprint(bp)
