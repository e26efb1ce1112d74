"""The enclave's coefficient-layout session: validates the plan's geometry and the data owner's
feature bound, counts ciphertexts, and refuses out-of-range (corrupted) homomorphic results."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tenseal as ts

from crypto.ckks import make_context
from enclave.codec import encode_arrays
from enclave.errors import RefinementError
from enclave.he import CoeffLayout, KeyHolderCkks
from enclave.refine import RefinementPlan, RefinementSession


@pytest.fixture(scope="module")
def secret_context() -> bytes:
    ctx = make_context("n8192-d3")
    return bytes(ctx.serialize(save_secret_key=True, save_galois_keys=False, save_relin_keys=False))


def session(secret_context: bytes, *, bound: float | None = 1.0, rows: int = 10, cols: int = 8) -> RefinementSession:
    rng = np.random.default_rng(0)
    model = encode_arrays(
        {"kind": "softmax", "result_key": os.urandom(32).hex()}, {"W": rng.normal(size=(8, 3)), "b": np.zeros(3)}
    )
    plan = RefinementPlan.from_dict(
        {
            "job_id": "j",
            "train_batches": [10, 10],
            "val_batches": [5],
            "dim": 8,
            "epochs": 1,
            "lr": 0.1,
            "seed": 2,
            "layout": "coeff",
            "coeff_batch": 10,
            "coeff_rows": rows,
            "coeff_cols": cols,
            "coeff_outputs": 3,
        }
    )
    meta = {} if bound is None else {"feature_bound": bound}
    lab = encode_arrays(meta, {"labels": rng.integers(0, 3, size=20)})
    val = encode_arrays(meta, {"labels": rng.integers(0, 3, size=5)})
    return RefinementSession(plan=plan, secret_context=secret_context, model=model, labels=lab, val_labels=val)


def test_refuses_bad_geometry_and_missing_bound(secret_context: bytes) -> None:
    with pytest.raises(RefinementError, match="feature bound"):
        session(secret_context, bound=None)
    with pytest.raises(RefinementError, match="feature bound"):
        session(secret_context, bound=1e6)
    with pytest.raises(RefinementError, match="coefficient layout"):
        session(secret_context, rows=400, cols=8)  # 400*8*3 > 8192: products would wrap
    with pytest.raises(RefinementError, match="layout"):
        RefinementPlan.from_dict(
            {
                "job_id": "j",
                "train_batches": [1],
                "val_batches": [1],
                "dim": 1,
                "epochs": 1,
                "lr": 0.1,
                "seed": 0,
                "layout": "diagonal",
            }
        )


def test_step_counts_parts_and_refuses_out_of_range(secret_context: bytes) -> None:
    s = session(secret_context)
    status = s.status()
    assert status["layout"] == "coeff" and status["train_grid"] == [1, 1]
    weights = s.weights()
    assert len(weights) == 1
    holder = KeyHolderCkks(context=ts.context_from(secret_context))
    geo = CoeffLayout(batch=10, dim=8, outputs=3, degree=8192, rows=10, cols=8)
    index = s.expected_batch()
    with pytest.raises(RefinementError, match="expected 1"):
        s.forward(index=index, parts=[])
    # a ciphertext whose "pre-activations" are far out of the product range is refused
    huge = np.full(8192, 1e3)
    with pytest.raises(RefinementError, match="out of range"):
        s.forward(index=index, parts=[holder.encrypt_coeffs_bytes(huge)])
    # a well-formed step goes through: the enclave returns one error ciphertext
    zero = np.zeros(8192)
    errors = s.forward(index=index, parts=[holder.encrypt_coeffs_bytes(zero)])
    assert len(errors) == geo.row_blocks
    new_weights = s.update(index=index, parts=[holder.encrypt_coeffs_bytes(zero)])
    assert len(new_weights) == geo.col_blocks and s.pos == 1
    assert s.stats.enclave_decrypt == 3 and s.stats.values_decrypted == 3 * 8192  # incl. the refused one
