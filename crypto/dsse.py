"""DSSE v1 envelopes signed with Ed25519, and canonical JSON.

    env = sign_envelope(canonical_json(report), "application/vnd.audit-appliance.report+json", key)
    payload = verify_envelope(env, key.public_key(),
                              payload_type="application/vnd.audit-appliance.report+json")

The signature covers the DSSE pre-authentication encoding
``PAE(type, body) = "DSSEv1" SP len(type) SP type SP len(body) SP body`` (lengths as ASCII
decimal byte counts), so the payload type is authenticated with the payload.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from crypto.errors import EncodingError, SignatureError
from crypto.keys import key_id

__all__ = [
    "b64decode_strict",
    "canonical_json",
    "pae",
    "parse_json_strict",
    "sign_envelope",
    "verify_envelope",
]

_MAX_SIGNATURES = 16
_ED25519_SIGNATURE_BYTES = 64
_ENVELOPE_KEYS = frozenset({"payloadType", "payload", "signatures"})
_SIGNATURE_KEYS = frozenset({"keyid", "sig"})


def pae(payload_type: str, payload: bytes) -> bytes:
    """Return the DSSE v1 pre-authentication encoding of ``payload_type`` and ``payload``."""
    type_bytes = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(type_bytes), type_bytes, len(payload), payload)


def sign_envelope(payload: bytes, payload_type: str, key: Ed25519PrivateKey) -> dict[str, Any]:
    """Sign ``payload`` as a DSSE envelope with one Ed25519 signature.

    Returns ``{"payloadType", "payload" (standard base64), "signatures": [{"keyid", "sig"}]}``
    where ``keyid`` is :func:`crypto.keys.key_id` of the public key.
    """
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise TypeError(f"payload must be bytes, got {type(payload).__name__}")
    if not isinstance(payload_type, str) or not payload_type:
        raise TypeError("payload_type must be a non-empty str")
    if not isinstance(key, Ed25519PrivateKey):
        raise TypeError(f"key must be an Ed25519PrivateKey, got {type(key).__name__}")
    body = bytes(payload)
    signature = key.sign(pae(payload_type, body))
    return {
        "payloadType": payload_type,
        "payload": base64.b64encode(body).decode("ascii"),
        "signatures": [
            {"keyid": key_id(key.public_key()), "sig": base64.b64encode(signature).decode("ascii")}
        ],
    }


def b64decode_strict(text: object, *, what: str) -> bytes:
    """Decode standard base64, refusing any text that is not the canonical encoding.

    Canonical means: only the standard alphabet, correct padding, and re-encoding the
    decoded bytes gives back exactly ``text`` (so no two strings decode to the same bytes).

    Raises:
        SignatureError: ``text`` is not a str or not canonical base64.
    """
    if not isinstance(text, str):
        raise SignatureError(f"malformed envelope: {what} must be a base64 string")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError):
        raise SignatureError(f"malformed envelope: {what} is not valid base64") from None
    if base64.b64encode(raw).decode("ascii") != text:
        raise SignatureError(f"malformed envelope: {what} is not canonical base64")
    return raw


def _trusted_keys(
    trusted: Ed25519PublicKey | Mapping[str, Ed25519PublicKey],
) -> tuple[dict[str, Ed25519PublicKey], Ed25519PublicKey | None]:
    if isinstance(trusted, Ed25519PublicKey):
        return {key_id(trusted): trusted}, trusted
    if isinstance(trusted, Mapping):
        keys: dict[str, Ed25519PublicKey] = {}
        for kid, key in trusted.items():
            if not isinstance(kid, str) or not isinstance(key, Ed25519PublicKey):
                raise TypeError("trusted must map key id strings to Ed25519PublicKey")
            keys[kid] = key
        if not keys:
            raise TypeError("trusted must name at least one key")
        return keys, None
    raise TypeError(
        f"trusted must be an Ed25519PublicKey or a mapping of them, got {type(trusted).__name__}"
    )


def verify_envelope(
    envelope: dict[str, Any],
    trusted: Ed25519PublicKey | Mapping[str, Ed25519PublicKey],
    *,
    payload_type: str | None = None,
) -> bytes:
    """Verify a DSSE envelope and return its payload bytes.

    ``trusted`` is one public key or a mapping ``{keyid: key}``. The envelope is accepted
    when at least one of its signatures is from a trusted key id and verifies. With a
    single trusted key, a signature without ``keyid`` is tried against that key.

    Raises:
        SignatureError: the envelope is malformed, names no trusted key id, has a bad
            signature, or its payload type differs from ``payload_type``.
    """
    keys, single = _trusted_keys(trusted)
    if not isinstance(envelope, dict):
        raise SignatureError(
            f"malformed envelope: expected a JSON object, got {type(envelope).__name__}"
        )
    missing = _ENVELOPE_KEYS - envelope.keys()
    extra = envelope.keys() - _ENVELOPE_KEYS
    if missing or extra:
        raise SignatureError(
            "malformed envelope: "
            + "; ".join(
                part
                for part in (
                    f"missing fields {sorted(missing)}" if missing else "",
                    f"unexpected fields {sorted(map(str, extra))}" if extra else "",
                )
                if part
            )
        )
    envelope_type = envelope["payloadType"]
    if not isinstance(envelope_type, str) or not envelope_type:
        raise SignatureError("malformed envelope: payloadType must be a non-empty string")
    if payload_type is not None and envelope_type != payload_type:
        raise SignatureError(
            f"wrong payload type: expected {payload_type!r}, envelope has {envelope_type!r}",
            hint="This envelope carries a different kind of document; pass the right one.",
        )
    payload = b64decode_strict(envelope["payload"], what="payload")
    signatures = envelope["signatures"]
    if not isinstance(signatures, list) or not signatures:
        raise SignatureError("malformed envelope: signatures must be a non-empty list")
    if len(signatures) > _MAX_SIGNATURES:
        raise SignatureError(f"malformed envelope: more than {_MAX_SIGNATURES} signatures")

    message = pae(envelope_type, payload)
    seen_keyids: list[str] = []
    tried = 0
    for position, entry in enumerate(signatures):
        if not isinstance(entry, dict) or "sig" not in entry or entry.keys() - _SIGNATURE_KEYS:
            raise SignatureError(
                f"malformed envelope: signature {position} must be an object with 'sig' "
                "and optionally 'keyid'"
            )
        kid = entry.get("keyid")
        if kid is not None and not isinstance(kid, str):
            raise SignatureError(f"malformed envelope: keyid of signature {position} not a string")
        sig = b64decode_strict(entry["sig"], what=f"signature {position}")
        if kid:
            key = keys.get(kid)
            seen_keyids.append(kid)
        else:
            key = single
        if key is None:
            continue
        tried += 1
        if len(sig) != _ED25519_SIGNATURE_BYTES:
            continue
        try:
            key.verify(sig, message)
        except InvalidSignature:
            continue
        return payload
    if tried == 0:
        raise SignatureError(
            f"unknown keyid: the envelope is signed by {seen_keyids or 'unnamed keys'}, "
            f"trusted key ids are {sorted(keys)}",
            hint="Pin the signer's public key, or obtain an envelope signed by a key you trust.",
        )
    raise SignatureError(
        "bad signature: no signature from a trusted key verifies over this payload and type",
        hint="The payload, its type or the signature was altered after signing.",
    )


def _check_canonical(value: object, path: str) -> None:
    if value is None or isinstance(value, bool | int | str):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise EncodingError(f"canonical JSON refuses non-finite number at {path}")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise EncodingError(
                    f"canonical JSON needs string keys, got {type(key).__name__} at {path}"
                )
            _check_canonical(item, f"{path}.{key}")
        return
    if isinstance(value, list | tuple):
        for position, item in enumerate(value):
            _check_canonical(item, f"{path}[{position}]")
        return
    raise EncodingError(f"canonical JSON cannot encode {type(value).__name__} at {path}")


def canonical_json(obj: Any) -> bytes:
    """Encode ``obj`` as canonical JSON: sorted keys, no whitespace, UTF-8, finite numbers.

    Raises:
        EncodingError: NaN/infinity, non-string keys, lone surrogates or unsupported types.
    """
    _check_canonical(obj, "$")
    try:
        text = json.dumps(
            obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
        return text.encode("utf-8")
    except (ValueError, TypeError, UnicodeEncodeError) as exc:
        raise EncodingError(f"canonical JSON encoding failed: {exc}") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name} is not JSON")


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def parse_json_strict(data: bytes | str) -> Any:
    """Parse JSON refusing duplicate keys and NaN/Infinity; raise ``ValueError`` otherwise.

    Duplicate keys are refused because two parsers may keep different values, so a
    signed document could be read two ways.
    """
    if isinstance(data, bytes | bytearray | memoryview):
        text = bytes(data).decode("utf-8")
    else:
        text = data
    return json.loads(text, object_pairs_hook=_unique_object, parse_constant=_reject_constant)
