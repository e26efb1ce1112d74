"""Coefficient-packed confidential refinement (layout="coeff") end to end: same accuracy and
weights as plaintext refinement, no rotations, five ciphertexts each way per 64-sample step,
and the data owner's feature bound never reaches the host in clear."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier
from support import attest_enclave

from appliance.confidential import (
    ConfidentialError,
    EncryptedDataset,
    encrypt_dataset,
    open_refined_model,
    pack_mlp_model,
    pack_softmax_model,
    plaintext_refinement,
    run_refinement,
    wrap_ckks_secret,
    wrap_model,
)
from enclave.host import EnclaveClient

LR = 0.5


@pytest.fixture(scope="module")
def digits(digits_scaled: tuple[np.ndarray, np.ndarray]) -> dict[str, np.ndarray]:
    X, y = digits_scaled
    return {
        "X_owner": X[:200],
        "y_owner": y[:200],
        "X": X[200:456],
        "y": y[200:456],
        "X_val": X[600:728],
        "y_val": y[600:728],
    }


@pytest.fixture
def ckks_pair(ckks: Any, ckks_public: bytes) -> tuple[Any, bytes]:
    """The session's CKKS context and its public part, as ``refine`` takes them."""
    return ckks, ckks_public


def refine(
    model: dict[str, np.ndarray], digits: dict[str, np.ndarray], platform: Path,
    ckks_pair: tuple[Any, bytes], *, job_id: str
) -> tuple[Any, dict[str, np.ndarray], EncryptedDataset]:
    ctx, pub = ckks_pair
    key = os.urandom(32)
    packed = (
        pack_mlp_model(model["W1"], model["b1"], model["W"], model["b"], result_key=key)
        if "W1" in model
        else pack_softmax_model(model["W"], model["b"], result_key=key)
    )
    with EnclaveClient.launch(platform_dir=platform) as client:
        vq = attest_enclave(client, platform)
        train = encrypt_dataset(
            ctx, vq, digits["X"], digits["y"], num_classes=10, batch_size=64, split="train", layout="coeff"
        )
        val = encrypt_dataset(
            ctx, vq, digits["X_val"], digits["y_val"], num_classes=10, batch_size=64, split="val", layout="coeff"
        )
        result = run_refinement(
            enclave=client,
            job_id=job_id,
            public_context=pub,
            train=train,
            validation=val,
            model_blob=wrap_model(vq, packed),
            ckks_secret_blob=wrap_ckks_secret(ctx, vq),
            epochs=1,
            lr=LR,
            seed=4,
        )
    _, arrays = open_refined_model(result.refined_model, result_key=key, job_id=job_id)
    return result, arrays, train


def plain(model: dict[str, np.ndarray], digits: dict[str, np.ndarray]) -> Any:
    return plaintext_refinement(
        model=model,
        X=digits["X"],
        y=digits["y"],
        X_val=digits["X_val"],
        y_val=digits["y_val"],
        batch_size=64,
        epochs=1,
        lr=LR,
        seed=4,
    )


def test_softmax_coeff_layout_matches_plaintext(
    digits: dict[str, np.ndarray], platform: Path, ckks_pair: tuple[Any, bytes]
) -> None:
    owner = plaintext_refinement(
        model={"W": np.zeros((64, 10)), "b": np.zeros(10)},
        X=digits["X_owner"],
        y=digits["y_owner"],
        X_val=digits["X_val"],
        y_val=digits["y_val"],
        batch_size=50,
        epochs=1,
        lr=0.3,
        seed=1,
    )
    model = {"W": owner.W, "b": owner.b}
    result, arrays, train = refine(model, digits, platform, ckks_pair, job_id="coeff-softmax")
    reference = plain(model, digits)
    assert abs(result.final_accuracy - reference.accuracy_history[-1]) <= 0.01
    assert np.abs(arrays["W"] - reference.W).max() < 1e-3 and np.abs(arrays["b"] - reference.b).max() < 1e-3
    steps = len(train.batch_sizes)  # 4 batches of 64: 2 sample blocks x 3 feature blocks (or 3 x 2)
    assert result.host_counts["rotate"] == 0
    # per step: 5 products of each kind decrypted (+ validation), 5 ciphertexts encrypted
    val_batches = 2
    assert result.enclave_counts["enclave_decrypt"] == steps * 5 + 2 * val_batches * 3
    assert (
        result.enclave_counts["enclave_encrypt"] == (steps + 1) * 2 + steps * 3
        or result.enclave_counts["enclave_encrypt"] == (steps + 1) * 3 + steps * 2
    )
    # the host-visible header carries the layout geometry but not the feature bound
    header = train.to_bytes()[:600]
    assert b"coeff" in header and b"feature_bound" not in train.to_bytes()
    again = EncryptedDataset.from_bytes(train.to_bytes())
    assert (again.layout, again.geometry, again.features) == (train.layout, train.geometry, train.features)


def test_mlp_last_layer_coeff_layout_matches_plaintext(
    digits: dict[str, np.ndarray], platform: Path, ckks_pair: tuple[Any, bytes]
) -> None:
    mlp = MLPClassifier(hidden_layer_sizes=(16,), max_iter=300, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        mlp.fit(digits["X_owner"], digits["y_owner"])
    model = {"W1": mlp.coefs_[0], "b1": mlp.intercepts_[0], "W": mlp.coefs_[1], "b": mlp.intercepts_[1]}
    result, arrays, _ = refine(model, digits, platform, ckks_pair, job_id="coeff-mlp")
    reference = plain(model, digits)
    assert abs(result.final_accuracy - reference.accuracy_history[-1]) <= 0.01
    assert np.abs(arrays["W"] - reference.W).max() < 1e-3
    assert np.array_equal(arrays["W1"], model["W1"])
    assert result.host_counts["rotate"] == 0 and result.kind == "mlp"


def test_coeff_layout_refuses_mixed_layouts_and_huge_features(
    digits: dict[str, np.ndarray], platform: Path, ckks_pair: tuple[Any, bytes]
) -> None:
    ctx, pub = ckks_pair
    with EnclaveClient.launch(platform_dir=platform) as client:
        vq = attest_enclave(client, platform)
        with pytest.raises(ConfidentialError, match="256"):
            encrypt_dataset(
                ctx,
                vq,
                digits["X"][:8] * 1000,
                digits["y"][:8],
                num_classes=10,
                batch_size=8,
                split="train",
                layout="coeff",
            )
        with pytest.raises(ConfidentialError, match="layout"):
            encrypt_dataset(
                ctx,
                vq,
                digits["X"][:8],
                digits["y"][:8],
                num_classes=10,
                batch_size=8,
                split="train",
                layout="diagonal",
            )
        coeff = encrypt_dataset(
            ctx, vq, digits["X"][:8], digits["y"][:8], num_classes=10, batch_size=8, split="train", layout="coeff"
        )
        rows = encrypt_dataset(ctx, vq, digits["X"][:8], digits["y"][:8], num_classes=10, batch_size=8, split="val")
        with pytest.raises(ConfidentialError, match="layouts"):
            run_refinement(
                enclave=client,
                job_id="mixed",
                public_context=pub,
                train=coeff,
                validation=rows,
                model_blob=b"x",
                ckks_secret_blob=b"y",
                epochs=1,
                lr=LR,
                seed=0,
            )


def test_coeff_layout_killed_enclave_resumes_from_sealed_state(
    digits: dict[str, np.ndarray], platform: Path, ckks_pair: tuple[Any, bytes]
) -> None:
    import signal

    from appliance.confidential import RefinementInterrupted, RefinementProgress

    ctx, pub = ckks_pair
    X, y, Xv, yv = digits["X"][:192], digits["y"][:192], digits["X_val"][:64], digits["y_val"][:64]
    rng = np.random.default_rng(3)
    W0, b0 = rng.normal(size=(64, 10)) * 0.1, np.zeros(10)
    key = os.urandom(32)
    client = EnclaveClient.launch(platform_dir=platform)
    vq = attest_enclave(client, platform)
    train = encrypt_dataset(ctx, vq, X, y, num_classes=10, batch_size=64, split="train", layout="coeff")
    val = encrypt_dataset(ctx, vq, Xv, yv, num_classes=10, batch_size=64, split="val", layout="coeff")

    def kill_in_second_epoch(event: RefinementProgress) -> None:
        if event.epoch == 1 and event.step == 1:
            os.kill(client.pid, signal.SIGKILL)

    common: dict[str, Any] = dict(
        job_id="coeff-kill", public_context=pub, train=train, validation=val, epochs=2, lr=LR, seed=9
    )
    with pytest.raises(RefinementInterrupted) as info:
        run_refinement(
            enclave=client,
            model_blob=wrap_model(vq, pack_softmax_model(W0, b0, result_key=key)),
            ckks_secret_blob=wrap_ckks_secret(ctx, vq),
            progress=kill_in_second_epoch,
            **common,
        )
    client.kill()
    assert info.value.epoch == 1 and info.value.checkpoint is not None
    with EnclaveClient.launch(platform_dir=platform) as fresh:
        resumed = run_refinement(
            enclave=fresh, model_blob=None, ckks_secret_blob=None, checkpoint=info.value.checkpoint, **common
        )
    reference = plaintext_refinement(
        model={"W": W0, "b": b0}, X=X, y=y, X_val=Xv, y_val=yv, batch_size=64, epochs=2, lr=LR, seed=9
    )
    assert resumed.resumed_from == (1, 0)
    _, arrays = open_refined_model(resumed.refined_model, result_key=key, job_id="coeff-kill")
    assert np.abs(arrays["W"] - reference.W).max() < 1e-3
    assert abs(resumed.final_accuracy - reference.accuracy_history[-1]) <= 0.01
