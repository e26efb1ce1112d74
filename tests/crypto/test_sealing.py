"""Sealing: same enclave unseals; MRENCLAVE policy breaks on a measurement change; MRSIGNER
policy survives an SVN bump (not a downgrade); any altered byte fails."""

from __future__ import annotations

import hashlib
import os

import pytest

from crypto.sealing import (
    SealError,
    SealFormatError,
    SealIdentity,
    SealIdentityMismatchError,
    SealPolicy,
    SealSvnError,
    seal,
    sealed_header,
    unseal,
)

ROOT = hashlib.sha256(b"platform-root").digest()
SIGNER = hashlib.sha256(b"signer").hexdigest()


def identity(code: bytes = b"enclave-v1", svn: int = 1, signer: str = SIGNER) -> SealIdentity:
    return SealIdentity(
        mrenclave=hashlib.sha256(code).hexdigest(),
        mrsigner=signer,
        isv_prod_id=7,
        isv_svn=svn,
        debug=False,
    )


@pytest.mark.parametrize("policy", list(SealPolicy))
def test_unseals_in_same_enclave(policy: SealPolicy) -> None:
    data = os.urandom(300)
    blob = seal(data, root_secret=ROOT, identity=identity(), policy=policy, associated_data=b"job")
    assert data not in blob
    assert unseal(blob, root_secret=ROOT, identity=identity(), associated_data=b"job") == data
    assert sealed_header(blob)["policy"] == policy.value


def test_mrenclave_policy_fails_after_code_change() -> None:
    blob = seal(b"state", root_secret=ROOT, identity=identity(), policy=SealPolicy.MRENCLAVE)
    with pytest.raises(SealIdentityMismatchError, match="MRENCLAVE"):
        unseal(blob, root_secret=ROOT, identity=identity(code=b"enclave-v1!"))
    with pytest.raises(SealIdentityMismatchError):
        unseal(blob, root_secret=ROOT, identity=identity(svn=2))


def test_mrsigner_policy_survives_svn_bump_but_not_downgrade() -> None:
    blob = seal(b"state", root_secret=ROOT, identity=identity(svn=1), policy=SealPolicy.MRSIGNER)
    # new code, higher SVN, same signer: unseals
    assert unseal(blob, root_secret=ROOT, identity=identity(code=b"enclave-v2", svn=2)) == b"state"
    newer = seal(b"new", root_secret=ROOT, identity=identity(svn=3), policy=SealPolicy.MRSIGNER)
    with pytest.raises(SealSvnError):
        unseal(newer, root_secret=ROOT, identity=identity(svn=2))
    other_signer = identity(svn=2, signer=hashlib.sha256(b"attacker").hexdigest())
    with pytest.raises(SealIdentityMismatchError, match="signer"):
        unseal(blob, root_secret=ROOT, identity=other_signer)


def test_other_platform_or_aad_fails() -> None:
    blob = seal(
        b"state",
        root_secret=ROOT,
        identity=identity(),
        policy=SealPolicy.MRSIGNER,
        associated_data=b"job-1",
    )
    with pytest.raises(SealIdentityMismatchError):
        unseal(blob, root_secret=os.urandom(32), identity=identity(), associated_data=b"job-1")
    with pytest.raises(SealIdentityMismatchError):
        unseal(blob, root_secret=ROOT, identity=identity(), associated_data=b"job-2")


@pytest.mark.parametrize("policy", list(SealPolicy))
def test_any_altered_byte_fails(policy: SealPolicy) -> None:
    blob = seal(b"secret state!", root_secret=ROOT, identity=identity(svn=2), policy=policy)
    for i in range(len(blob)):
        altered = bytearray(blob)
        altered[i] ^= 0x01
        with pytest.raises(SealError):
            unseal(bytes(altered), root_secret=ROOT, identity=identity(svn=2))
    with pytest.raises(SealFormatError):
        unseal(blob[:20], root_secret=ROOT, identity=identity(svn=2))
