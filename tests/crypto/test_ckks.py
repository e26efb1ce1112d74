"""CKKS presets, public-context export and the server-side loaders' refusals."""

from __future__ import annotations

import numpy as np
import pytest
import tenseal as ts

from crypto.ckks import (
    HE_STANDARD_MAX_MODULUS_BITS,
    PRESETS,
    CiphertextError,
    CkksPreset,
    ContextError,
    PresetError,
    context_parameters,
    load_ckks_vector,
    load_public_context,
    make_context,
    public_context_bytes,
)

PRESET = "n8192-d3"
LIMIT = 64 << 20


@pytest.fixture(scope="module")
def client_ctx() -> ts.Context:
    return make_context(PRESET, galois_steps=[1, 2, 16])


@pytest.fixture(scope="module")
def public_bytes(client_ctx: ts.Context) -> bytes:
    return public_context_bytes(client_ctx)


def test_presets_within_128_bit_bound() -> None:
    for preset in PRESETS.values():
        assert preset.total_modulus_bits <= HE_STANDARD_MAX_MODULUS_BITS[preset.poly_modulus_degree]
        preset.validate()
    too_big = CkksPreset(
        name="x",
        poly_modulus_degree=8192,
        coeff_mod_bit_sizes=(60, 60, 60, 60),
        global_scale_bits=40,
    )
    with pytest.raises(PresetError):
        too_big.validate()


def test_public_context_has_no_secret_and_only_requested_rotations(client_ctx: ts.Context, public_bytes: bytes) -> None:
    server = load_public_context(public_bytes, preset=PRESET, max_bytes=LIMIT)
    assert not server.has_secret_key() and server.has_galois_keys() and server.has_relin_keys()
    assert context_parameters(server) == (8192, PRESETS[PRESET].coeff_mod_bit_sizes)
    # Three rotation keys are a small fraction of TenSEAL's default set.
    full = client_ctx.copy()
    full.generate_galois_keys()
    default = full.serialize(save_secret_key=False, save_galois_keys=True)
    assert len(public_bytes) * 3 < len(default)
    # The rotation keys actually work: sum over 4096 slots needs powers of two only.
    server_all = load_public_context(
        public_context_bytes(client_ctx, galois_steps=[1 << k for k in range(12)]), max_bytes=LIMIT
    )
    x = np.linspace(-1, 1, 4096)
    enc = ts.ckks_vector_from(server_all, ts.ckks_vector(client_ctx, x.tolist()).serialize())
    total = ts.ckks_vector_from(client_ctx, enc.sum().serialize()).decrypt()[0]
    assert abs(total - x.sum()) < 1e-3


def test_secret_key_context_refused(client_ctx: ts.Context) -> None:
    with pytest.raises(ContextError, match="private"):
        load_public_context(client_ctx.serialize(save_secret_key=True), max_bytes=LIMIT)


def test_malformed_truncated_and_wrong_preset_contexts_refused(public_bytes: bytes) -> None:
    for bad in (b"", b"\xff" * 64, public_bytes[: len(public_bytes) // 2], public_bytes[:-3]):
        with pytest.raises(ContextError):
            load_public_context(bad, preset=PRESET, max_bytes=LIMIT)
    with pytest.raises(ContextError, match="do not match"):
        load_public_context(public_bytes, preset="n16384-d8", max_bytes=LIMIT)
    with pytest.raises(ContextError, match="limit"):
        load_public_context(public_bytes, preset=PRESET, max_bytes=1000)


def test_ciphertext_validation(client_ctx: ts.Context, public_bytes: bytes) -> None:
    server = load_public_context(public_bytes, preset=PRESET, max_bytes=LIMIT)
    data = ts.ckks_vector(client_ctx, [0.5, -1.0, 2.0]).serialize()
    vec = load_ckks_vector(server, data, expected_size=3, max_bytes=1 << 22)
    assert vec.size() == 3
    for bad in (b"", b"junk", data[: len(data) // 2], data[:-7]):
        with pytest.raises(CiphertextError):
            load_ckks_vector(server, bad, expected_size=3, max_bytes=1 << 22)
    with pytest.raises(CiphertextError, match="expected 4"):
        load_ckks_vector(server, data, expected_size=4, max_bytes=1 << 22)
    with pytest.raises(CiphertextError, match="limit"):
        load_ckks_vector(server, data, expected_size=3, max_bytes=100)
    other = make_context("n16384-d8")
    with pytest.raises(CiphertextError):
        load_ckks_vector(server, ts.ckks_vector(other, [1.0]).serialize(), expected_size=1, max_bytes=1 << 24)
