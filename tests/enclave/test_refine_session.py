"""The enclave-side refinement state machine refuses inconsistent or out-of-order requests
(a malicious host cannot replay, skip or reorder steps, or mismatch labels)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tenseal as ts

from crypto.ckks import make_context
from enclave.codec import encode_arrays
from enclave.errors import RefinementError
from enclave.he import KeyHolderCkks, RowLayout
from enclave.refine import RefinementPlan, RefinementSession, batch_order


@pytest.fixture(scope="module")
def secret_context() -> bytes:
    ctx = make_context("n8192-d3")
    return bytes(ctx.serialize(save_secret_key=True, save_galois_keys=False, save_relin_keys=False))


def session(secret_context: bytes, *, labels: int = 20, kind: str = "softmax") -> RefinementSession:
    rng = np.random.default_rng(0)
    model = encode_arrays(
        {"kind": kind, "result_key": os.urandom(32).hex()},
        {"W": rng.normal(size=(8, 3)), "b": np.zeros(3)},
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
        }
    )
    lab = encode_arrays({}, {"labels": rng.integers(0, 3, size=labels)})
    val = encode_arrays({}, {"labels": rng.integers(0, 3, size=5)})
    return RefinementSession(plan=plan, secret_context=secret_context, model=model, labels=lab, val_labels=val)


def test_refuses_bad_plans_and_payloads(secret_context: bytes) -> None:
    with pytest.raises(RefinementError, match="label counts"):
        session(secret_context, labels=19)
    with pytest.raises(RefinementError, match="kind"):
        session(secret_context, kind="cnn")
    with pytest.raises(RefinementError):
        RefinementPlan.from_dict(
            {
                "job_id": "j",
                "train_batches": [],
                "val_batches": [1],
                "dim": 8,
                "epochs": 1,
                "lr": 0.1,
                "seed": 0,
            }
        )


def test_refuses_out_of_order_steps(secret_context: bytes) -> None:
    s = session(secret_context)
    holder = KeyHolderCkks(context=ts.context_from(secret_context))
    layout = RowLayout.for_dim(8, slots=holder.slots)
    z = [holder.encrypt_bytes(layout.pack_rows(np.zeros((10, 8)))) for _ in range(3)]
    first = batch_order(2, 0, 2)[0]
    with pytest.raises(RefinementError, match="out-of-order"):
        s.forward(index=1 - first, parts=z)
    with pytest.raises(RefinementError, match="without a matching forward"):
        s.update(index=first, parts=z)
    with pytest.raises(RefinementError, match="expected 3"):
        s.forward(index=first, parts=z[:2])
    err = s.forward(index=first, parts=z)
    assert len(err) == 3
    with pytest.raises(RefinementError, match="twice"):
        s.forward(index=first, parts=z)
    with pytest.raises(RefinementError, match="middle of a step"):
        s.checkpoint_bytes()
    with pytest.raises(RefinementError, match="not finished"):
        s.finish()
    with pytest.raises(RefinementError, match="incomplete"):
        s.evaluate_done()
