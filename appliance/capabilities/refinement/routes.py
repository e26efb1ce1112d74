"""HTTP routes of confidential refinement; logic in :mod:`appliance.capabilities.refinement.service`.

    GET  /v1/enclave/attestation?nonce=<hex>   public: quote, platform key, measurement
    POST /v1/refinements                       model owner: terms + wrapped model (multipart)
    GET  /v1/refinements                       refinements where the caller is a party
    GET  /v1/refinements/{id}                  either party (or X-Invitation-Code): state, job,
                                               checkpoint, signed report bundle
    POST /v1/refinements/{id}/data             data owner: invitation + encrypted data (multipart)
    POST /v1/refinements/{id}/retry            model owner: new job, resumes from the checkpoint
    GET  /v1/refinements/{id}/result           model owner: encrypted refined model + manifest

Binary parts are read with hard bounds and never logged; the server never receives plaintext
of the model, the data or any key.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, current_app, g, request
from flask_limiter import Limiter
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from appliance._internal.jobs.service import job_view
from appliance._internal.web.db import get_enqueue, get_store
from appliance._internal.web.http import Api, read_bounded, validation_problem
from appliance.capabilities.refinement.enclave import enclave_service
from appliance.capabilities.refinement.schemas import (
    MAX_CONTEXT_BYTES,
    MAX_MODEL_BYTES,
    MAX_SECRET_BYTES,
    RefinementCreated,
    RefinementCreateForm,
    RefinementList,
    RefinementOut,
    RefinementProvisionForm,
    RefinementResultOut,
    RefinementTerms,
)
from appliance.capabilities.refinement.service import (
    create_refinement,
    find_refinement,
    list_refinements,
    provision_refinement,
    refinement_result,
    refinement_view,
    retry_refinement,
)
from appliance.errors import PayloadTooLarge, UnsupportedMediaType, ValidationFailed
from appliance.schemas import JobOut, ListQuery

INVITATION_HEADER = "X-Invitation-Code"


class AttestationQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    nonce: str = Field(pattern=r"^(?:[0-9a-fA-F]{2}){16,64}$",
                       description="fresh random verifier nonce, 16-64 bytes as hex")


class Measurement(BaseModel):
    mrenclave: str
    mrsigner: str
    isv_prod_id: int
    isv_svn: int
    debug: bool
    simulated: bool


class AttestationOut(BaseModel):
    """A quote over the nonce; verify it against your pinned platform key and allow-list."""

    quote: str = Field(description="base64 of the quote bytes")
    platform_public_key: str = Field(description="hex, 32 bytes; pin it out of band")
    measurement: Measurement
    enclave_public_key: str


class RetryQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    resume: bool = True


def _store() -> Any:
    return get_store()


def _multipart(what: str) -> None:
    if request.mimetype != "multipart/form-data":
        raise UnsupportedMediaType(f"{what} is multipart/form-data, got "
                                   f"{request.mimetype or 'nothing'}")


def _file_part(name: str, limit: int) -> bytes:
    upload = request.files.get(name)
    if upload is None:
        raise ValidationFailed(f"missing the {name!r} file part")
    limit = min(limit, current_app.config["APPLIANCE_SETTINGS"].max_upload_bytes)
    data = read_bounded(upload.stream, limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge(f"{name!r} is limited to {limit} bytes")
    if not data:
        raise ValidationFailed(f"the {name!r} file part is empty")
    return data


def register(app: Flask, api: Api, limiter: Limiter) -> None:
    """Add the attestation and refinement routes to ``app`` and document them in ``api``."""
    v1 = Blueprint("refinement", __name__, url_prefix="/v1")
    settings = app.config["APPLIANCE_SETTINGS"]

    @api.op(v1, "/enclave/attestation",
            summary="A quote of the appliance's (simulated) enclave over your nonce",
            tag="refinement", query=AttestationQuery, response=AttestationOut, auth=False,
            errors=(503,))
    def enclave_attestation(query: AttestationQuery) -> dict[str, Any]:
        return enclave_service(settings).attestation(bytes.fromhex(query.nonce)).to_json()

    @api.op(v1, "/refinements", "POST",
            summary="Model owner: start a confidential refinement (terms + wrapped model)",
            tag="refinement", form=RefinementCreateForm, response=RefinementCreated, status=201)
    def create() -> dict[str, Any]:
        _multipart("a refinement")
        g.principal.require("admin", "auditor", "client")
        fields = {k: v for k, v in request.form.items()}
        name = fields.pop("name", None) or None
        if name is not None and len(name) > 128:
            raise ValidationFailed("'name' is at most 128 characters")
        try:
            terms = RefinementTerms.model_validate(fields)
        except ValidationError as exc:
            raise validation_problem(exc, "refinement terms") from None
        model = _file_part("model", MAX_MODEL_BYTES)
        row, code = create_refinement(_store(), g.principal, terms=terms, model_blob=model,
                                      name=name)
        return {"refinement": refinement_view(_store(), row, "model_owner"),
                "invitation": code}

    @api.op(v1, "/refinements", summary="Refinements where the caller's tenant is a party",
            tag="refinement", query=ListQuery, response=RefinementList)
    def list_all(query: ListQuery) -> dict[str, Any]:
        return {"items": list_refinements(_store(), g.principal, limit=query.limit,
                                          offset=query.offset)}

    @api.op(v1, "/refinements/<refinement_id>",
            summary="A refinement: state, job progress, checkpoint, signed report (either party; "
            "before redeeming, the data owner sends the X-Invitation-Code header)",
            tag="refinement", response=RefinementOut)
    def get_one(refinement_id: str) -> dict[str, Any]:
        store = _store()
        row, role = find_refinement(store, g.principal, refinement_id,
                                    invitation=request.headers.get(INVITATION_HEADER))
        return refinement_view(store, row, role)

    @api.op(v1, "/refinements/<refinement_id>/data", "POST",
            summary="Data owner: redeem the invitation with encrypted data; starts the job",
            tag="refinement", form=RefinementProvisionForm, response=RefinementOut, status=202,
            errors=(409,))
    def provision(refinement_id: str) -> dict[str, Any]:
        _multipart("the data owner's part")
        g.principal.require("admin", "auditor", "client")
        invitation = request.form.get("invitation", "")
        if not 8 <= len(invitation) <= 128:
            raise ValidationFailed("'invitation' (the one-time code) is required")
        limit = settings.max_upload_bytes
        store = _store()
        row = provision_refinement(
            store, g.principal, refinement_id, invitation=invitation,
            train=_file_part("train", limit), validation=_file_part("validation", limit),
            public_context=_file_part("public_context", MAX_CONTEXT_BYTES),
            ckks_secret=_file_part("ckks_secret", MAX_SECRET_BYTES), enqueue=get_enqueue())
        return refinement_view(store, row, "data_owner")

    @api.op(v1, "/refinements/<refinement_id>/retry", "POST",
            summary="Model owner: run a failed refinement again (resumes from its checkpoint)",
            tag="refinement", query=RetryQuery, response=JobOut, status=202, errors=(409,))
    def retry(refinement_id: str, query: RetryQuery) -> dict[str, Any]:
        job = retry_refinement(_store(), g.principal, refinement_id, resume=query.resume,
                               enqueue=get_enqueue())
        return job_view(job)

    @api.op(v1, "/refinements/<refinement_id>/result",
            summary="Model owner: the refined model (encrypted to you) and its signed manifest",
            tag="refinement", response=RefinementResultOut, errors=(409,))
    def result(refinement_id: str) -> dict[str, Any]:
        return refinement_result(_store(), g.principal, refinement_id)

    app.register_blueprint(v1)
