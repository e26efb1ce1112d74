"""Confidential refinement on MiniLM embeddings of real offline text: Python standard-library
docstrings labelled by their module. Refined accuracy equals plaintext refinement's."""

from __future__ import annotations

import importlib
import inspect
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from appliance.confidential import (
    create_ckks_context,
    encrypt_dataset,
    open_refined_model,
    pack_softmax_model,
    plaintext_refinement,
    public_context,
    run_refinement,
    wrap_ckks_secret,
    wrap_model,
)
from crypto.provisioning import verify_quote
from enclave.host import EnclaveClient
from enclave.platform import create_platform

MODULES = ("math", "random", "shutil", "inspect")


def docstrings(module_name: str) -> list[str]:
    module = importlib.import_module(module_name)
    docs = []
    for name, obj in inspect.getmembers(module):
        if name.startswith("_") or not (inspect.isroutine(obj) or inspect.isclass(obj)):
            continue
        doc = inspect.getdoc(obj)
        if doc and len(doc) > 30 and getattr(obj, "__module__", module_name) in (module_name, None):
            docs.append(doc[:512])
    return docs


def test_minilm_docstrings_refinement_matches_plaintext(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    hub = pytest.importorskip("models.hub")
    try:
        encoder = hub.load_minilm(device="cpu")
    except Exception as exc:  # the offline weights are an installed package
        pytest.skip(f"MiniLM weights unavailable: {exc}")
    texts, labels = [], []
    for label, module in enumerate(MODULES):
        docs = docstrings(module)
        texts += docs
        labels += [label] * len(docs)
    assert len(texts) > 120
    X = np.asarray(encoder.embed(texts), dtype=np.float64)
    y = np.asarray(labels)
    order = np.random.default_rng(0).permutation(len(y))
    X, y = X[order], y[order]
    X_owner, y_owner = X[:24], y[:24]
    X_tr, y_tr = X[24:136], y[24:136]
    X_val, y_val = X[136:], y[136:]
    k = len(MODULES)
    pre = plaintext_refinement(
        model={"W": np.zeros((384, k)), "b": np.zeros(k)},
        X=X_owner,
        y=y_owner,
        X_val=X_val,
        y_val=y_val,
        batch_size=8,
        epochs=1,
        lr=1.0,
        seed=0,
    )
    platform = tmp_path / "platform"
    info = create_platform(platform)
    client = EnclaveClient.launch(platform_dir=platform)
    key = os.urandom(32)
    try:
        nonce = os.urandom(32)
        vq = verify_quote(
            client.get_quote(nonce),
            platform_key=info.attestation_public_key,
            allowed_measurements={client.expected_mrenclave},
            nonce=nonce,
            allow_simulated=True,
        )
        ctx = create_ckks_context()
        pub = public_context(ctx)
        results = {}
        for layout in ("rows", "coeff"):  # slot packing and coefficient packing
            train = encrypt_dataset(ctx, vq, X_tr, y_tr, num_classes=k, batch_size=8, split="train", layout=layout)
            val = encrypt_dataset(ctx, vq, X_val, y_val, num_classes=k, batch_size=8, split="val", layout=layout)
            results[layout] = run_refinement(
                enclave=client,
                job_id=f"minilm-{layout}",
                public_context=pub,
                train=train,
                validation=val,
                model_blob=wrap_model(vq, pack_softmax_model(pre.W, pre.b, result_key=key)),
                ckks_secret_blob=wrap_ckks_secret(ctx, vq),
                epochs=2,
                lr=1.0,
                seed=4,
            )
    finally:
        client.close()
    plain = plaintext_refinement(
        model={"W": pre.W, "b": pre.b},
        X=X_tr,
        y=y_tr,
        X_val=X_val,
        y_val=y_val,
        batch_size=8,
        epochs=2,
        lr=1.0,
        seed=4,
    )
    for layout, result in results.items():
        assert abs(result.final_accuracy - plain.accuracy_history[-1]) <= 0.01
        # the embeddings carry the module signal, and refinement improves on the owner's model
        assert result.final_accuracy > max(0.5, result.accuracy_history[0] + 0.1)
        _, arrays = open_refined_model(result.refined_model, result_key=key, job_id=f"minilm-{layout}")
        assert np.abs(arrays["W"] - plain.W).max() < 1e-3
