"""Routes: tenant signer keys, a model's manifest as a Sigstore bundle (model.sig), and the
public key that verifies it."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, Response, current_app, g
from flask_limiter import Limiter

from appliance._internal.store import Store
from appliance._internal.web.db import get_store
from appliance._internal.web.http import Api
from appliance.capabilities.signatures import service
from appliance.capabilities.signatures.schemas import SignerKeyCreate, SignerKeyList, SignerKeyOut, SigningPublicKey
from appliance.schemas import ListQuery
from crypto.sigstore import dumps_bundle


def _store() -> Store:
    return get_store()


def register(app: Flask, api: Api, limiter: Limiter) -> None:
    bp = Blueprint("signatures", __name__, url_prefix="/v1")
    settings = app.config["APPLIANCE_SETTINGS"]
    service.signing_key(settings)  # created on first start, like the report-signing key
    service.trusted_roots(settings)  # a misconfigured CA bundle fails start, not an upload

    @api.op(bp, "/signers", "POST", summary="Register a signer public key (ECDSA P-256/P-384)",
            tag="signatures", body=SignerKeyCreate, response=SignerKeyOut, status=201,
            errors=(409,))
    def create_signer(body: SignerKeyCreate) -> dict[str, Any]:
        return service.add_signer(_store(), g.principal, body)

    @api.op(bp, "/signers", summary="This tenant's signer keys", tag="signatures",
            query=ListQuery, response=SignerKeyList)
    def list_signers(query: ListQuery) -> dict[str, Any]:
        return {"items": service.list_signers(_store(), g.principal, limit=query.limit,
                                              offset=query.offset)}

    @api.op(bp, "/signers/<signer_id>", summary="One signer key", tag="signatures",
            response=SignerKeyOut)
    def get_signer(signer_id: str) -> dict[str, Any]:
        return service.get_signer(_store(), g.principal, signer_id)

    @api.op(bp, "/signers/<signer_id>", "DELETE", summary="Forget a signer key",
            tag="signatures", status=204)
    def delete_signer(signer_id: str) -> Response:
        service.remove_signer(_store(), g.principal, signer_id)
        return Response(status=204)

    @api.op(bp, "/models/<model_id>/signature",
            summary="The model's manifest as a Sigstore bundle (model.sig for model_signing)",
            tag="signatures")
    def model_signature(model_id: str) -> Response:
        bundle = service.model_signature(_store(), g.principal, model_id)
        return Response(dumps_bundle(bundle), mimetype="application/json",
                        headers={"Content-Disposition": 'attachment; filename="model.sig"'})

    @api.op(bp, "/signing/public-key", summary="The appliance's model-signing key (P-256)",
            tag="signatures", response=SigningPublicKey, auth=False)
    def signing_public_key() -> dict[str, Any]:
        return service.signing_public_key(current_app.config["APPLIANCE_SETTINGS"])

    app.register_blueprint(bp)
