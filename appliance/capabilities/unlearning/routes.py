"""Routes of the unlearning capability: the audits on offer, and registering the model an
``unlearn`` job produced."""

from __future__ import annotations

from typing import Any, cast

from flask import Blueprint, Flask, g
from flask_limiter import Limiter

from appliance._internal.reports import register_plotter, report_body
from appliance._internal.store import utcnow
from appliance._internal.web.db import get_store
from appliance._internal.web.http import Api
from appliance.audits.unlearning import CORRECTION
from appliance.audits.unlearning.base import null_statement
from appliance.audits.unlearning.methods import AUDITS
from appliance.capabilities.catalog.service import model_view, register_model
from appliance.capabilities.unlearning.plots import audit_plots
from appliance.capabilities.unlearning.schemas import AuditInfo, AuditInfoList
from appliance.capabilities.unlearning.service import AUDIT_METHOD
from appliance.errors import Conflict
from appliance.schemas import ModelOut


def _store() -> Any:
    return get_store()


def audit_catalogue() -> dict[str, Any]:
    """Every audit with its defaults, the null hypothesis and the correction."""
    items = [AuditInfo(name=a.short, method=a.name, defaults=a.defaults(),
                       description=(a.__doc__ or "").strip().splitlines()[0]
                       if a.__doc__ else a.short) for a in AUDITS]
    return {"items": [i.model_dump() for i in items], "null_hypothesis": null_statement(True),
            "correction": CORRECTION}


def register_unlearned_model(store: Any, principal: Any, job_id: str) -> dict[str, Any]:
    """Register (once) the model a succeeded ``unlearn`` job saved; returns the model row."""
    principal.require("admin", "auditor")
    job = store.get_owned("jobs", principal.tenant_id, job_id, "job")
    if job["kind"] != "unlearn":
        raise Conflict(f"job {job_id} is a {job['kind']} job, not an unlearn job")
    if job["state"] != "succeeded" or not job["report_id"]:
        raise Conflict(f"job {job_id} is {job['state']}; its model exists once it succeeded")
    done = store.conn.execute("SELECT model_id FROM unlearned_models WHERE job_id=? AND "
                              "tenant_id=?", (job_id, principal.tenant_id)).fetchone()
    if done is not None:
        return cast("dict[str, Any]", store.get_owned("models", principal.tenant_id, done["model_id"], "model"))
    report = report_body(store.get_owned("reports", principal.tenant_id, job["report_id"],
                                         "report"))
    extra = report.get("extra") or {}
    digest = extra["artifacts"]["model.tar"]
    with open(store.blobs.path(digest), "rb") as handle:
        row = register_model(store, principal, stream=handle, filename="model.tar",
                             name=extra["model_name"], declared_format="transformers",
                             kind="causal_lm")
    store.conn.execute("INSERT OR IGNORE INTO unlearned_models (job_id, tenant_id, model_id, "
                       "created_at) VALUES (?, ?, ?, ?)",
                       (job_id, principal.tenant_id, row["id"], utcnow()))
    return row


def register(app: Flask, api: Api, limiter: Limiter) -> None:
    bp = Blueprint("unlearning", __name__, url_prefix="/v1/unlearning")
    register_plotter(AUDIT_METHOD, audit_plots)

    @api.op(bp, "/audits", summary="The unlearning audits, their defaults and the correction",
            tag="unlearning", response=AuditInfoList)
    def list_audits() -> dict[str, Any]:
        return audit_catalogue()

    @api.op(bp, "/jobs/<job_id>/model", "POST", tag="unlearning", response=ModelOut,
            status=201, errors=(409,),
            summary="Register the model a succeeded unlearn job produced (idempotent)")
    def register_model_of_job(job_id: str) -> dict[str, Any]:
        return model_view(register_unlearned_model(_store(), g.principal, job_id))

    app.register_blueprint(bp)
