"""Confidential refinement in the service: the refinement objects, their parties and views.

Shapes are in :mod:`~appliance.capabilities.refinement.schemas`, HTTP routes in
:mod:`~appliance.capabilities.refinement.routes`, the ``refinement`` job kind in
:mod:`~appliance.capabilities.refinement.job`.

Life of a refinement::

    model owner:  POST /v1/refinements (terms + model wrapped to the attested enclave)
                  -> refinement id + one-time invitation code (stored hashed)
    data owner:   POST /v1/refinements/{id}/data (invitation, encrypted train/validation sets,
                  public CKKS context, CKKS secret wrapped to the enclave) -> job "refinement"
    job:          host HE + enclave steps (appliance.confidential.run_refinement); progress per
                  step; a sealed checkpoint blob after every epoch; a signed report owned by the
                  model owner's tenant; the refined model, encrypted to the model owner, a blob
    model owner:  GET /v1/refinements/{id}/result -> encrypted model + signed manifest

The server only ever holds ciphertext, wrapped or sealed blobs and a public CKKS context
(checked to carry no secret key). Every blob is content-addressed in the store. Either party
reads the refinement (state, job progress, report bundle); only the model owner gets the result.
If the enclave dies mid-job the job fails with the reason; ``POST .../retry`` starts a new job
that resumes from the last sealed checkpoint (or starts over cleanly if the enclave build
changed and the checkpoint no longer unseals).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
from typing import Any

from appliance._internal.auth import Principal
from appliance._internal.jobs.service import Enqueue, job_view, submit_job
from appliance._internal.store import Store, dumps, loads, new_id, utcnow
from appliance.capabilities.refinement.schemas import (
    MAX_CONTEXT_BYTES,
    MAX_DATASET_BYTES,
    SLOTS,
    RefinementTerms,
)
from appliance.errors import Conflict, NotFound, UnprocessableInput, ValidationFailed
from crypto.provisioning import wrapped_label

log = logging.getLogger("appliance.refinement")

VERSION = "1.0.0"
METHOD = "confidential-refinement"
JOB_KIND = "refinement"
ROLES = ("admin", "auditor", "client")
INVITATION_PREFIX = "inv_"


def hash_invitation(code: str) -> str:
    """The stored form of an invitation code."""
    return hashlib.sha256(("refinement-invitation|" + code).encode("utf-8")).hexdigest()


def _require_wrapped(blob: bytes, label: str, what: str) -> None:
    got = wrapped_label(blob)
    if got != label:
        raise UnprocessableInput(
            f"{what} must be wrapped to the enclave with label {label!r}"
            + (f" (got label {got!r})" if got else " (not a wrapped blob)"),
            hint="Use the SDK: it verifies the enclave's quote and wraps to its key.")


def _dataset_header(blob: bytes, what: str) -> dict[str, Any]:
    """Validate an encrypted dataset blob's framing; returns its header (sizes only)."""
    from appliance.confidential import ConfidentialError, EncryptedDataset

    try:
        parsed = EncryptedDataset.from_bytes(blob, max_bytes=MAX_DATASET_BYTES)
    except (ConfidentialError, ValueError) as exc:
        raise UnprocessableInput(f"{what} is not an encrypted dataset: "
                                 f"{getattr(exc, 'message', exc)}") from None
    label = "train-labels" if what == "train" else "val-labels"
    _require_wrapped(parsed.labels_blob, label, f"the labels of {what}")
    return {"dim": parsed.dim, "batch_sizes": parsed.batch_sizes, "n": parsed.num_samples}


def _tenant_name(store: Store, tenant_id: str) -> str:
    row = store.conn.execute("SELECT name FROM tenants WHERE id=?", (tenant_id,)).fetchone()
    return str(row["name"]) if row else "?"


def latest_job(store: Store, refinement_id: str) -> dict[str, Any] | None:
    """The most recent job of a refinement (jobs carry ``refinement_id`` in their params)."""
    row = store.conn.execute(
        "SELECT * FROM jobs WHERE kind = 'refinement' "
        "AND json_extract(params, '$.refinement_id') = ? "
        "ORDER BY created_at DESC, rowid DESC LIMIT 1",
        (refinement_id,),
    ).fetchone()
    return dict(row) if row else None


def _get_row(store: Store, refinement_id: str) -> dict[str, Any] | None:
    row = store.conn.execute("SELECT * FROM refinements WHERE id=?", (refinement_id,)).fetchone()
    return dict(row) if row else None


def _invitation_matches(row: dict[str, Any], code: str | None) -> bool:
    if not code or row["invitation_used_at"] is not None or len(code) > 128:
        return False
    return hmac.compare_digest(row["invitation_hash"], hash_invitation(code))


def find_refinement(store: Store, principal: Principal, refinement_id: str, *,
                    invitation: str | None = None) -> tuple[dict[str, Any], str]:
    """The refinement and the caller's role in it; 404 for anyone else (no existence oracle).

    The model owner's tenant and, once it redeemed the invitation, the data owner's tenant are
    parties; before that, only a caller presenting the unused invitation code sees its terms.
    """
    row = _get_row(store, refinement_id) if len(refinement_id) <= 64 else None
    if row is not None:
        if row["tenant_id"] == principal.tenant_id:
            return row, "model_owner"
        if row["data_tenant_id"] is not None and row["data_tenant_id"] == principal.tenant_id:
            return row, "data_owner"
        if _invitation_matches(row, invitation):
            return row, "invitee"
    shown = refinement_id if len(refinement_id) <= 80 else refinement_id[:80] + "…"
    raise NotFound(f"refinement {shown!r} not found")


# -- the model owner's part ----------------------------------------------------------------------
def create_refinement(store: Store, principal: Principal, *, terms: RefinementTerms,
                      model_blob: bytes, name: str | None) -> tuple[dict[str, Any], str]:
    """Store the wrapped model and the terms; returns the row and the one-time invitation."""
    principal.require(*ROLES)
    from enclave.he import RowLayout

    capacity = RowLayout.for_dim(terms.input_dim, slots=SLOTS).capacity
    if terms.batch_size > capacity:
        raise ValidationFailed(
            f"batch_size {terms.batch_size} exceeds the {capacity} samples of "
            f"{terms.input_dim} features that fit one ciphertext")
    _require_wrapped(model_blob, "model", "the model")
    digest, size = store.blobs.put_bytes(model_blob)
    code = INVITATION_PREFIX + secrets.token_urlsafe(24)
    refinement_id = new_id("rfn")
    with store.transaction():
        store.record_blob(digest, size)
        store.conn.execute(
            "INSERT INTO refinements (id, tenant_id, name, kind, terms, model_digest, "
            "invitation_hash, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (refinement_id, principal.tenant_id, name, terms.kind,
             dumps(terms.model_dump(mode="json")), digest, hash_invitation(code), utcnow()),
        )
    log.info("refinement %s created by tenant %s", refinement_id, principal.tenant_name)
    row = _get_row(store, refinement_id)
    assert row is not None
    return row, code


# -- the data owner's part -----------------------------------------------------------------------
def provision_refinement(
    store: Store,
    principal: Principal,
    refinement_id: str,
    *,
    invitation: str,
    train: bytes,
    validation: bytes,
    public_context: bytes,
    ckks_secret: bytes,
    enqueue: Enqueue,
) -> dict[str, Any]:
    """Redeem the invitation with the encrypted data; starts the refinement job."""
    principal.require(*ROLES)
    row = _get_row(store, refinement_id) if len(refinement_id) <= 64 else None
    if row is None or not invitation or not hmac.compare_digest(
            row["invitation_hash"], hash_invitation(invitation)):
        raise NotFound(f"no refinement {refinement_id[:80]!r} with this invitation code")
    if row["invitation_used_at"] is not None:
        raise Conflict("this invitation was already redeemed; the data is in")
    terms = RefinementTerms.model_validate(loads(row["terms"]))
    train_head = _dataset_header(train, "train")
    val_head = _dataset_header(validation, "validation")
    for what, head in (("train", train_head), ("validation", val_head)):
        if head["dim"] != terms.input_dim:
            raise UnprocessableInput(
                f"{what} has {head['dim']} features; the terms say {terms.input_dim}")
        sizes = head["batch_sizes"]
        if any(b != terms.batch_size for b in sizes[:-1]) or sizes[-1] > terms.batch_size:
            raise UnprocessableInput(
                f"{what} must be encrypted in batches of {terms.batch_size} samples "
                "(the last may be smaller)")
    _require_wrapped(ckks_secret, "ckks-secret", "the CKKS secret")
    from appliance.confidential import CKKS_PRESET
    from crypto.ckks import load_public_context
    from crypto.errors import CryptoError

    try:  # refuses a context that carries a secret key: the host never holds one
        load_public_context(public_context, preset=CKKS_PRESET, max_bytes=MAX_CONTEXT_BYTES)
    except CryptoError as exc:
        raise UnprocessableInput(f"public CKKS context refused: {exc}") from None
    digests = {}
    for key, blob in (("train", train), ("val", validation), ("context", public_context),
                      ("secret", ckks_secret)):
        digests[key] = store.blobs.put_bytes(blob)
    meta = {"num_train": train_head["n"], "num_validation": val_head["n"],
            "train_batches": len(train_head["batch_sizes"])}
    with store.transaction():
        for digest, size in digests.values():
            store.record_blob(digest, size)
        cur = store.conn.execute(
            "UPDATE refinements SET invitation_used_at=?, data_tenant_id=?, train_digest=?, "
            "val_digest=?, context_digest=?, secret_digest=?, data_meta=?, provisioned_at=? "
            "WHERE id=? AND invitation_used_at IS NULL",
            (utcnow(), principal.tenant_id, digests["train"][0], digests["val"][0],
             digests["context"][0], digests["secret"][0], dumps(meta), utcnow(), row["id"]),
        )
    if cur.rowcount != 1:
        raise Conflict("this invitation was already redeemed; the data is in")
    log.info("refinement %s provisioned by tenant %s", row["id"], principal.tenant_name)
    owner = Principal(tenant_id=row["tenant_id"], tenant_name=_tenant_name(store, row["tenant_id"]),
                      role="client", token_id="invitation")
    submit_job(store, owner, JOB_KIND, {"refinement_id": row["id"]}, enqueue)
    fresh = _get_row(store, row["id"])
    assert fresh is not None
    return fresh


def retry_refinement(store: Store, principal: Principal, refinement_id: str, *,
                     resume: bool, enqueue: Enqueue) -> dict[str, Any]:
    """Model owner: run a provisioned refinement again (resuming from the sealed checkpoint)."""
    store.get_owned("refinements", principal.tenant_id, refinement_id, "refinement")
    return submit_job(store, principal, JOB_KIND,
                      {"refinement_id": refinement_id, "resume": resume}, enqueue)


# -- views ---------------------------------------------------------------------------------------
def refinement_view(store: Store, row: dict[str, Any], role: str) -> dict[str, Any]:
    """The public shape of a refinement for ``role``; never blob contents."""
    view: dict[str, Any] = {
        "id": row["id"], "name": row["name"], "role": role,
        "terms": loads(row["terms"]), "model_sha256": row["model_digest"],
        "created_at": row["created_at"], "data": None, "job": None, "checkpoint": None,
        "report": None,
    }
    if row["provisioned_at"] is None:
        view["state"] = "awaiting_data"
        return view
    meta = loads(row["data_meta"]) or {}
    job = latest_job(store, row["id"])
    view["state"] = job["state"] if job else "provisioned"
    if role == "invitee":
        return view
    view["data"] = {
        "train_sha256": row["train_digest"], "validation_sha256": row["val_digest"],
        "public_context_sha256": row["context_digest"],
        "ckks_secret_sha256": row["secret_digest"], "provisioned_at": row["provisioned_at"],
        **meta,
    }
    if row["checkpoint_digest"]:
        view["checkpoint"] = {"sha256": row["checkpoint_digest"],
                              **(loads(row["checkpoint_meta"]) or {})}
    if job is not None:
        view["job"] = job_view(job)
        if job["state"] == "succeeded" and job["report_id"]:
            view["report"] = _report_bundle(store, job["report_id"])
    return view


def _report_bundle(store: Store, report_id: str) -> dict[str, Any] | None:
    from appliance._internal.identity import identity_for
    from appliance._internal.reports import report_body, report_bundle

    rep = store.conn.execute("SELECT * FROM reports WHERE id=?", (report_id,)).fetchone()
    if rep is None:
        return None
    bundle = report_bundle(identity_for(store.settings), dict(rep))
    bundle["report"] = report_body(dict(rep))
    return dict(bundle)


def list_refinements(store: Store, principal: Principal, *, limit: int,
                     offset: int) -> list[dict[str, Any]]:
    rows = store.conn.execute(
        "SELECT * FROM refinements WHERE tenant_id=? OR data_tenant_id=? "
        "ORDER BY created_at DESC, id LIMIT ? OFFSET ?",
        (principal.tenant_id, principal.tenant_id, limit, offset),
    ).fetchall()
    out = []
    for r in rows:
        row = dict(r)
        role = "model_owner" if row["tenant_id"] == principal.tenant_id else "data_owner"
        out.append(refinement_view(store, row, role))
    return out


def refinement_result(store: Store, principal: Principal, refinement_id: str) -> dict[str, Any]:
    """Model owner only: the encrypted refined model and the signed manifest of its blob."""
    from appliance._internal.identity import identity_for
    from appliance._internal.reports import report_body
    from crypto.dsse import canonical_json, sign_envelope
    from models.manifest import PAYLOAD_TYPE, PREDICATE_TYPE, STATEMENT_TYPE

    row = store.get_owned("refinements", principal.tenant_id, refinement_id, "refinement")
    job = latest_job(store, refinement_id)
    if job is None or job["state"] != "succeeded" or not job["report_id"]:
        state = job["state"] if job else ("awaiting_data" if row["provisioned_at"] is None
                                          else "provisioned")
        raise Conflict(f"refinement {refinement_id} has no result yet (state {state})")
    rep = store.conn.execute("SELECT * FROM reports WHERE id=?", (job["report_id"],)).fetchone()
    body = report_body(dict(rep))
    digest = str(body["extra"]["artifacts"]["refined_model"])
    path = store.blobs.path(digest)
    if not path.is_file():
        raise NotFound("the refined model blob is missing from the store")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != digest:
        raise Conflict("the refined model blob failed its digest check")
    identity = identity_for(store.settings)
    envelope = loads(row["result_manifest"])
    statement = None
    if envelope is not None:
        statement = json.loads(base64.b64decode(envelope["payload"]))
        if statement["predicate"]["resources"][0]["digest"] != digest:
            envelope = None
    if envelope is None:
        name = f"refined-{refinement_id}.enc"
        statement = {
            "_type": STATEMENT_TYPE,
            "subject": [{"name": name, "digest": {
                "sha256": hashlib.sha256(bytes.fromhex(digest)).hexdigest()}}],
            "predicateType": PREDICATE_TYPE,
            "predicate": {
                "serialization": {"method": "files", "hash_type": "sha256",
                                  "allow_symlinks": False, "ignore_paths": []},
                "resources": [{"name": name, "algorithm": "sha256", "digest": digest}],
            },
        }
        envelope = sign_envelope(canonical_json(statement), PAYLOAD_TYPE, identity.signing_key)
        store.conn.execute("UPDATE refinements SET result_manifest=? WHERE id=?",
                           (dumps(envelope), refinement_id))
    return {
        "refinement_id": refinement_id, "job_id": job["id"], "report_id": job["report_id"],
        "sha256": digest, "size": len(data), "model": base64.b64encode(data).decode("ascii"),
        "manifest": {"envelope": envelope, "public_key": identity.public_key_pem},
    }
