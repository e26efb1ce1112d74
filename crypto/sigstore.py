"""Sigstore bundles (v0.3, DSSE) as OpenSSF model-signing writes and reads them, offline.

``model_signing sign key`` writes a bundle whose DSSE envelope carries the in-toto statement
of a model's files, signed with ECDSA (P-256 with SHA-256, P-384 with SHA-384) over the DSSE
pre-authentication encoding; the verification material is either a key hint (sha256 of the
public key's PEM) or an X.509 certificate chain. This module signs and verifies such bundles
with ``cryptography`` alone::

    key = load_or_create_ec_p256(home / "keys" / "model-signing-p256.pem")
    bundle = sign_bundle(statement_bytes, key)            # model_signing verify key accepts it
    verified = verify_bundle(bundle, trusted_keys=[key.public_key()])
    verified.statement["subject"], verified.signer.fingerprint

Transparency-log entries and signed timestamps are not checked (this is the offline path):
a key is trusted because it is pinned, a certificate because it chains to a pinned root.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from crypto.dsse import b64decode_strict, pae, parse_json_strict
from crypto.errors import KeyFormatError, SignatureError
from crypto.keys import parse_public_key_pem
from crypto.secret_files import write_secret_once

__all__ = [
    "BUNDLE_MEDIA_TYPE",
    "IN_TOTO_PAYLOAD_TYPE",
    "BundleSigner",
    "VerifiedBundle",
    "ec_key_fingerprint",
    "ec_public_key_pem",
    "load_ca_bundle",
    "load_ec_public_key_pem",
    "load_or_create_ec_p256",
    "parse_bundle_bytes",
    "dumps_bundle",
    "sign_bundle",
    "verify_bundle",
]

BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
IN_TOTO_STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
_CURVE_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "secp256r1": hashes.SHA256,
    "secp384r1": hashes.SHA384,
}
_MAX_KEY_BYTES = 64 * 1024
_MAX_CHAIN = 8
_MAX_SIGNATURES = 16


@dataclass(frozen=True, kw_only=True)
class BundleSigner:
    """Who signed a verified bundle: a pinned key, or a certificate chaining to a pinned root.

    ``fingerprint`` is model-signing's key hint (sha256 hex of the public key's PEM); for a
    certificate, ``subject``, ``issuer`` and ``certificate_sha256`` name the leaf."""

    kind: Literal["key", "certificate"]
    fingerprint: str
    curve: str
    subject: str | None = None
    issuer: str | None = None
    certificate_sha256: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The signer as JSON (what a model row and a report record)."""
        record: dict[str, Any] = {"kind": self.kind, "fingerprint": self.fingerprint,
                                  "curve": self.curve}
        if self.kind == "certificate":
            record.update(subject=self.subject, issuer=self.issuer,
                          certificate_sha256=self.certificate_sha256)
        return record


@dataclass(frozen=True, kw_only=True)
class VerifiedBundle:
    """A bundle whose signature verified: its payload bytes, the statement, and the signer."""

    payload: bytes
    statement: dict[str, Any]
    signer: BundleSigner


def _check_curve(key: ec.EllipticCurvePublicKey) -> None:
    if key.curve.name not in _CURVE_HASHES:
        raise KeyFormatError(
            f"ECDSA key on curve {key.curve.name} is not supported; use P-256 or P-384")


def load_ec_public_key_pem(data: str | bytes) -> ec.EllipticCurvePublicKey:
    """Parse a PEM SubjectPublicKeyInfo ECDSA P-256 or P-384 public key.

    Raises:
        KeyFormatError: not PEM, not a public key, or not ECDSA on P-256/P-384.
    """
    key = parse_public_key_pem(data)
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise KeyFormatError(
            f"public key is {type(key).__name__}, not ECDSA (model-signing keys are P-256 "
            "or P-384)")
    _check_curve(key)
    return key


def ec_public_key_pem(key: ec.EllipticCurvePublicKey) -> str:
    """Return ``key`` as a SubjectPublicKeyInfo PEM string."""
    return key.public_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PublicFormat.SubjectPublicKeyInfo,
    ).decode("ascii")


def ec_key_fingerprint(key: ec.EllipticCurvePublicKey) -> str:
    """Return model-signing's key hint: sha256 hex of the key's SubjectPublicKeyInfo PEM."""
    return hashlib.sha256(ec_public_key_pem(key).encode("ascii")).hexdigest()


def load_or_create_ec_p256(path: Path) -> ec.EllipticCurvePrivateKey:
    """Load the ECDSA P-256 private key at ``path``, creating it (mode 0600) if missing.

    Raises:
        KeyFormatError: the file exists but is not an unencrypted PEM P-256 private key.
    """
    path = Path(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.exists():
        pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            encoding=serialization.Encoding.PEM,
            format=serialization.PrivateFormat.PKCS8,
            encryption_algorithm=serialization.NoEncryption(),
        )
        write_secret_once(path, pem)
    data = path.read_bytes()[: _MAX_KEY_BYTES + 1]
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyFormatError(
            f"key file {path} is not an unencrypted PEM private key ({type(exc).__name__})"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise KeyFormatError(f"key file {path} does not hold an ECDSA P-256 private key")
    return key


def load_ca_bundle(data: bytes) -> list[x509.Certificate]:
    """Parse a PEM file of one or more CA certificates (the operator's trusted roots).

    Raises:
        KeyFormatError: no certificate could be read.
    """
    try:
        roots = x509.load_pem_x509_certificates(bytes(data))
    except ValueError as exc:
        raise KeyFormatError(f"CA bundle is not PEM certificates ({exc})") from None
    if not roots:
        raise KeyFormatError("CA bundle holds no certificate")
    return roots


def sign_bundle(payload: bytes, key: ec.EllipticCurvePrivateKey) -> dict[str, Any]:
    """Sign an in-toto statement as a Sigstore bundle v0.3 with a key hint, the shape that
    ``model_signing verify key --public_key`` reads."""
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TypeError(f"key must be an EllipticCurvePrivateKey, got {type(key).__name__}")
    public = key.public_key()
    _check_curve(public)
    algorithm = _CURVE_HASHES[public.curve.name]()
    signature = key.sign(pae(IN_TOTO_PAYLOAD_TYPE, bytes(payload)), ec.ECDSA(algorithm))
    return {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {
            "publicKey": {"hint": ec_key_fingerprint(public)},
            "tlogEntries": [],
        },
        "dsseEnvelope": {
            "payload": base64.b64encode(bytes(payload)).decode("ascii"),
            "payloadType": IN_TOTO_PAYLOAD_TYPE,
            "signatures": [{"sig": base64.b64encode(signature).decode("ascii"), "keyid": ""}],
        },
    }


def _wrong_kind(message: str) -> SignatureError:
    return SignatureError(
        message,
        hint="Pass the model.sig that `model_signing sign key` (or `sign certificate`) wrote "
        "for this model: a Sigstore bundle v0.3 with a DSSE envelope.")


def _envelope(bundle: Any) -> tuple[str, bytes, list[bytes], dict[str, Any]]:
    if not isinstance(bundle, dict):
        raise _wrong_kind("not a Sigstore bundle: expected a JSON object")
    media_type = bundle.get("mediaType")
    if media_type != BUNDLE_MEDIA_TYPE:
        if "payloadType" in bundle or "envelope" in bundle:
            raise _wrong_kind(
                "this is an appliance manifest envelope, not a Sigstore bundle; verify it as "
                "a manifest")
        raise _wrong_kind(
            f"not a Sigstore bundle v0.3: mediaType is {media_type!r}, expected "
            f"{BUNDLE_MEDIA_TYPE!r}")
    envelope = bundle.get("dsseEnvelope")
    if envelope is None:
        if "messageSignature" in bundle:
            raise _wrong_kind(
                "the bundle signs a blob (messageSignature), not a model manifest (dsseEnvelope)")
        raise _wrong_kind("the bundle has no dsseEnvelope")
    if not isinstance(envelope, dict):
        raise _wrong_kind("dsseEnvelope must be an object")
    payload_type = envelope.get("payloadType")
    if payload_type != IN_TOTO_PAYLOAD_TYPE:
        raise _wrong_kind(
            f"the envelope carries {payload_type!r}, not an in-toto statement "
            f"({IN_TOTO_PAYLOAD_TYPE!r})")
    payload = b64decode_strict(envelope.get("payload"), what="payload")
    entries = envelope.get("signatures")
    if not isinstance(entries, list) or not entries or len(entries) > _MAX_SIGNATURES:
        raise SignatureError(
            f"malformed bundle: dsseEnvelope.signatures must list 1-{_MAX_SIGNATURES} signatures")
    signatures = []
    for position, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise SignatureError(f"malformed bundle: signature {position} is not an object")
        signatures.append(b64decode_strict(entry.get("sig"), what=f"signature {position}"))
    material = bundle.get("verificationMaterial")
    if not isinstance(material, dict):
        raise SignatureError("malformed bundle: verificationMaterial must be an object")
    return payload_type, payload, signatures, material


def _verifies(key: ec.EllipticCurvePublicKey, signatures: list[bytes], message: bytes) -> bool:
    algorithm = _CURVE_HASHES[key.curve.name]()
    for signature in signatures:
        try:
            key.verify(signature, message, ec.ECDSA(algorithm))
        except InvalidSignature:
            continue
        return True
    return False


def _certificates(material: dict[str, Any]) -> list[x509.Certificate]:
    if isinstance(material.get("x509CertificateChain"), dict):
        raw = material["x509CertificateChain"].get("certificates")
    elif isinstance(material.get("certificate"), dict):
        raw = [material["certificate"]]
    else:
        raise SignatureError(
            "malformed bundle: verificationMaterial names neither a public key hint nor a "
            "certificate")
    if not isinstance(raw, list) or not raw or len(raw) > _MAX_CHAIN:
        raise SignatureError(f"malformed bundle: the certificate chain must hold 1-{_MAX_CHAIN}")
    chain = []
    for position, entry in enumerate(raw):
        der = b64decode_strict(entry.get("rawBytes") if isinstance(entry, dict) else None,
                               what=f"certificate {position}")
        try:
            chain.append(x509.load_der_x509_certificate(der))
        except ValueError:
            raise SignatureError(f"malformed bundle: certificate {position} is not DER X.509") \
                from None
    return chain


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _valid_at(cert: x509.Certificate, moment: datetime) -> bool:
    return cert.not_valid_before_utc <= moment <= cert.not_valid_after_utc


def _chain_to_root(chain: list[x509.Certificate], roots: Sequence[x509.Certificate]) -> None:
    """Walk from the leaf through the bundle's intermediates to a pinned root.

    Without a transparency-log timestamp the signing time is unknown; as model-signing does,
    every certificate must be valid when the leaf was issued."""
    leaf = chain[0]
    moment = leaf.not_valid_before_utc
    current = leaf
    intermediates = list(chain[1:])
    for _ in range(_MAX_CHAIN + 1):
        if not _valid_at(current, moment):
            raise SignatureError(
                f"certificate {current.subject.rfc4514_string()!r} was not valid when the "
                "signing certificate was issued")
        for root in roots:
            if _issued_by(current, root):
                if not _valid_at(root, moment):
                    raise SignatureError(
                        f"trusted root {root.subject.rfc4514_string()!r} was not valid when "
                        "the signing certificate was issued")
                return
        parent = next((c for c in intermediates if _issued_by(current, c)), None)
        if parent is None:
            raise SignatureError(
                f"the signing certificate does not chain to a trusted root: no pinned CA "
                f"issued {current.subject.rfc4514_string()!r} "
                f"(issuer {current.issuer.rfc4514_string()!r})",
                hint="Add the signer's CA to the operator's CA bundle "
                "(APPLIANCE_SIGNING_CA_BUNDLE), or register the signer's public key instead.")
        if not _is_ca(parent):
            raise SignatureError(
                f"{parent.subject.rfc4514_string()!r} issued a certificate but is not a CA")
        intermediates.remove(parent)
        current = parent
    raise SignatureError("the certificate chain is too long")


def _check_leaf_usage(leaf: x509.Certificate) -> None:
    try:
        if leaf.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature:
            return
    except x509.ExtensionNotFound:
        pass
    try:
        usage = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        if ExtendedKeyUsageOID.CODE_SIGNING in usage:
            return
    except x509.ExtensionNotFound:
        pass
    raise SignatureError(
        "the signing certificate may not sign: it has neither the digitalSignature key usage "
        "nor the codeSigning extended key usage")


def _statement(payload: bytes) -> dict[str, Any]:
    try:
        statement = parse_json_strict(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SignatureError(f"the signed payload is not JSON ({exc})") from None
    if not isinstance(statement, dict) or statement.get("_type") != IN_TOTO_STATEMENT_TYPE:
        raise _wrong_kind(f"the signed payload is not an in-toto statement "
                          f"({IN_TOTO_STATEMENT_TYPE})")
    return statement


def verify_bundle(
    bundle: Any,
    *,
    trusted_keys: Sequence[ec.EllipticCurvePublicKey] = (),
    trusted_roots: Sequence[x509.Certificate] = (),
) -> VerifiedBundle:
    """Verify a model-signing Sigstore bundle against pinned keys or pinned CA roots.

    A key-hint bundle is accepted when a trusted key with that fingerprint verifies the DSSE
    signature; a certificate bundle when its leaf chains to a trusted root, may sign, and its
    key verifies. The statement's file digests are *not* compared with any files here
    (``models.manifest.verify_manifest`` does that).

    Raises:
        SignatureError: a bundle of the wrong kind, malformed, from an unknown signer, or a
            signature that does not verify; the message says which.
    """
    _, payload, signatures, material = _envelope(bundle)
    message = pae(IN_TOTO_PAYLOAD_TYPE, payload)
    public_key = material.get("publicKey")
    if public_key is not None:
        if not isinstance(public_key, dict):
            raise SignatureError("malformed bundle: publicKey must be an object")
        hint = public_key.get("hint")
        if hint is not None and not isinstance(hint, str):
            raise SignatureError("malformed bundle: publicKey hint must be a string")
        # bundles of model-signing before 1.0 carry no hint: every pinned key is a candidate
        candidates = [k for k in trusted_keys if not hint or ec_key_fingerprint(k) == hint]
        if not candidates:
            raise SignatureError(
                f"unknown signer: the bundle is signed by the key with fingerprint {hint}, "
                "which is not a registered signer key" if hint else
                "unknown signer: no signer key is registered",
                hint="Register the signer's public key (appliance signatures add-signer), or "
                "check that the model was signed with the key you registered.")
        key = next((k for k in candidates if _verifies(k, signatures, message)), None)
        if key is None:
            raise SignatureError(
                "bad signature: the bundle's signature does not verify with the registered key "
                f"{hint}" if hint else "bad signature: no registered key verifies the bundle",
                hint="The manifest inside model.sig was altered after signing, or it was "
                "signed by a key that is not registered.")
        signer = BundleSigner(kind="key", fingerprint=ec_key_fingerprint(key),
                              curve=key.curve.name)
        return VerifiedBundle(payload=payload, statement=_statement(payload), signer=signer)

    chain = _certificates(material)
    if not trusted_roots:
        raise SignatureError(
            "the bundle is certificate-based but no CA bundle is configured",
            hint="The operator sets APPLIANCE_SIGNING_CA_BUNDLE to a PEM file of trusted roots.")
    leaf = chain[0]
    leaf_key = leaf.public_key()
    if not isinstance(leaf_key, ec.EllipticCurvePublicKey) or \
            leaf_key.curve.name not in _CURVE_HASHES:
        raise SignatureError("the signing certificate's key is not ECDSA P-256 or P-384")
    _chain_to_root(chain, trusted_roots)
    _check_leaf_usage(leaf)
    if not _verifies(leaf_key, signatures, message):
        raise SignatureError(
            "bad signature: the bundle's signature does not verify with its certificate's key",
            hint="The manifest inside model.sig was altered after signing.")
    signer = BundleSigner(
        kind="certificate", fingerprint=ec_key_fingerprint(leaf_key), curve=leaf_key.curve.name,
        subject=leaf.subject.rfc4514_string(), issuer=leaf.issuer.rfc4514_string(),
        certificate_sha256=leaf.fingerprint(hashes.SHA256()).hex())
    return VerifiedBundle(payload=payload, statement=_statement(payload), signer=signer)


def parse_bundle_bytes(data: bytes) -> Any:
    """Parse a model.sig file's bytes as JSON (duplicate keys refused).

    Raises:
        SignatureError: the bytes are not JSON.
    """
    try:
        return parse_json_strict(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _wrong_kind(f"model.sig is not JSON ({exc})") from None


def dumps_bundle(bundle: dict[str, Any]) -> str:
    """Serialise a bundle as model-signing writes it (indented JSON)."""
    return json.dumps(bundle, indent=2)
