"""Coefficient layout: one ciphertext product computes a block of a matrix product."""

from __future__ import annotations

import time

import numpy as np
import pytest

from appliance.confidential.parties import CKKS_PRESET, create_ckks_context, public_context
from crypto.ckks import load_public_context
from enclave.he import CoeffLayout, HostEvaluator, KeyHolderCkks, pack_blobs, unpack_blobs


@pytest.fixture(scope="module")
def keys() -> tuple[KeyHolderCkks, HostEvaluator]:
    ctx = create_ckks_context()
    pub = load_public_context(public_context(ctx), preset=CKKS_PRESET, max_bytes=256 << 20)
    return KeyHolderCkks(context=ctx), HostEvaluator(context=pub)


def test_plan_minimises_ciphertexts_per_step() -> None:
    geo = CoeffLayout.plan(batch=64, dim=64, outputs=10, degree=8192)
    assert geo.row_blocks + geo.col_blocks == 5 and geo.row_blocks * geo.col_blocks == 6
    assert geo.rows * geo.cols * geo.outputs + geo.cols - 1 <= 8192
    small = CoeffLayout.plan(batch=64, dim=16, outputs=10, degree=8192)
    assert (small.row_blocks, small.col_blocks) == (2, 1)
    with pytest.raises(ValueError):
        CoeffLayout(batch=64, dim=64, outputs=10, degree=8192, rows=64, cols=64)


def test_packing_roundtrip_in_plaintext() -> None:
    """The packing maths with exact negacyclic convolutions (no encryption)."""
    rng = np.random.default_rng(0)
    geo = CoeffLayout.plan(batch=30, dim=13, outputs=4, degree=1024)
    X, W, E = rng.normal(size=(27, 13)), rng.normal(size=(13, 3)), rng.normal(size=(27, 3))

    def conv(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        full = np.convolve(a, b)
        out = full[: geo.degree].copy()
        out[: full.size - geo.degree] -= full[geo.degree :]
        return out

    xs, ws, es = geo.pack_x(X), geo.pack_w(W), geo.pack_e(E)
    S, F = geo.row_blocks, geo.col_blocks
    z = [sum(conv(xs[s * F + f], ws[f]) for f in range(F)) for s in range(S)]
    g = [sum(conv(xs[s * F + f], es[s]) for s in range(S)) for f in range(F)]
    np.testing.assert_allclose(geo.unpack_z(z, 27, 3), X @ W, atol=1e-9)
    np.testing.assert_allclose(geo.unpack_g(g, 3), X.T @ E, atol=1e-9)


def test_encrypted_products_match_plaintext(keys: tuple[KeyHolderCkks, HostEvaluator]) -> None:
    holder, host = keys
    rng = np.random.default_rng(1)
    geo = CoeffLayout.plan(batch=64, dim=64, outputs=10, degree=2 * holder.slots)
    # operands of magnitude ~1, as the enclave scales them (RefinementSession._operand_scale)
    X, W, E = rng.random((64, 64)), rng.normal(size=(64, 10)) / 8, rng.uniform(-1, 1, size=(64, 10))
    xs = [host.load(holder.encrypt_coeffs_bytes(v)) for v in geo.pack_x(X)]
    ws = [host.load(holder.encrypt_coeffs_bytes(v)) for v in geo.pack_w(W)]
    es = [host.load(holder.encrypt_coeffs_bytes(v)) for v in geo.pack_e(E)]
    S, F = geo.row_blocks, geo.col_blocks
    from enclave.he import ciphertext_to_bytes

    z = [
        holder.decrypt_coeffs_bytes(ciphertext_to_bytes(host.dot([(xs[s * F + f], ws[f]) for f in range(F)])))
        for s in range(S)
    ]
    g = [
        holder.decrypt_coeffs_bytes(ciphertext_to_bytes(host.dot([(xs[s * F + f], es[s]) for s in range(S)])))
        for f in range(F)
    ]
    np.testing.assert_allclose(geo.unpack_z(z, 64, 10), X @ W, atol=1e-3)
    np.testing.assert_allclose(geo.unpack_g(g, 10), X.T @ E, atol=1e-3)
    assert host.counts["rotate"] == 0 and host.counts["ct_mul"] == 2 * S * F


def test_blob_bundles_are_checked() -> None:
    blobs = [b"a" * 3, b"bb", b"c"]
    assert unpack_blobs(pack_blobs(blobs)) == blobs
    for bad in (b"", b"XXXX\x00\x00\x00\x01", pack_blobs(blobs)[:-1], pack_blobs(blobs) + b"x"):
        with pytest.raises(ValueError):
            unpack_blobs(bad)


def test_zero_pool_gives_fresh_correct_encryptions() -> None:
    holder = KeyHolderCkks(context=create_ckks_context())
    holder.start_zero_pool(size=3)
    deadline = time.monotonic() + 20
    while len(holder._pool) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(holder._pool) == 3
    a = np.zeros(2 * holder.slots)
    a[:100] = np.linspace(-1, 1, 100)
    with holder.working():  # no refill while busy
        first, second = holder.encrypt_coeffs_bytes(a), holder.encrypt_coeffs_bytes(a)
        assert len(holder._pool) == 1
    assert first != second  # each pooled zero is used once
    for blob in (first, second):
        np.testing.assert_allclose(holder.decrypt_coeffs_bytes(blob), a, atol=1e-5)
