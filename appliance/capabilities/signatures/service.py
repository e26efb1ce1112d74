"""Signer keys, verification of uploaded model.sig bundles, and the appliance's own model
signatures (no Flask: the API, the CLI and notebooks call the same functions)."""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from appliance._internal.auth import Principal
from appliance._internal.config import Settings
from appliance._internal.store import Store, loads, new_id, utcnow
from appliance.capabilities.signatures.schemas import SignerKeyCreate
from appliance.errors import Conflict, NotFound, UnprocessableInput, ValidationFailed
from crypto.dsse import b64decode_strict, canonical_json
from crypto.errors import CryptoError, KeyFormatError
from crypto.sigstore import (
    ec_key_fingerprint,
    ec_public_key_pem,
    load_ca_bundle,
    load_ec_public_key_pem,
    load_or_create_ec_p256,
    parse_bundle_bytes,
    sign_bundle,
    verify_bundle,
)
from models.errors import ManifestError
from models.manifest import as_single_file_statement, verify_manifest

SIGNING_KEY_FILE = "model-signing-p256.pem"
MAX_BUNDLE_BYTES = 1024 * 1024
_MAX_SIGNERS_PER_TENANT = 1000


@lru_cache(maxsize=8)
def _signing_key(key_path: Path) -> ec.EllipticCurvePrivateKey:
    return load_or_create_ec_p256(key_path)


def signing_key(settings: Settings) -> ec.EllipticCurvePrivateKey:
    """The appliance's ECDSA P-256 model-signing key, created on first use (never logged)."""
    settings.ensure_dirs()
    return _signing_key((settings.key_dir / SIGNING_KEY_FILE).resolve())


def signing_public_key(settings: Settings) -> dict[str, str]:
    """The PEM and fingerprint of the key that signs model.sig bundles."""
    public = signing_key(settings).public_key()
    return {"public_key": ec_public_key_pem(public), "fingerprint": ec_key_fingerprint(public)}


def trusted_roots(settings: Settings) -> list[x509.Certificate]:
    """The operator's CA bundle for certificate-based model.sig (empty when none is set)."""
    if settings.signing_ca_bundle is None:
        return []
    try:
        data = Path(settings.signing_ca_bundle).read_bytes()
    except OSError as exc:
        raise KeyFormatError(f"the operator's CA bundle cannot be read ({exc.strerror})",
                             hint="set APPLIANCE_SIGNING_CA_BUNDLE to a readable PEM file") \
            from None
    return load_ca_bundle(data)


def signer_view(row: dict[str, Any]) -> dict[str, Any]:
    return {key: row[key] for key in ("id", "name", "fingerprint", "curve", "public_key",
                                      "created_at")}


def add_signer(store: Store, principal: Principal, body: SignerKeyCreate) -> dict[str, Any]:
    """Register a signer public key for this tenant; 409 if the tenant already has it."""
    principal.require("admin", "auditor")
    try:
        key = load_ec_public_key_pem(body.public_key)
    except KeyFormatError as exc:
        raise ValidationFailed(f"public_key refused: {exc.message}",
                               hint="pass the PEM public key that model_signing signs with "
                               "(openssl ec -in key.pem -pubout)") from None
    fingerprint = ec_key_fingerprint(key)
    signer_id = new_id("sgn")
    with store.transaction():
        count = store.conn.execute("SELECT COUNT(*) FROM signer_keys WHERE tenant_id = ?",
                                   (principal.tenant_id,)).fetchone()[0]
        if count >= _MAX_SIGNERS_PER_TENANT:
            raise UnprocessableInput(f"a tenant may register at most {_MAX_SIGNERS_PER_TENANT} "
                                     "signer keys")
        existing = store.conn.execute(
            "SELECT id FROM signer_keys WHERE tenant_id = ? AND fingerprint = ?",
            (principal.tenant_id, fingerprint)).fetchone()
        if existing is not None:
            raise Conflict(f"this key is already registered as signer {existing[0]}")
        store.conn.execute(
            "INSERT INTO signer_keys (id, tenant_id, name, public_key, fingerprint, curve, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (signer_id, principal.tenant_id, body.name, ec_public_key_pem(key), fingerprint,
             key.curve.name, utcnow()))
    return get_signer(store, principal, signer_id)


def get_signer(store: Store, principal: Principal, signer_id: str) -> dict[str, Any]:
    """One of this tenant's signer keys (404 for another tenant's)."""
    row = store.conn.execute("SELECT * FROM signer_keys WHERE id = ? AND tenant_id = ?",
                             (signer_id, principal.tenant_id)).fetchone()
    if row is None:
        raise NotFound(f"signer {signer_id[:80]!r} not found")
    return signer_view(dict(row))


def list_signers(store: Store, principal: Principal, *, limit: int = 100,
                 offset: int = 0) -> list[dict[str, Any]]:
    rows = store.conn.execute(
        "SELECT * FROM signer_keys WHERE tenant_id = ? ORDER BY created_at DESC, id "
        "LIMIT ? OFFSET ?", (principal.tenant_id, limit, offset)).fetchall()
    return [signer_view(dict(r)) for r in rows]


def remove_signer(store: Store, principal: Principal, signer_id: str) -> None:
    """Forget a signer key; models it verified keep their recorded signer."""
    principal.require("admin", "auditor")
    get_signer(store, principal, signer_id)
    with store.transaction():
        store.conn.execute("DELETE FROM signer_keys WHERE id = ? AND tenant_id = ?",
                           (signer_id, principal.tenant_id))


def verify_upload(store: Store, principal: Principal, model_path: Path,
                  bundle_bytes: bytes) -> dict[str, Any]:
    """Verify an uploaded model.sig against the tenant's signer keys (or the operator's CA
    bundle) and the model's files; return the signer record, or raise a 422 naming why."""
    if len(bundle_bytes) > MAX_BUNDLE_BYTES:
        raise UnprocessableInput(f"model.sig is larger than {MAX_BUNDLE_BYTES} bytes")
    rows = store.conn.execute(
        "SELECT id, name, public_key FROM signer_keys WHERE tenant_id = ?",
        (principal.tenant_id,)).fetchall()
    keys = {row["id"]: load_ec_public_key_pem(row["public_key"]) for row in rows}
    try:
        verified = verify_bundle(parse_bundle_bytes(bundle_bytes),
                                 trusted_keys=list(keys.values()),
                                 trusted_roots=trusted_roots(store.settings))
    except CryptoError as exc:
        raise UnprocessableInput(f"model.sig refused: {exc.message}", hint=exc.hint) from None
    try:
        verify_manifest(model_path, verified.statement)
    except ManifestError as exc:
        raise UnprocessableInput(
            f"model.sig refused: the signature is valid but {exc}",
            hint="upload exactly the files that were signed, under the names they were signed "
            "with (a single file keeps its file name)") from None
    record = verified.signer.as_dict()
    record["bundle_sha256"] = hashlib.sha256(bundle_bytes).hexdigest()
    if verified.signer.kind == "key":
        for signer_id, key in keys.items():
            if ec_key_fingerprint(key) == verified.signer.fingerprint:
                record["signer_key_id"] = signer_id
                record["signer_name"] = next(r["name"] for r in rows if r["id"] == signer_id)
    return record


def model_signature(store: Store, principal: Principal, model_id: str) -> dict[str, Any]:
    """The model's manifest signed as a Sigstore bundle by the appliance's P-256 key."""
    row = store.get_owned("models", principal.tenant_id, model_id, "model")
    envelope = loads(row["manifest"])
    if not isinstance(envelope, dict):
        raise NotFound(f"model {model_id!r} has no manifest")
    statement = json.loads(b64decode_strict(envelope.get("payload"), what="manifest payload"))
    if row["format"] != "transformers":
        statement = as_single_file_statement(statement)
    return sign_bundle(canonical_json(statement), signing_key(store.settings))
