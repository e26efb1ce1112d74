"""The enclave as a real OS process: measurement, quotes, code changes, debug, sealing across
restarts and SVN bumps, and protocol errors."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from crypto.provisioning import (
    DebugEnclaveError,
    MeasurementNotAllowedError,
    provision,
    verify_quote,
)
from crypto.sealing import SealPolicy
from enclave.errors import EnclaveLaunchError, EnclaveRemoteError, PlatformError
from enclave.host import EnclaveClient, default_config
from enclave.measurement import measure_enclave, package_dir
from enclave.platform import create_platform


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("platform")
    create_platform(directory)
    return directory


@pytest.fixture(scope="module")
def enclave(platform: Path):  # type: ignore[no-untyped-def]
    client = EnclaveClient.launch(platform_dir=platform)
    yield client
    client.close()


def _quote(client: EnclaveClient) -> tuple[bytes, bytes]:
    nonce = os.urandom(32)
    return client.get_quote(nonce), nonce


def test_identity_and_quote_verify(enclave: EnclaveClient, platform: Path) -> None:
    info = create_platform(platform)
    ident = enclave.identity
    assert ident["simulated"] is True and ident["debug"] is False
    assert ident["mrenclave"] == measure_enclave(package_dir(), enclave.config)
    quote, nonce = _quote(enclave)
    vq = verify_quote(
        quote,
        platform_key=info.attestation_public_key,
        allowed_measurements={ident["mrenclave"]},
        nonce=nonce,
        allow_simulated=True,
    )
    assert vq.enclave_public_key.hex() == ident["enclave_public_key"]


def test_one_changed_byte_changes_measurement_and_provisioning_is_refused(
    enclave: EnclaveClient, platform: Path, repository_copy: Path
) -> None:
    copy = repository_copy / "enclave"
    source = (copy / "refine.py").read_bytes()
    at = source.index(b"Liu & Zhang")
    flipped = bytearray(source)
    flipped[at] ^= 0x20  # 'L' -> 'l' inside a docstring: still valid Python
    (copy / "refine.py").write_bytes(bytes(flipped))
    modified = EnclaveClient.launch(platform_dir=platform, package=copy)
    try:
        assert modified.identity["mrenclave"] != enclave.identity["mrenclave"]
        assert modified.identity["mrsigner"] == enclave.identity["mrsigner"]
        quote, nonce = _quote(modified)
        sent: list[object] = []
        with pytest.raises(MeasurementNotAllowedError):
            provision(
                quote,
                platform_key=create_platform(platform).attestation_public_key,
                allowed_measurements={enclave.identity["mrenclave"]},
                nonce=nonce,
                secrets={"model": b"weights"},
                send=sent.append,
                allow_simulated=True,
            )
        assert sent == []
    finally:
        modified.close()


def test_debug_enclave_refused(platform: Path) -> None:
    client = EnclaveClient.launch(platform_dir=platform, config=default_config(platform, debug=True))
    try:
        quote, nonce = _quote(client)
        with pytest.raises(DebugEnclaveError):
            verify_quote(
                quote,
                platform_key=create_platform(platform).attestation_public_key,
                allowed_measurements={client.identity["mrenclave"]},
                nonce=nonce,
                allow_simulated=True,
            )
    finally:
        client.close()


def test_sealing_across_restart_and_svn_bump(enclave: EnclaveClient, platform: Path) -> None:
    by_enclave = enclave.seal(b"state-1", policy=SealPolicy.MRENCLAVE)
    by_signer = enclave.seal(b"state-1", policy=SealPolicy.MRSIGNER)
    restarted = EnclaveClient.launch(platform_dir=platform)
    bumped = EnclaveClient.launch(platform_dir=platform, config=default_config(platform, isv_svn=2))
    try:
        assert restarted.unseal_check(by_enclave)["length"] == 7
        assert bumped.identity["mrenclave"] != enclave.identity["mrenclave"]
        with pytest.raises(EnclaveRemoteError) as info:
            bumped.unseal_check(by_enclave)
        assert info.value.code == "SealIdentityMismatchError"
        assert bumped.unseal_check(by_signer)["length"] == 7
        newer = bumped.seal(b"state-2", policy=SealPolicy.MRSIGNER)
        with pytest.raises(EnclaveRemoteError) as info:
            restarted.unseal_check(newer)
        assert info.value.code == "SealSvnError"
    finally:
        restarted.close()
        bumped.close()


def test_sigstruct_and_platform_checks(platform: Path, tmp_path: Path) -> None:
    other = tmp_path / "other-platform"
    create_platform(other)
    # a config naming a signer whose key the launcher does not have cannot be signed
    with pytest.raises(EnclaveLaunchError):
        EnclaveClient.launch(platform_dir=platform, config=default_config(other))
    with pytest.raises(PlatformError):
        EnclaveClient.launch(platform_dir=tmp_path / "missing")


def test_protocol_errors_are_clean(enclave: EnclaveClient) -> None:
    with pytest.raises(EnclaveRemoteError, match="unknown operation"):
        enclave.call("no-such-op")
    with pytest.raises(EnclaveRemoteError) as info:
        enclave.call("refine.weights", {"job_id": "nope"})
    assert info.value.code == "RefinementError"
    with pytest.raises(EnclaveRemoteError):
        enclave.call("quote", {"nonce": "00"})
    assert enclave.is_alive()


def test_oversized_frame_is_refused(platform: Path) -> None:
    client = EnclaveClient.launch(platform_dir=platform, config=default_config(platform, max_message_bytes=4096))
    try:
        with pytest.raises(Exception, match="exceeds"):
            client.call("seal", {}, [b"x" * 5000])  # refused before sending
        stdin = client._process.stdin  # noqa: SLF001 - a raw oversized frame from a bad host
        assert stdin is not None
        stdin.write(b"ENC1" + struct.pack(">IQ", 2, 10**9) + b"{}")
        stdin.flush()
        from enclave.protocol import read_frame

        assert client._process.stdout is not None  # noqa: SLF001
        header, _, _ = read_frame(client._process.stdout, max_body=4096)  # noqa: SLF001
        assert header["ok"] is False and "exceeds" in header["message"]
    finally:
        client.kill()


def test_sealed_enclave_key_survives_restart(platform: Path, tmp_path: Path) -> None:
    from crypto.provisioning import wrap_key_for_enclave

    state = tmp_path / "enclave-state"
    plan = {"job_id": "j", "train_batches": [1], "val_batches": [1], "dim": 2, "epochs": 1, "lr": 0.1, "seed": 0}
    labels = ["ckks-secret", "model", "train-labels", "val-labels"]
    first = EnclaveClient.launch(platform_dir=platform, state_dir=state)
    try:
        quote, nonce = _quote(first)
        vq = verify_quote(
            quote,
            platform_key=create_platform(platform).attestation_public_key,
            allowed_measurements={first.identity["mrenclave"]},
            nonce=nonce,
            allow_simulated=True,
        )
    finally:
        first.kill()
    wraps = [wrap_key_for_enclave(vq, b"not a context", label=label) for label in labels]
    again = EnclaveClient.launch(platform_dir=platform, state_dir=state)
    ephemeral = EnclaveClient.launch(platform_dir=platform)
    try:
        assert again.identity["enclave_public_key"] == first.identity["enclave_public_key"]
        with pytest.raises(EnclaveRemoteError) as info:  # unwrapped, then refused as content
            again.call("refine.start", {"plan": plan}, wraps)
        assert info.value.code == "RefinementError"
        with pytest.raises(EnclaveRemoteError) as info:
            ephemeral.call("refine.start", {"plan": plan}, wraps)
        assert info.value.code == "UnwrapError"
    finally:
        again.close()
        ephemeral.close()
