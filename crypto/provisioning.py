"""Attestation quotes, their verification, and wrapping secrets to an attested enclave.

A verifier (model owner, data owner) fetches a quote bound to a fresh nonce, verifies it,
and only then wraps its secrets to the enclave's ephemeral X25519 key::

    nonce = os.urandom(32)
    quote = host.get_quote(nonce)                       # relayed by the untrusted host
    vq = verify_quote(quote, platform_key=pinned, allowed_measurements={mrenclave},
                      nonce=nonce, allow_simulated=True)
    blob = wrap_key_for_enclave(vq, secret, label="model")

Quote format (JSON, version 1)::

    {"version": 1, "body": {mrenclave, mrsigner, isv_prod_id, isv_svn, debug, simulated,
     report_data}, "enclave_public_key": hex, "signature": hex}

The platform key signs ``b"audit-appliance/quote/v1\\0" || canonical_json(body)``;
``report_data = sha256(enclave_public_key || nonce)``. Wrapped blobs use an ephemeral X25519
key, ``HKDF-SHA256(shared, info = "audit-appliance/wrap/v1|" label "|" quote_hash)`` and
AES-256-GCM with the blob's header as associated data.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from crypto.errors import CryptoError, KeyFormatError
from crypto.framing import FrameReader, FrameWriter
from crypto.keys import load_public_key_pem

__all__ = [
    "DebugEnclaveError",
    "MeasurementNotAllowedError",
    "ProvisioningError",
    "Quote",
    "QuoteFormatError",
    "QuoteSignatureError",
    "ReportBody",
    "ReportDataMismatchError",
    "SimulatedQuoteError",
    "UnwrapError",
    "VerifiedQuote",
    "compute_report_data",
    "provision",
    "sign_quote",
    "unwrap_in_enclave",
    "verify_quote",
    "wrap_key_for_enclave",
    "wrapped_label",
]

QUOTE_VERSION = 1
MAX_QUOTE_BYTES = 16 * 1024
_QUOTE_CONTEXT = b"audit-appliance/quote/v1\x00"
_WRAP_MAGIC = b"WRAP1\x00"
_WRAP_INFO = b"audit-appliance/wrap/v1|"
_MAX_LABEL = 64


class ProvisioningError(CryptoError):
    """Base class: a quote was refused or a secret could not be wrapped or unwrapped."""

    hint: str = (
        "Provisioning stopped before any secret left your machine. Check the pinned platform "
        "key, the allowed measurements and that the quote was fetched with your fresh nonce."
    )


class QuoteFormatError(ProvisioningError):
    """The quote bytes are not a well-formed version-1 quote."""


class QuoteSignatureError(ProvisioningError):
    """The quote is not signed by the pinned platform key (other platform or altered quote)."""

    hint: str = (
        "The quote was signed by another platform key or altered in transit. Pin the "
        "appliance's platform public key obtained out of band."
    )


class MeasurementNotAllowedError(ProvisioningError):
    """The enclave's MRENCLAVE is not in the verifier's allow-list (changed enclave code)."""

    hint: str = (
        "The enclave runs code or configuration you have not approved. Review the new "
        "enclave build and add its MRENCLAVE to your allow-list only if you trust it."
    )


class ReportDataMismatchError(ProvisioningError):
    """report_data != sha256(enclave key || your nonce): a replayed quote or substituted key."""

    hint: str = (
        "Fetch a new quote with a fresh nonce; a quote for an old nonce, or one whose enclave "
        "key was replaced, is never accepted."
    )


class DebugEnclaveError(ProvisioningError):
    """The quote comes from a DEBUG enclave, whose memory the host can read."""

    hint: str = "Never provision secrets to a debug enclave; pass allow_debug=True only in tests."


class SimulatedQuoteError(ProvisioningError):
    """The quote is marked simulated and the verifier did not allow simulated enclaves."""

    hint: str = (
        "This appliance's enclave is simulated (no hardware protection). Pass "
        "allow_simulated=True only if you accept a simulated enclave."
    )


class UnwrapError(ProvisioningError):
    """A wrapped secret cannot be opened (wrong enclave key, unknown quote, label, altered)."""


@dataclass(frozen=True, kw_only=True)
class ReportBody:
    """The enclave report the platform signs (hex digests)."""

    mrenclave: str
    mrsigner: str
    isv_prod_id: int
    isv_svn: int
    debug: bool
    simulated: bool
    report_data: str

    def to_dict(self) -> dict[str, Any]:
        """Return the body as a JSON-ready dict."""
        return {
            "mrenclave": self.mrenclave,
            "mrsigner": self.mrsigner,
            "isv_prod_id": self.isv_prod_id,
            "isv_svn": self.isv_svn,
            "debug": self.debug,
            "simulated": self.simulated,
            "report_data": self.report_data,
        }

    def canonical_bytes(self) -> bytes:
        """Canonical JSON (sorted keys, no spaces) of the body: what the platform signs."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReportBody:
        """Parse and type-check a body dict; raise QuoteFormatError on any deviation."""
        expected = {
            "mrenclave": str,
            "mrsigner": str,
            "isv_prod_id": int,
            "isv_svn": int,
            "debug": bool,
            "simulated": bool,
            "report_data": str,
        }
        if not isinstance(data, Mapping) or set(data) != set(expected):
            raise QuoteFormatError("quote body must have exactly the fields " + ", ".join(expected))
        for name, kind in expected.items():
            value = data[name]
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise QuoteFormatError(f"quote body field {name!r} must be {kind.__name__}")
        for name in ("mrenclave", "mrsigner", "report_data"):
            _require_hex32(data[name], name)
        return cls(**{name: data[name] for name in expected})


def _require_hex32(value: str, name: str) -> bytes:
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise QuoteFormatError(f"{name} must be hex") from None
    if len(raw) != 32:
        raise QuoteFormatError(f"{name} must be 32 bytes")
    return raw


@dataclass(frozen=True, kw_only=True)
class Quote:
    """A signed report plus the enclave's ephemeral X25519 public key."""

    body: ReportBody
    enclave_public_key: bytes
    signature: bytes

    def to_bytes(self) -> bytes:
        """Serialize canonically (the quote hash is sha256 of these bytes)."""
        return json.dumps(
            {
                "version": QUOTE_VERSION,
                "body": self.body.to_dict(),
                "enclave_public_key": self.enclave_public_key.hex(),
                "signature": self.signature.hex(),
            },
            sort_keys=True,
            separators=(",", ":"),
        ).encode()

    def quote_hash(self) -> bytes:
        """sha256 of the canonical quote bytes; bound into every key wrapped to this quote."""
        return hashlib.sha256(self.to_bytes()).digest()

    @classmethod
    def from_bytes(cls, data: bytes) -> Quote:
        """Parse quote bytes (size-limited, strict fields)."""
        if not isinstance(data, bytes | bytearray) or len(data) > MAX_QUOTE_BYTES:
            raise QuoteFormatError(f"a quote is bytes of at most {MAX_QUOTE_BYTES} bytes")
        try:
            doc = json.loads(bytes(data))
        except (ValueError, UnicodeDecodeError):
            raise QuoteFormatError("quote is not JSON") from None
        if not isinstance(doc, dict) or set(doc) != {
            "version",
            "body",
            "enclave_public_key",
            "signature",
        }:
            raise QuoteFormatError("quote must have version, body, enclave_public_key, signature")
        if doc["version"] != QUOTE_VERSION:
            raise QuoteFormatError(f"unsupported quote version {doc['version']!r}")
        if not isinstance(doc["enclave_public_key"], str) or not isinstance(doc["signature"], str):
            raise QuoteFormatError("enclave_public_key and signature must be hex strings")
        key = _require_hex32(doc["enclave_public_key"], "enclave_public_key")
        try:
            signature = bytes.fromhex(doc["signature"])
        except ValueError:
            raise QuoteFormatError("signature must be hex") from None
        if len(signature) != 64:
            raise QuoteFormatError("signature must be a 64-byte Ed25519 signature")
        return cls(body=ReportBody.from_dict(doc["body"]), enclave_public_key=key, signature=signature)


@dataclass(frozen=True, kw_only=True)
class VerifiedQuote:
    """A quote that passed :func:`verify_quote`: what :func:`wrap_key_for_enclave` requires."""

    body: ReportBody
    enclave_public_key: bytes
    quote_hash: bytes


def compute_report_data(enclave_public_key: bytes, nonce: bytes) -> bytes:
    """report_data = sha256(enclave X25519 public key || verifier nonce)."""
    return hashlib.sha256(bytes(enclave_public_key) + bytes(nonce)).digest()


def sign_quote(
    *,
    mrenclave: str,
    mrsigner: str,
    isv_prod_id: int,
    isv_svn: int,
    debug: bool,
    enclave_public_key: bytes,
    nonce: bytes,
    platform_key: Ed25519PrivateKey,
) -> Quote:
    """Produce a quote (runs in the simulated platform, inside the enclave process)."""
    body = ReportBody(
        mrenclave=mrenclave,
        mrsigner=mrsigner,
        isv_prod_id=isv_prod_id,
        isv_svn=isv_svn,
        debug=debug,
        simulated=True,
        report_data=compute_report_data(enclave_public_key, nonce).hex(),
    )
    signature = platform_key.sign(_QUOTE_CONTEXT + body.canonical_bytes())
    return Quote(body=body, enclave_public_key=bytes(enclave_public_key), signature=signature)


def _platform_public_key(key: Ed25519PublicKey | bytes | str) -> Ed25519PublicKey:
    if isinstance(key, Ed25519PublicKey):
        return key
    if isinstance(key, bytes) and len(key) == 32:
        return Ed25519PublicKey.from_public_bytes(key)
    try:
        return load_public_key_pem(key)
    except KeyFormatError as exc:
        raise ProvisioningError(
            f"platform_key must be an Ed25519 public key, 32 raw bytes or PEM ({exc.message})"
        ) from None


def verify_quote(
    quote: bytes | Quote,
    *,
    platform_key: Ed25519PublicKey | bytes | str,
    allowed_measurements: Iterable[str],
    nonce: bytes,
    allow_simulated: bool = False,
    allow_debug: bool = False,
) -> VerifiedQuote:
    """Verify a quote against a pinned platform key, an MRENCLAVE allow-list and your nonce.

    Checks, in order: format, platform signature, simulated marker, DEBUG flag, MRENCLAVE in
    the allow-list, report_data == sha256(enclave key || nonce). Each failure raises its own
    :class:`ProvisioningError` subclass naming what did not match.
    """
    parsed = quote if isinstance(quote, Quote) else Quote.from_bytes(quote)
    if not isinstance(nonce, bytes) or len(nonce) < 16:
        raise ProvisioningError("the nonce must be at least 16 fresh random bytes")
    allowed = {m.lower() for m in allowed_measurements}
    if not allowed:
        raise ProvisioningError("allowed_measurements is empty: pin at least one MRENCLAVE")
    try:
        _platform_public_key(platform_key).verify(parsed.signature, _QUOTE_CONTEXT + parsed.body.canonical_bytes())
    except InvalidSignature:
        raise QuoteSignatureError(
            "quote signature does not verify under the pinned platform key (signed by another platform key, or altered)"
        ) from None
    body = parsed.body
    if body.simulated and not allow_simulated:
        raise SimulatedQuoteError("quote comes from a simulated enclave and allow_simulated=False")
    if body.debug and not allow_debug:
        raise DebugEnclaveError("quote comes from a DEBUG enclave (debug=true)")
    if body.mrenclave.lower() not in allowed:
        raise MeasurementNotAllowedError(
            f"MRENCLAVE {body.mrenclave} is not in the allow-list ({', '.join(sorted(allowed))})"
        )
    expected = compute_report_data(parsed.enclave_public_key, nonce)
    if not hmac.compare_digest(expected, bytes.fromhex(body.report_data)):
        raise ReportDataMismatchError(
            "report_data does not equal sha256(enclave key || your nonce): the quote was "
            "produced for another nonce (replay) or its enclave key was substituted"
        )
    return VerifiedQuote(body=body, enclave_public_key=parsed.enclave_public_key, quote_hash=parsed.quote_hash())


def _check_label(label: str) -> bytes:
    if not isinstance(label, str) or not 0 < len(label) <= _MAX_LABEL or "|" in label:
        raise ProvisioningError(f"label must be a non-empty string of <= {_MAX_LABEL} chars, no '|'")
    return label.encode()


def _derive_wrap_key(shared: bytes, label: bytes, quote_hash: bytes) -> bytes:
    info = _WRAP_INFO + label + b"|" + quote_hash
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared)


def wrap_key_for_enclave(verified_quote: VerifiedQuote, secret: bytes, *, label: str) -> bytes:
    """Encrypt ``secret`` so only the enclave that produced ``verified_quote`` can open it."""
    if not isinstance(verified_quote, VerifiedQuote):
        raise ProvisioningError("wrap_key_for_enclave needs a VerifiedQuote from verify_quote()")
    if not isinstance(secret, bytes | bytearray):
        raise ProvisioningError("secret must be bytes")
    label_bytes = _check_label(label)
    ephemeral = X25519PrivateKey.generate()
    shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(verified_quote.enclave_public_key))
    key = _derive_wrap_key(shared, label_bytes, verified_quote.quote_hash)
    ephemeral_public = ephemeral.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    header = (
        FrameWriter(_WRAP_MAGIC)
        .prefixed(label_bytes, 1)
        .raw(verified_quote.quote_hash)
        .raw(ephemeral_public)
        .to_bytes()
    )
    nonce = os.urandom(12)
    return header + nonce + AESGCM(key).encrypt(nonce, bytes(secret), header)


def _parse_wrapped(blob: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    """Frame: magic | u8 label length | label | quote hash (32) | ephemeral X25519 key (32) |
    nonce (12) | AES-GCM ciphertext and tag; returns (label, quote hash, key, header)."""
    reader = FrameReader(blob, magic=_WRAP_MAGIC, error=UnwrapError, what="wrapped blob")
    label = reader.prefixed(1, limit=255, field="label")
    quote_hash = reader.take(32, field="quote hash")
    ephemeral_public = reader.take(32, field="ephemeral key")
    header = reader.consumed()
    reader.rest(min_bytes=12 + 16, field="ciphertext")
    return label, quote_hash, ephemeral_public, header


def wrapped_label(blob: bytes) -> str | None:
    """The label a blob was wrapped under (public: part of the header), or None if ``blob`` is
    not a well-formed wrapped blob. Lets the untrusted host check what it relays."""
    try:
        label, _, _, _ = _parse_wrapped(blob)
    except UnwrapError:
        return None
    return label.decode("ascii", "replace")


def unwrap_in_enclave(
    blob: bytes,
    *,
    enclave_private_key: X25519PrivateKey,
    accepted_quote_hashes: Collection[bytes],
    label: str,
    max_bytes: int = 256 * 1024 * 1024,
) -> bytes:
    """Open a wrapped secret inside the enclave (quote must be one this enclave issued)."""
    label_bytes = _check_label(label)
    if not isinstance(blob, bytes) or len(blob) > max_bytes + 200:
        raise UnwrapError(f"wrapped blob must be bytes of at most {max_bytes} bytes")
    got_label, quote_hash, ephemeral_public, header = _parse_wrapped(blob)
    if got_label != label_bytes:
        raise UnwrapError(f"wrapped blob is for label {got_label!r}, expected {label!r}")
    if quote_hash not in accepted_quote_hashes:
        raise UnwrapError("wrapped to a quote this enclave did not issue (other enclave/session)")
    shared = enclave_private_key.exchange(X25519PublicKey.from_public_bytes(ephemeral_public))
    key = _derive_wrap_key(shared, label_bytes, quote_hash)
    try:
        return AESGCM(key).decrypt(blob[len(header) : len(header) + 12], blob[len(header) + 12 :], header)
    except InvalidTag:
        raise UnwrapError("wrapped blob was altered or wrapped to another enclave key") from None


def provision(
    quote: bytes | Quote,
    *,
    platform_key: Ed25519PublicKey | bytes | str,
    allowed_measurements: Iterable[str],
    nonce: bytes,
    secrets: Mapping[str, bytes],
    send: Callable[[dict[str, bytes]], object],
    allow_simulated: bool = False,
    allow_debug: bool = False,
) -> VerifiedQuote:
    """Verify ``quote``; only if it passes, wrap each secret (label → bytes) and ``send`` them.

    If verification fails the error propagates and ``send`` is never called: nothing leaves.
    """
    verified = verify_quote(
        quote,
        platform_key=platform_key,
        allowed_measurements=allowed_measurements,
        nonce=nonce,
        allow_simulated=allow_simulated,
        allow_debug=allow_debug,
    )
    wrapped = {label: wrap_key_for_enclave(verified, secret, label=label) for label, secret in secrets.items()}
    send(wrapped)
    return verified
