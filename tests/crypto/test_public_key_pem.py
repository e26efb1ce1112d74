"""One PEM public-key parser for both key kinds (Ed25519 signing keys, ECDSA model-signing
keys) and the platform key of provisioning."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from crypto.errors import KeyFormatError
from crypto.keys import key_id, load_public_key_pem, parse_public_key_pem, public_key_pem
from crypto.provisioning import ProvisioningError, _platform_public_key
from crypto.sigstore import ec_public_key_pem, load_ec_public_key_pem

ED = Ed25519PrivateKey.generate().public_key()
EC = ec.generate_private_key(ec.SECP256R1()).public_key()


def test_both_key_kinds_parse_and_each_loader_keeps_its_algorithm() -> None:
    ed_pem, ec_pem = public_key_pem(ED), ec_public_key_pem(EC)
    assert isinstance(parse_public_key_pem(ed_pem), type(ED))
    assert isinstance(parse_public_key_pem(ec_pem.encode()), ec.EllipticCurvePublicKey)
    assert key_id(load_public_key_pem(ed_pem)) == key_id(ED)
    assert load_ec_public_key_pem(ec_pem).public_numbers() == EC.public_numbers()
    with pytest.raises(KeyFormatError, match="not Ed25519"):
        load_public_key_pem(ec_pem)
    with pytest.raises(KeyFormatError, match="not ECDSA"):
        load_ec_public_key_pem(ed_pem)
    assert key_id(_platform_public_key(ed_pem)) == key_id(ED)
    with pytest.raises(ProvisioningError, match="not Ed25519"):
        _platform_public_key(ec_pem)


@pytest.mark.parametrize(
    "bad, message",
    [
        ("-----BEGIN PUBLIC KEY-----\nAAAA\n", "not a PEM"),
        ("-----BEGIN PUBLIC KEY-----\n\u00e9\n", "non-ASCII"),
        (b"x" * (64 * 1024 + 1), "implausibly large"),
        (12345, "str or bytes"),
    ],
)
def test_malformed_pem_is_a_key_format_error_for_every_loader(bad: object, message: str) -> None:
    for loader in (parse_public_key_pem, load_public_key_pem, load_ec_public_key_pem):
        with pytest.raises(KeyFormatError, match=message):
            loader(bad)  # type: ignore[operator]
