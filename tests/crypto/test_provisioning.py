"""Quote verification refuses each mismatch by name; wrapping binds label, quote and key."""

from __future__ import annotations

import dataclasses
import hashlib
import os

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from crypto.provisioning import (
    DebugEnclaveError,
    MeasurementNotAllowedError,
    Quote,
    QuoteFormatError,
    QuoteSignatureError,
    ReportDataMismatchError,
    SimulatedQuoteError,
    UnwrapError,
    provision,
    sign_quote,
    unwrap_in_enclave,
    verify_quote,
    wrap_key_for_enclave,
)

PLATFORM = Ed25519PrivateKey.generate()
PINNED = PLATFORM.public_key()
MRENCLAVE = hashlib.sha256(b"code").hexdigest()
MRSIGNER = hashlib.sha256(b"signer").hexdigest()
ENCLAVE_KEY = X25519PrivateKey.generate()
ENCLAVE_PUB = ENCLAVE_KEY.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def make_quote(
    nonce: bytes,
    *,
    debug: bool = False,
    key: Ed25519PrivateKey = PLATFORM,
    mrenclave: str = MRENCLAVE,
) -> Quote:
    return sign_quote(
        mrenclave=mrenclave,
        mrsigner=MRSIGNER,
        isv_prod_id=1,
        isv_svn=1,
        debug=debug,
        enclave_public_key=ENCLAVE_PUB,
        nonce=nonce,
        platform_key=key,
    )


def verify(quote: Quote | bytes, nonce: bytes, **kw: object):  # type: ignore[no-untyped-def]
    args = {
        "platform_key": PINNED,
        "allowed_measurements": {MRENCLAVE},
        "nonce": nonce,
        "allow_simulated": True,
    }
    args.update(kw)
    return verify_quote(quote if isinstance(quote, bytes) else quote.to_bytes(), **args)  # type: ignore[arg-type]


def test_valid_quote_and_wrap_roundtrip() -> None:
    nonce = os.urandom(32)
    vq = verify(make_quote(nonce), nonce)
    assert vq.body.mrenclave == MRENCLAVE and vq.body.simulated
    blob = wrap_key_for_enclave(vq, b"model-secret", label="model")
    assert b"model-secret" not in blob
    out = unwrap_in_enclave(blob, enclave_private_key=ENCLAVE_KEY, accepted_quote_hashes={vq.quote_hash}, label="model")
    assert out == b"model-secret"


def test_each_refusal_is_named() -> None:
    nonce = os.urandom(32)
    with pytest.raises(QuoteSignatureError, match="platform key"):
        verify(make_quote(nonce, key=Ed25519PrivateKey.generate()), nonce)
    with pytest.raises(ReportDataMismatchError, match="replay"):
        verify(make_quote(os.urandom(32)), nonce)  # quote for an old nonce
    substituted = dataclasses.replace(
        make_quote(nonce),
        enclave_public_key=X25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw),
    )
    with pytest.raises(ReportDataMismatchError):
        verify(substituted, nonce)
    with pytest.raises(DebugEnclaveError):
        verify(make_quote(nonce, debug=True), nonce)
    verify(make_quote(nonce, debug=True), nonce, allow_debug=True)
    with pytest.raises(SimulatedQuoteError):
        verify(make_quote(nonce), nonce, allow_simulated=False)
    with pytest.raises(MeasurementNotAllowedError, match="allow-list"):
        verify(make_quote(nonce, mrenclave=hashlib.sha256(b"code2").hexdigest()), nonce)
    tampered = bytearray(make_quote(nonce).to_bytes())
    tampered[tampered.index(b'"isv_svn":1') + 10] = ord("2")
    with pytest.raises(QuoteSignatureError):
        verify(bytes(tampered), nonce)
    with pytest.raises(QuoteFormatError):
        verify(b"{not json", nonce)


def test_provision_sends_nothing_on_refusal() -> None:
    nonce = os.urandom(32)
    sent: list[dict[str, bytes]] = []
    with pytest.raises(MeasurementNotAllowedError):
        provision(
            make_quote(nonce, mrenclave=hashlib.sha256(b"evil").hexdigest()).to_bytes(),
            platform_key=PINNED,
            allowed_measurements={MRENCLAVE},
            nonce=nonce,
            secrets={"model": b"m"},
            send=sent.append,
            allow_simulated=True,
        )
    assert sent == []
    provision(
        make_quote(nonce).to_bytes(),
        platform_key=PINNED,
        allowed_measurements={MRENCLAVE},
        nonce=nonce,
        secrets={"model": b"m"},
        send=sent.append,
        allow_simulated=True,
    )
    assert list(sent[0]) == ["model"] and b"m" != sent[0]["model"]


def test_unwrap_refusals() -> None:
    nonce = os.urandom(32)
    vq = verify(make_quote(nonce), nonce)
    blob = wrap_key_for_enclave(vq, b"secret", label="model")
    ok = {"enclave_private_key": ENCLAVE_KEY, "accepted_quote_hashes": {vq.quote_hash}}
    with pytest.raises(UnwrapError, match="label"):
        unwrap_in_enclave(blob, label="train-labels", **ok)  # type: ignore[arg-type]
    with pytest.raises(UnwrapError, match="did not issue"):
        unwrap_in_enclave(blob, enclave_private_key=ENCLAVE_KEY, accepted_quote_hashes=set(), label="model")
    with pytest.raises(UnwrapError):
        unwrap_in_enclave(
            blob,
            enclave_private_key=X25519PrivateKey.generate(),
            accepted_quote_hashes={vq.quote_hash},
            label="model",
        )
    for i in range(len(blob)):
        altered = bytearray(blob)
        altered[i] ^= 0x80
        with pytest.raises(UnwrapError):
            unwrap_in_enclave(bytes(altered), label="model", **ok)  # type: ignore[arg-type]
