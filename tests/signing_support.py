"""Test helpers for model signatures: ECDSA keys, a real CA chain, and the real OpenSSF
``model_signing`` package (its Python API, in-process) signing and verifying."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def write_ec_key(folder: Path, name: str, curve: ec.EllipticCurve | None = None) -> tuple[Path, Path]:
    """Write a fresh ECDSA private key and its public key (PEM); return both paths."""
    key = ec.generate_private_key(curve or ec.SECP256R1())
    private = folder / f"{name}.pem"
    public = folder / f"{name}.pub"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def _load_private(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def _certificate(subject: str, public: ec.EllipticCurvePublicKey, issuer: str,
                 issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool,
                 digital_signature: bool = True) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=digital_signature, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False,
            key_cert_sign=ca, crl_sign=ca, encipher_only=False, decipher_only=False),
            critical=True)
    )
    return builder.sign(issuer_key, hashes.SHA256())


def write_ca_chain(folder: Path, *, prefix: str = "", leaf_can_sign: bool = True) -> dict[str, Path]:
    """Root CA -> intermediate CA -> leaf signing certificate, as PEM files; returns the paths
    of ``root``, ``intermediate``, ``leaf`` (certificates) and ``leaf_key``."""
    root_key = ec.generate_private_key(ec.SECP256R1())
    inter_key = ec.generate_private_key(ec.SECP256R1())
    leaf_key_path, _ = write_ec_key(folder, f"{prefix}leaf")
    leaf_key = _load_private(leaf_key_path)
    root = _certificate(f"{prefix}Test Root CA", root_key.public_key(), f"{prefix}Test Root CA",
                        root_key, ca=True)
    inter = _certificate(f"{prefix}Test Intermediate", inter_key.public_key(),
                         f"{prefix}Test Root CA", root_key, ca=True)
    leaf = _certificate(f"{prefix}model-release@example.org", leaf_key.public_key(),
                        f"{prefix}Test Intermediate", inter_key, ca=False,
                        digital_signature=leaf_can_sign)
    paths = {}
    for name, cert in (("root", root), ("intermediate", inter), ("leaf", leaf)):
        paths[name] = folder / f"{prefix}{name}.crt"
        paths[name].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["leaf_key"] = leaf_key_path
    return paths


def ms_sign_key(model: Path, private_key: Path, signature: Path) -> Path:
    """Sign ``model`` with the real model_signing (``sign key``); return the model.sig path."""
    import model_signing

    model_signing.signing.Config().use_elliptic_key_signer(private_key=private_key).sign(
        model, signature)
    return signature


def ms_sign_certificate(model: Path, chain: dict[str, Path], signature: Path) -> Path:
    """Sign ``model`` with the real model_signing (``sign certificate``)."""
    import model_signing

    model_signing.signing.Config().use_certificate_signer(
        private_key=chain["leaf_key"], signing_certificate=chain["leaf"],
        certificate_chain=[chain["intermediate"]]).sign(model, signature)
    return signature


def ms_verify_key(model: Path, public_key: Path, signature: Path) -> None:
    """Verify with the real model_signing (``verify key``); raises ValueError on failure."""
    import model_signing

    model_signing.verifying.Config().use_elliptic_key_verifier(public_key=public_key).verify(
        model, signature)
