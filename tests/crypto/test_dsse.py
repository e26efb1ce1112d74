"""DSSE envelopes, canonical JSON and Ed25519 key handling."""

from __future__ import annotations

import base64
import hashlib
import json
import multiprocessing
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from crypto.dsse import canonical_json, pae, sign_envelope, verify_envelope
from crypto.errors import CryptoError, EncodingError, KeyFormatError, SignatureError
from crypto.keys import key_id, load_or_create_ed25519, load_public_key_pem, public_key_pem

TYPE = "application/vnd.audit-appliance.report+json"


def _key(seed: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"seed%d" % seed).digest())


# --- PAE and round trip -------------------------------------------------------------


def test_pae_matches_the_dsse_specification() -> None:
    # The example from the DSSE v1 protocol description.
    assert pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )
    assert pae("t", b"") == b"DSSEv1 1 t 0 "
    # Lengths count UTF-8 bytes, not characters.
    assert pae("é", b"\xff") == b"DSSEv1 2 \xc3\xa9 1 \xff"


def test_round_trip_and_shape() -> None:
    key = _key(1)
    payload = canonical_json({"verdict": "pass", "p_value": 0.01})
    envelope = sign_envelope(payload, TYPE, key)
    assert set(envelope) == {"payloadType", "payload", "signatures"}
    assert base64.b64decode(envelope["payload"]) == payload
    (signature,) = envelope["signatures"]
    assert signature["keyid"] == key_id(key.public_key())
    # The signature is over the PAE, checkable with the bare primitive.
    key.public_key().verify(base64.b64decode(signature["sig"]), pae(TYPE, payload))
    assert verify_envelope(envelope, key.public_key(), payload_type=TYPE) == payload
    assert verify_envelope(envelope, {key_id(key.public_key()): key.public_key()}) == payload
    # Survives a JSON round trip unchanged.
    assert verify_envelope(json.loads(json.dumps(envelope)), key.public_key()) == payload


def _reason(envelope: object, trusted: object, **kwargs: object) -> str:
    with pytest.raises(SignatureError) as info:
        verify_envelope(envelope, trusted, **kwargs)  # type: ignore[arg-type]
    assert info.value.diagnostics().startswith("SignatureError: ")
    return info.value.message


def test_tampering_is_refused_with_a_named_reason() -> None:
    key = _key(2)
    public = key.public_key()
    envelope = sign_envelope(b'{"a":1}', TYPE, key)

    tampered = dict(envelope, payload=base64.b64encode(b'{"a":2}').decode())
    assert _reason(tampered, public).startswith("bad signature")

    raw_sig = bytearray(base64.b64decode(envelope["signatures"][0]["sig"]))
    raw_sig[10] ^= 0x01
    forged = dict(envelope["signatures"][0], sig=base64.b64encode(raw_sig).decode())
    bad_sig = dict(envelope, signatures=[forged])
    assert _reason(bad_sig, public).startswith("bad signature")

    other_type = dict(envelope, payloadType="application/other")
    assert _reason(other_type, public).startswith("bad signature")
    assert _reason(other_type, public, payload_type=TYPE).startswith("wrong payload type")

    kid = envelope["signatures"][0]["keyid"]
    flipped_kid = ("0" if kid[0] != "0" else "1") + kid[1:]
    unknown = dict(envelope, signatures=[dict(envelope["signatures"][0], keyid=flipped_kid)])
    assert _reason(unknown, public).startswith("unknown keyid")
    assert _reason(envelope, _key(3).public_key()).startswith("unknown keyid")
    assert _reason(envelope, {kid: _key(3).public_key()}).startswith("bad signature")


def test_every_single_character_change_is_refused() -> None:
    key = _key(4)
    envelope = sign_envelope(canonical_json({"x": list(range(5))}), TYPE, key)
    for field in ("payloadType", "payload"):
        original = envelope[field]
        for position in range(len(original)):
            for delta in (1, 2, 32):
                changed = original[:position] + chr(ord(original[position]) ^ delta)
                changed += original[position + 1 :]
                with pytest.raises(SignatureError):
                    verify_envelope(dict(envelope, **{field: changed}), key.public_key())
    for field in ("sig", "keyid"):
        original = envelope["signatures"][0][field]
        for position in range(len(original)):
            changed = original[:position] + chr(ord(original[position]) ^ 1)
            changed += original[position + 1 :]
            signature = dict(envelope["signatures"][0], **{field: changed})
            with pytest.raises(SignatureError):
                verify_envelope(dict(envelope, signatures=[signature]), key.public_key())


def test_malformed_envelopes_are_refused() -> None:
    key = _key(5)
    public = key.public_key()
    good = sign_envelope(b"x", TYPE, key)
    cases: list[object] = [
        None,
        [],
        {k: v for k, v in good.items() if k != "payload"},
        dict(good, extra=1),
        dict(good, payload=123),
        dict(good, payload="not base64!"),
        dict(good, payload="eA"),  # missing padding
        dict(good, signatures=[]),
        dict(good, signatures="sig"),
        dict(good, signatures=[{"keyid": good["signatures"][0]["keyid"]}]),
        dict(good, signatures=[dict(good["signatures"][0], extra="x")]),
        dict(good, signatures=[dict(good["signatures"][0], keyid=7)]),
        dict(good, payloadType=""),
        dict(good, signatures=[good["signatures"][0]] * 17),
    ]
    for case in cases:
        _reason(case, public)
    # "eB==" decodes to the same byte as "eA==" but is not the canonical encoding.
    assert base64.b64decode("eB==") == base64.b64decode("eA==") == b"x"
    assert _reason(dict(good, payload="eB=="), public).startswith("malformed envelope")
    assert verify_envelope(dict(good, payload="eA=="), public) == b"x"


def test_multiple_signatures_and_missing_keyid() -> None:
    first, second = _key(6), _key(7)
    envelope = sign_envelope(b"data", TYPE, first)
    other = sign_envelope(b"data", TYPE, second)
    both = dict(envelope, signatures=other["signatures"] + envelope["signatures"])
    assert verify_envelope(both, first.public_key()) == b"data"
    assert verify_envelope(both, second.public_key()) == b"data"
    anonymous = dict(envelope, signatures=[{"sig": envelope["signatures"][0]["sig"]}])
    assert verify_envelope(anonymous, first.public_key()) == b"data"
    # With a key map, an unnamed signature cannot be attributed to any key.
    assert _reason(anonymous, {key_id(first.public_key()): first.public_key()}).startswith(
        "unknown keyid"
    )


# --- canonical JSON ----------------------------------------------------------------


def test_canonical_json() -> None:
    assert canonical_json({"b": 1, "a": [True, None, 1.5, "é"]}) == (
        '{"a":[true,null,1.5,"é"],"b":1}'.encode()
    )
    assert canonical_json({"b": {"d": 1, "c": 2}}) == canonical_json({"b": {"c": 2, "d": 1}})
    for bad in (float("nan"), float("inf"), {"x": -float("inf")}, {1: "int key"}, {"s": {1, 2}}):
        with pytest.raises(EncodingError):
            canonical_json(bad)
    with pytest.raises(EncodingError):
        canonical_json("\ud800")
    assert isinstance(EncodingError("x"), ValueError)


# --- keys ----------------------------------------------------------------------------


def test_key_created_private_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "home" / "keys" / "signing.pem"
    key = load_or_create_ed25519(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    again = load_or_create_ed25519(path)
    raw = serialization.Encoding.Raw, serialization.PrivateFormat.Raw
    assert key.private_bytes(*raw, serialization.NoEncryption()) == again.private_bytes(
        *raw, serialization.NoEncryption()
    )
    assert [p.name for p in path.parent.iterdir()] == ["signing.pem"]  # no temp files left


def test_key_file_errors(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_bytes(b"not a key")
    with pytest.raises(KeyFormatError):
        load_or_create_ed25519(junk)
    ec = tmp_path / "ec.pem"
    ec.write_bytes(
        generate_private_key(SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(KeyFormatError) as info:
        load_or_create_ed25519(ec)
    assert "not an Ed25519" in info.value.message


def test_key_creation_never_replaces_an_existing_key(tmp_path: Path) -> None:
    from crypto import keys
    from crypto.secret_files import write_secret_once

    path = tmp_path / "k.pem"
    first = load_or_create_ed25519(path).public_key()
    before = path.read_bytes()
    # A creator that lost the race (the file appeared after its existence check).
    assert not write_secret_once(path, keys._private_pem(Ed25519PrivateKey.generate()))
    assert path.read_bytes() == before
    assert key_id(load_or_create_ed25519(path).public_key()) == key_id(first)
    assert [p.name for p in tmp_path.iterdir()] == ["k.pem"]


def _create_key(path: str) -> str:
    key = load_or_create_ed25519(Path(path))
    return key_id(key.public_key())


def test_concurrent_key_creation_yields_one_key(tmp_path: Path) -> None:
    path = str(tmp_path / "keys" / "k.pem")
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        ids = pool.map(_create_key, [path] * 4)
    assert len(set(ids)) == 1
    assert ids[0] == _create_key(path)


def test_public_key_pem_round_trip_and_key_id() -> None:
    public = _key(8).public_key()
    pem = public_key_pem(public)
    assert pem.startswith("-----BEGIN PUBLIC KEY-----\n")
    assert key_id(load_public_key_pem(pem)) == key_id(public)
    assert key_id(load_public_key_pem(pem.encode())) == key_id(public)
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert key_id(public) == hashlib.sha256(raw).hexdigest()
    assert key_id(public) != key_id(_key(9).public_key())
    ec_pem = (
        generate_private_key(SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    for bad in ("junk", b"", ec_pem, pem.replace("M", "N", 1), 42, "é"):
        with pytest.raises(KeyFormatError):
            load_public_key_pem(bad)  # type: ignore[arg-type]
    assert issubclass(KeyFormatError, CryptoError)
