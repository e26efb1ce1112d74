"""crypto.sigstore against the real OpenSSF model_signing package, in both directions."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from signing_support import (
    ms_sign_certificate,
    ms_sign_key,
    ms_verify_key,
    write_ca_chain,
    write_ec_key,
)

from crypto.dsse import canonical_json, sign_envelope
from crypto.errors import SignatureError
from crypto.keys import load_or_create_ed25519
from crypto.sigstore import (
    ec_key_fingerprint,
    ec_public_key_pem,
    load_ec_public_key_pem,
    load_or_create_ec_p256,
    parse_bundle_bytes,
    sign_bundle,
    verify_bundle,
)
from models.errors import ManifestError
from models.manifest import build_manifest, verify_manifest


def _model(folder: Path) -> Path:
    model = folder / "model"
    (model / "sub").mkdir(parents=True)
    (model / "weights.bin").write_bytes(bytes(range(256)) * 40)
    (model / "sub" / "config.json").write_text('{"layers": 2}')
    return model


def _bundle(path: Path) -> dict[str, Any]:
    return dict(parse_bundle_bytes(path.read_bytes()))


def _pub(path: Path) -> ec.EllipticCurvePublicKey:
    return load_ec_public_key_pem(path.read_bytes())


@pytest.mark.parametrize("curve", [ec.SECP256R1(), ec.SECP384R1()], ids=["p256", "p384"])
def test_model_signing_key_bundle_verifies_and_binds_the_files(tmp_path: Path,
                                                               curve: ec.EllipticCurve) -> None:
    model = _model(tmp_path)
    private, public = write_ec_key(tmp_path, "signer", curve)
    bundle = _bundle(ms_sign_key(model, private, tmp_path / "model.sig"))

    verified = verify_bundle(bundle, trusted_keys=[_pub(public)])
    assert verified.signer.kind == "key"
    assert verified.signer.curve == curve.name
    assert verified.signer.fingerprint == ec_key_fingerprint(_pub(public))
    # model_signing's subject digest is the one our manifest computes for the same files
    ours = build_manifest(model, model_name="x")
    assert verified.statement["subject"][0]["digest"] == ours["subject"][0]["digest"]
    verify_manifest(model, verified.statement)

    (model / "weights.bin").write_bytes(b"tampered")
    with pytest.raises(ManifestError, match=r"changed files \['weights.bin'\]"):
        verify_manifest(model, verified.statement)


def test_extra_and_missing_files_are_named(tmp_path: Path) -> None:
    model = _model(tmp_path)
    private, public = write_ec_key(tmp_path, "signer")
    statement = verify_bundle(_bundle(ms_sign_key(model, private, tmp_path / "model.sig")),
                              trusted_keys=[_pub(public)]).statement
    (model / "extra.py").write_text("print('hi')")
    with pytest.raises(ManifestError, match=r"extra files \['extra.py'\]"):
        verify_manifest(model, statement)
    (model / "extra.py").unlink()
    (model / "sub" / "config.json").unlink()
    with pytest.raises(ManifestError, match=r"missing files \['sub/config.json'\]"):
        verify_manifest(model, statement)


def test_wrong_key_and_altered_bundle_are_refused(tmp_path: Path) -> None:
    model = _model(tmp_path)
    private, _ = write_ec_key(tmp_path, "signer")
    _, other_public = write_ec_key(tmp_path, "other")
    bundle = _bundle(ms_sign_key(model, private, tmp_path / "model.sig"))
    other = _pub(other_public)

    with pytest.raises(SignatureError, match="unknown signer"):
        verify_bundle(bundle, trusted_keys=[other])
    with pytest.raises(SignatureError, match="unknown signer"):
        verify_bundle(bundle)

    # claiming to be the trusted key does not help: the signature must verify with it
    forged = json.loads(json.dumps(bundle))
    forged["verificationMaterial"]["publicKey"]["hint"] = ec_key_fingerprint(other)
    with pytest.raises(SignatureError, match="bad signature"):
        verify_bundle(forged, trusted_keys=[other])
    # a pre-1.0 bundle without a hint is checked against every pinned key
    unhinted = json.loads(json.dumps(bundle))
    unhinted["verificationMaterial"]["publicKey"] = {}
    assert verify_bundle(unhinted, trusted_keys=[other, _pub(tmp_path / "signer.pub")]) \
        .signer.fingerprint == ec_key_fingerprint(_pub(tmp_path / "signer.pub"))
    with pytest.raises(SignatureError, match="bad signature"):
        verify_bundle(unhinted, trusted_keys=[other])

    # a statement edited to match tampered files breaks the signature
    public = tmp_path / "signer.pub"
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    statement["predicate"]["resources"][0]["digest"] = "00" * 32
    edited = json.loads(json.dumps(bundle))
    edited["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    with pytest.raises(SignatureError, match="bad signature"):
        verify_bundle(edited, trusted_keys=[_pub(public)])


def test_appliance_bundles_pass_the_real_verifier(tmp_path: Path) -> None:
    model = _model(tmp_path)
    key = load_or_create_ec_p256(tmp_path / "keys" / "p256.pem")
    assert stat.S_IMODE((tmp_path / "keys" / "p256.pem").stat().st_mode) == 0o600
    assert load_or_create_ec_p256(tmp_path / "keys" / "p256.pem").private_numbers() == \
        key.private_numbers()
    public = tmp_path / "appliance.pub"
    public.write_text(ec_public_key_pem(key.public_key()))
    signature = tmp_path / "ours.sig"
    bundle = sign_bundle(canonical_json(build_manifest(model, model_name="m")), key)
    signature.write_text(json.dumps(bundle, indent=2))

    ms_verify_key(model, public, signature)
    assert verify_bundle(bundle, trusted_keys=[key.public_key()]).signer.kind == "key"

    _, other = write_ec_key(tmp_path, "other")
    with pytest.raises(ValueError, match="Key mismatch"):
        ms_verify_key(model, other, signature)
    (model / "weights.bin").write_bytes(b"tampered")
    with pytest.raises(ValueError, match="Signature mismatch"):
        ms_verify_key(model, public, signature)


def test_bundles_of_the_wrong_kind_are_refused_with_a_reason(tmp_path: Path) -> None:
    model = _model(tmp_path)
    private, public = write_ec_key(tmp_path, "signer")
    good = _bundle(ms_sign_key(model, private, tmp_path / "model.sig"))
    trusted = [_pub(public)]
    ed_key = load_or_create_ed25519(tmp_path / "ed.pem")
    manifest_envelope = sign_envelope(canonical_json(build_manifest(model, model_name="m")),
                                      "application/vnd.in-toto+json", ed_key)
    blob_bundle = {"mediaType": good["mediaType"], "verificationMaterial":
                   good["verificationMaterial"],
                   "messageSignature": {"messageDigest": {"algorithm": "SHA2_256",
                                                          "digest": "AAAA"}, "signature": "AAAA"}}
    old_media = dict(good, mediaType="application/vnd.dev.sigstore.bundle+json;version=0.2")
    other_type = json.loads(json.dumps(good))
    other_type["dsseEnvelope"]["payloadType"] = "application/vnd.audit-appliance.report+json"
    cases = [
        (manifest_envelope, "appliance manifest envelope"),
        ({"envelope": manifest_envelope, "public_key": "x"}, "appliance manifest envelope"),
        (blob_bundle, "signs a blob"),
        (old_media, "not a Sigstore bundle v0.3"),
        (other_type, "not an in-toto statement"),
        ([1, 2], "expected a JSON object"),
    ]
    for bundle, reason in cases:
        with pytest.raises(SignatureError, match=reason):
            verify_bundle(bundle, trusted_keys=trusted)
    with pytest.raises(SignatureError, match="not JSON"):
        parse_bundle_bytes(b"\x00not json")


def test_certificate_bundles_chain_to_the_pinned_root(tmp_path: Path) -> None:
    model = _model(tmp_path)
    chain = write_ca_chain(tmp_path)
    bundle = _bundle(ms_sign_certificate(model, chain, tmp_path / "model.sig"))
    root = x509.load_pem_x509_certificate(chain["root"].read_bytes())

    verified = verify_bundle(bundle, trusted_roots=[root])
    assert verified.signer.kind == "certificate"
    assert verified.signer.subject == "CN=model-release@example.org"
    assert verified.signer.issuer == "CN=Test Intermediate"
    verify_manifest(model, verified.statement)

    stranger = write_ca_chain(tmp_path, prefix="other-")
    other_root = x509.load_pem_x509_certificate(stranger["root"].read_bytes())
    with pytest.raises(SignatureError, match="does not chain to a trusted root"):
        verify_bundle(bundle, trusted_roots=[other_root])
    with pytest.raises(SignatureError, match="no CA bundle is configured"):
        verify_bundle(bundle)
    # a registered key does not stand in for the certificate path
    with pytest.raises(SignatureError, match="no CA bundle"):
        verify_bundle(bundle, trusted_keys=[_pub(tmp_path / "leaf.pub")])

    # a bundle whose intermediate was dropped cannot reach the root
    cut = json.loads(json.dumps(bundle))
    del cut["verificationMaterial"]["x509CertificateChain"]["certificates"][1:]
    with pytest.raises(SignatureError, match="does not chain"):
        verify_bundle(cut, trusted_roots=[root])


def test_certificate_without_signing_usage_is_refused(tmp_path: Path) -> None:
    model = _model(tmp_path)
    chain = write_ca_chain(tmp_path, leaf_can_sign=False)
    bundle = _bundle(ms_sign_certificate(model, chain, tmp_path / "model.sig"))
    root = x509.load_pem_x509_certificate(chain["root"].read_bytes())
    with pytest.raises(SignatureError, match="may not sign"):
        verify_bundle(bundle, trusted_roots=[root])
