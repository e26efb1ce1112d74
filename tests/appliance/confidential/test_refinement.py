"""Confidential refinement end to end with a real enclave process and real CKKS: accuracy
equals plaintext refinement, no plaintext reaches the host, and a killed enclave fails the job
with a reason and resumes from its sealed checkpoint (or starts over cleanly)."""

from __future__ import annotations

import logging
import os
import signal
import struct
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier
from support import attest_enclave

from appliance.confidential import (
    EncryptedDataset,
    RefinementInterrupted,
    RefinementProgress,
    encrypt_dataset,
    open_refined_model,
    pack_mlp_model,
    pack_softmax_model,
    plaintext_refinement,
    run_refinement,
    wrap_ckks_secret,
    wrap_model,
)
from crypto.ckks import ContextError, load_public_context
from enclave.errors import EnclaveRemoteError
from enclave.he import HostEvaluator
from enclave.host import EnclaveClient, default_config

CANARY = 0.7071067811
LR = 0.5


@pytest.fixture(scope="module")
def digits(digits_scaled: tuple[np.ndarray, np.ndarray]) -> dict[str, np.ndarray]:
    X, y = digits_scaled
    return {
        "X_owner": X[:200],
        "y_owner": y[:200],
        "X": X[200:584],
        "y": y[200:584],
        "X_val": X[584:840],
        "y_val": y[584:840],
    }


def provision(
    client: EnclaveClient,
    platform: Path,
    ctx: Any,
    model: bytes,
    X: np.ndarray,
    y: np.ndarray,
    X_val: np.ndarray,
    y_val: np.ndarray,
) -> tuple[EncryptedDataset, EncryptedDataset, bytes, bytes]:
    vq = attest_enclave(client, platform)  # both parties verify; one quote suffices in the test
    train = encrypt_dataset(ctx, vq, X, y, num_classes=10, batch_size=64, split="train")
    val = encrypt_dataset(ctx, vq, X_val, y_val, num_classes=10, batch_size=64, split="val")
    return train, val, wrap_model(vq, model), wrap_ckks_secret(ctx, vq)


def owner_softmax(d: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The model owner's pre-trained model (its own data, disjoint from the data owner's)."""
    pre = plaintext_refinement(
        model={"W": np.zeros((64, 10)), "b": np.zeros(10)},
        X=d["X_owner"],
        y=d["y_owner"],
        X_val=d["X_val"],
        y_val=d["y_val"],
        batch_size=50,
        epochs=1,
        lr=0.3,
        seed=1,
    )
    return pre.W, pre.b


def test_digits_softmax_matches_plaintext_and_host_sees_no_plaintext(
    digits: dict[str, np.ndarray], platform: Path, ckks: Any, ckks_public: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    X = digits["X"].copy()
    X[5, 10] = CANARY
    y = digits["y"]
    W0, b0 = owner_softmax(digits)
    frames: list[bytes] = []
    caplog.set_level(logging.DEBUG)
    key = os.urandom(32)
    client = EnclaveClient.launch(platform_dir=platform, tap=lambda _d, data: frames.append(data))
    try:
        train, val, model_blob, secret_blob = provision(
            client,
            platform,
            ckks,
            pack_softmax_model(W0, b0, result_key=key),
            X,
            y,
            digits["X_val"],
            digits["y_val"],
        )
        pub = ckks_public
        checkpoints: list[bytes] = []
        events: list[RefinementProgress] = []
        result = run_refinement(
            enclave=client,
            job_id="digits-softmax",
            public_context=pub,
            train=train,
            validation=val,
            model_blob=model_blob,
            ckks_secret_blob=secret_blob,
            epochs=2,
            lr=LR,
            seed=3,
            on_checkpoint=checkpoints.append,
            progress=events.append,
        )
    finally:
        client.close()
    plain = plaintext_refinement(
        model={"W": W0, "b": b0},
        X=X,
        y=y,
        X_val=digits["X_val"],
        y_val=digits["y_val"],
        batch_size=64,
        epochs=2,
        lr=LR,
        seed=3,
    )
    assert abs(result.final_accuracy - plain.accuracy_history[-1]) <= 0.01
    assert result.accuracy_history[0] == pytest.approx(plain.accuracy_history[0], abs=0.01)
    assert result.final_accuracy > result.accuracy_history[0] + 0.05  # it really refined
    meta, arrays = open_refined_model(result.refined_model, result_key=key, job_id="digits-softmax")
    assert meta["kind"] == "softmax" and np.abs(arrays["W"] - plain.W).max() < 1e-3
    assert events[-1].fraction == 1.0 and len(checkpoints) == 3
    report = result.report()
    assert report["operations"]["host_he"]["ct_mul"] > 0 and 0.5 < report["operations"]["host_share"] < 1
    assert report["bytes_decrypted_per_epoch"]

    # -- no plaintext on the host: canaries absent from logs, stored blobs and the channel
    needles = [
        struct.pack("<d", CANARY),
        # a lone float32 (4 bytes) would match random ciphertext bytes by chance about once
        # per 4 GB scanned; the canary's row neighbourhood as float32 cannot
        X[5, 8:13].astype("<f4").tobytes(),
        repr(CANARY).encode(),
        y[:24].astype("<i8").tobytes(),
        y[:24].astype("<i4").tobytes(),
        " ".join(map(str, y[:24])).encode(),
        ", ".join(map(str, y[:24])).encode(),
        W0[:, 3].astype("<f8").tobytes()[:32],
        W0[:, 3].astype("<f4").tobytes()[:16],
    ]
    host_bytes = [
        *frames,
        train.to_bytes(),
        val.to_bytes(),
        pub,
        result.refined_model,
        *checkpoints,
        caplog.text.encode(),
        repr(report).encode(),
    ]
    for needle in needles:
        for blob in host_bytes:
            assert needle not in blob
    # the host holds no secret key, and refuses a context that has one
    host_ctx = load_public_context(pub, preset="n8192-d3", max_bytes=1 << 28)
    assert not host_ctx.has_secret_key()
    with pytest.raises(ContextError):
        load_public_context(ckks.serialize(save_secret_key=True), preset="n8192-d3", max_bytes=1 << 28)
    with pytest.raises(ValueError, match="secret key"):
        HostEvaluator(context=ckks)


@pytest.mark.parametrize("reduction", ["host", "enclave"])
def test_mlp_last_layer_matches_plaintext(
    digits: dict[str, np.ndarray], platform: Path, ckks: Any, ckks_public: bytes, reduction: str
) -> None:
    mlp = MLPClassifier(hidden_layer_sizes=(16,), max_iter=300, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        mlp.fit(digits["X_owner"], digits["y_owner"])  # the model owner's network; layer 1 frozen
    W1, W = mlp.coefs_
    b1, b = mlp.intercepts_
    key = os.urandom(32)
    client = EnclaveClient.launch(platform_dir=platform)
    try:
        train, val, model_blob, secret_blob = provision(
            client,
            platform,
            ckks,
            pack_mlp_model(W1, b1, W, b, result_key=key),
            digits["X"][:256],
            digits["y"][:256],
            digits["X_val"][:128],
            digits["y_val"][:128],
        )
        result = run_refinement(
            enclave=client,
            job_id="digits-mlp",
            public_context=ckks_public,
            train=train,
            validation=val,
            model_blob=model_blob,
            ckks_secret_blob=secret_blob,
            epochs=1,
            lr=LR,
            seed=5,
            reduction=reduction,
        )
    finally:
        client.close()
    plain = plaintext_refinement(
        model={"W1": W1, "b1": b1, "W": W, "b": b},
        X=digits["X"][:256],
        y=digits["y"][:256],
        X_val=digits["X_val"][:128],
        y_val=digits["y_val"][:128],
        batch_size=64,
        epochs=1,
        lr=LR,
        seed=5,
    )
    assert abs(result.final_accuracy - plain.accuracy_history[-1]) <= 0.01
    _, arrays = open_refined_model(result.refined_model, result_key=key, job_id="digits-mlp")
    assert np.abs(arrays["W"] - plain.W).max() < 1e-3
    assert np.array_equal(arrays["W1"], W1)  # the frozen layer did not move
    assert result.kind == "mlp"
    assert (result.host_counts["rotate"] > 0) == (reduction == "host")


def test_killed_enclave_fails_with_reason_then_resumes_or_starts_over(
    digits: dict[str, np.ndarray], platform: Path, ckks: Any, ckks_public: bytes
) -> None:
    X, y, Xv, yv = digits["X"][:192], digits["y"][:192], digits["X_val"][:64], digits["y_val"][:64]
    W0, b0 = owner_softmax(digits)
    key = os.urandom(32)
    model = pack_softmax_model(W0, b0, result_key=key)
    pub = ckks_public
    plain = plaintext_refinement(
        model={"W": W0, "b": b0},
        X=X,
        y=y,
        X_val=Xv,
        y_val=yv,
        batch_size=64,
        epochs=2,
        lr=LR,
        seed=9,
    )
    client = EnclaveClient.launch(platform_dir=platform)
    train, val, model_blob, secret_blob = provision(client, platform, ckks, model, X, y, Xv, yv)

    def kill_in_second_epoch(event: RefinementProgress) -> None:
        if event.epoch == 1 and event.step == 1:
            os.kill(client.pid, signal.SIGKILL)

    with pytest.raises(RefinementInterrupted) as info:
        run_refinement(
            enclave=client,
            job_id="job-kill",
            public_context=pub,
            train=train,
            validation=val,
            model_blob=model_blob,
            ckks_secret_blob=secret_blob,
            epochs=2,
            lr=LR,
            seed=9,
            progress=kill_in_second_epoch,
        )
    client.kill()
    interrupted = info.value
    assert "SIGKILL" in interrupted.reason and interrupted.epoch == 1
    assert interrupted.checkpoint is not None

    # resume on a fresh enclave of the same build: nothing re-provisioned
    fresh = EnclaveClient.launch(platform_dir=platform)
    try:
        tampered = bytearray(interrupted.checkpoint)
        tampered[-5] ^= 1
        with pytest.raises(RefinementInterrupted, match="unseal"):
            run_refinement(
                enclave=fresh,
                job_id="job-kill",
                public_context=pub,
                train=train,
                validation=val,
                model_blob=None,
                ckks_secret_blob=None,
                epochs=2,
                lr=LR,
                seed=9,
                checkpoint=bytes(tampered),
            )
        resumed = run_refinement(
            enclave=fresh,
            job_id="job-kill",
            public_context=pub,
            train=train,
            validation=val,
            model_blob=None,
            ckks_secret_blob=None,
            epochs=2,
            lr=LR,
            seed=9,
            checkpoint=interrupted.checkpoint,
        )
    finally:
        fresh.close()
    assert resumed.resumed_from == (1, 0)
    assert abs(resumed.final_accuracy - plain.accuracy_history[-1]) <= 0.01
    _, arrays = open_refined_model(resumed.refined_model, result_key=key, job_id="job-kill")
    assert np.abs(arrays["W"] - plain.W).max() < 1e-3

    # a changed enclave (SVN bump → new MRENCLAVE) cannot resume; it starts over cleanly
    bumped = EnclaveClient.launch(platform_dir=platform, config=default_config(platform, isv_svn=2))
    try:
        with pytest.raises(RefinementInterrupted, match="MRENCLAVE"):
            run_refinement(
                enclave=bumped,
                job_id="job-kill",
                public_context=pub,
                train=train,
                validation=val,
                model_blob=None,
                ckks_secret_blob=None,
                epochs=2,
                lr=LR,
                seed=9,
                checkpoint=interrupted.checkpoint,
            )
        with pytest.raises(RefinementInterrupted, match="did not issue"):  # old wraps are useless
            run_refinement(
                enclave=bumped,
                job_id="job-kill",
                public_context=pub,
                train=train,
                validation=val,
                model_blob=model_blob,
                ckks_secret_blob=secret_blob,
                epochs=2,
                lr=LR,
                seed=9,
            )
        train2, val2, model_blob2, secret_blob2 = provision(bumped, platform, ckks, model, X, y, Xv, yv)
        again = run_refinement(
            enclave=bumped,
            job_id="job-kill-2",
            public_context=pub,
            train=train2,
            validation=val2,
            model_blob=model_blob2,
            ckks_secret_blob=secret_blob2,
            epochs=2,
            lr=LR,
            seed=9,
        )
    finally:
        bumped.close()
    assert again.resumed_from is None
    assert abs(again.final_accuracy - plain.accuracy_history[-1]) <= 0.01


def test_cancel_from_progress_frees_the_enclave_session(
    digits: dict[str, np.ndarray], platform: Path, ckks: Any, ckks_public: bytes
) -> None:
    class Cancelled(Exception):
        pass

    def cancel(event: RefinementProgress) -> None:
        raise Cancelled

    W0, b0 = owner_softmax(digits)
    model = pack_softmax_model(W0, b0, result_key=os.urandom(32))
    client = EnclaveClient.launch(platform_dir=platform)
    try:
        train, val, model_blob, secret_blob = provision(
            client,
            platform,
            ckks,
            model,
            digits["X"][:128],
            digits["y"][:128],
            digits["X_val"][:64],
            digits["y_val"][:64],
        )
        with pytest.raises(Cancelled):
            run_refinement(
                enclave=client,
                job_id="job-cancel",
                public_context=ckks_public,
                train=train,
                validation=val,
                model_blob=model_blob,
                ckks_secret_blob=secret_blob,
                epochs=1,
                lr=LR,
                seed=0,
                progress=cancel,
            )
        with pytest.raises(EnclaveRemoteError, match="no refinement session"):
            client.call("refine.stats", {"job_id": "job-cancel"})
    finally:
        client.close()
