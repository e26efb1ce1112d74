"""Routes for dataset-ownership verification: mark a dataset with a secret-keyed watermark
before release, list watermarks, download a dataset (e.g. the marked copy to release)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from flask import Blueprint, Flask, Response, current_app, g, send_file
from flask_limiter import Limiter

from appliance._internal.secrets import seal_secret
from appliance._internal.store import dumps, loads, new_id, utcnow
from appliance._internal.web.db import get_store
from appliance._internal.web.http import Api
from appliance.audits.errors import AuditError
from appliance.audits.ownership.watermark import mark_dataset, new_key
from appliance.capabilities.catalog.service import dataset_view, read_dataset, register_dataset
from appliance.capabilities.ownership.job import _seal_context
from appliance.capabilities.ownership.schemas import WatermarkCreate, WatermarkList, WatermarkOut
from appliance.errors import UnprocessableInput
from appliance.schemas import ListQuery
from models.errors import ModelError


def _store() -> Any:
    return get_store()


def _view(store: Any, row: dict[str, Any]) -> dict[str, Any]:
    marked = store.get_owned("datasets", row["tenant_id"], row["marked_dataset_id"], "dataset")
    return {"id": row["id"], "source_dataset_id": row["source_dataset_id"],
            "marked_dataset": dataset_view(marked), "n_marked": row["n_marked"],
            "params": loads(row["params"]), "created_at": row["created_at"]}


def register(app: Flask, api: Api, limiter: Limiter) -> None:
    bp = Blueprint("ownership", __name__, url_prefix="/v1")

    @api.op(bp, "/datasets/<dataset_id>/watermark", "POST", tag="ownership",
            summary="Mark a dataset with a secret-keyed watermark before release",
            body=WatermarkCreate, response=WatermarkOut, status=201)
    def create_watermark(dataset_id: str, body: WatermarkCreate) -> dict[str, Any]:
        g.principal.require("admin", "auditor")
        store = _store()
        source = store.get_owned("datasets", g.principal.tenant_id, dataset_id, "dataset")
        try:  # stored under the limits of its upload; the operator may have lowered them since
            data = read_dataset(store.settings, store.blobs.path(source["digest"]))
        except ModelError as exc:
            raise UnprocessableInput(f"dataset cannot be read: {exc}") from None
        if data.y is None or data.x.ndim != 4 or data.x.dtype.kind != "f":
            raise UnprocessableInput(
                "watermarking needs float images x [n, C, H, W] and integer labels y",
                hint="reshape flat images to [n, 1, H, W] before uploading")
        key = new_key()
        try:
            marked = mark_dataset(data.x, data.y, key, fraction=body.fraction,
                                  target_class=body.target_class, clean_label=body.clean_label,
                                  strength=body.strength, decoy_fraction=body.decoy_fraction)
        except AuditError as exc:
            raise UnprocessableInput(str(exc)) from None
        buf = io.BytesIO()
        np.savez(buf, x=marked.x, y=marked.y)
        buf.seek(0)
        name = body.name or f"{source['name']}-watermarked"[:128]
        marked_row = register_dataset(store, g.principal, stream=buf, name=name)
        watermark_id = new_id("wm")
        sealed = seal_secret(current_app.config["APPLIANCE_SETTINGS"], key,
                             context=_seal_context(watermark_id, g.principal.tenant_id))
        params = {"fraction": body.fraction, "target_class": body.target_class,
                  "clean_label": body.clean_label, "strength": body.strength,
                  "decoy_fraction": body.decoy_fraction, "n_decoys": int(len(marked.decoy_indices))}
        store.conn.execute(
            "INSERT INTO watermarks (id, tenant_id, source_dataset_id, marked_dataset_id, "
            "sealed_key, params, n_marked, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (watermark_id, g.principal.tenant_id, dataset_id, marked_row["id"], sealed,
             dumps(params), int(len(marked.indices)), utcnow()))
        return _view(store, store.get_owned("watermarks", g.principal.tenant_id, watermark_id,
                                            "watermark"))

    @api.op(bp, "/watermarks", summary="This tenant's watermarks (keys never leave the appliance)",
            tag="ownership", query=ListQuery, response=WatermarkList)
    def list_watermarks(query: ListQuery) -> dict[str, Any]:
        store = _store()
        rows = store.list_owned("watermarks", g.principal.tenant_id, limit=query.limit,
                                offset=query.offset)
        return {"items": [_view(store, r) for r in rows]}

    @api.op(bp, "/watermarks/<watermark_id>", summary="One watermark", tag="ownership",
            response=WatermarkOut)
    def get_watermark(watermark_id: str) -> dict[str, Any]:
        store = _store()
        return _view(store, store.get_owned("watermarks", g.principal.tenant_id, watermark_id,
                                            "watermark"))

    @api.op(bp, "/datasets/<dataset_id>/download", summary="Download a dataset (.npz)",
            tag="datasets", produces="application/octet-stream")
    def download_dataset(dataset_id: str) -> Response:
        g.principal.require("admin", "auditor")
        store = _store()
        row = store.get_owned("datasets", g.principal.tenant_id, dataset_id, "dataset")
        return send_file(store.blobs.path(row["digest"]), mimetype="application/octet-stream",
                         as_attachment=True, download_name=f"{dataset_id}.npz")

    app.register_blueprint(bp)
