"""The one SEAL file bridge: objects round-trip through bytes, bad bytes are a ValueError, and
no serialized object is left in the scratch directory after a transfer."""

from __future__ import annotations

import os

import pytest
import tenseal as ts
import tenseal.sealapi as seal

from crypto.seal_bridge import SealBridgeError, scratch_path, seal_from_bytes, seal_to_bytes


@pytest.fixture(scope="module")
def context() -> ts.Context:
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, 4096, coeff_mod_bit_sizes=[40, 20, 40])
    ctx.global_scale = 2**20
    return ctx


def test_ciphertexts_and_secret_keys_round_trip_and_leave_nothing_on_disk(context: ts.Context) -> None:
    seal_context = context.seal_context().data
    ct = ts.ckks_vector(context, [1.0, 2.0]).ciphertext()[0]
    data = seal_to_bytes(ct)
    again = seal_from_bytes(seal.Ciphertext(), data, seal_context, max_bytes=len(data))
    assert seal_to_bytes(again) == data
    secret = seal_to_bytes(context.secret_key().data)
    assert seal_to_bytes(seal_from_bytes(seal.SecretKey(), secret, seal_context, max_bytes=1 << 20)) == secret
    directory = os.path.dirname(scratch_path())
    assert os.listdir(directory) == [] and (os.stat(directory).st_mode & 0o077) == 0


def test_bad_bytes_are_a_value_error(context: ts.Context) -> None:
    seal_context = context.seal_context().data
    data = seal_to_bytes(ts.ckks_vector(context, [1.0]).ciphertext()[0])
    for bad, limit in ((b"", 10), (data, len(data) - 1), (b"\x00" * 64, 1 << 20), (data[:-100], 1 << 20)):
        with pytest.raises(SealBridgeError) as info:
            seal_from_bytes(seal.Ciphertext(), bad, seal_context, max_bytes=limit)
        assert isinstance(info.value, ValueError)
    assert os.listdir(os.path.dirname(scratch_path())) == []
