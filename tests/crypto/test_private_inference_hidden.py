"""Hidden-layer heads (one hidden layer, degree-2 activation): encrypted logits, encrypted
argmax, a real task with trained quadratic-activation MLP heads, server-side refusals."""

from __future__ import annotations

import numpy as np
import pytest
import tenseal as ts
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from support import assert_argmax_agrees, assert_scaled_win_counts

from crypto import argmax, packing
from crypto.ckks import CiphertextError, ContextError, make_context, public_context_bytes
from crypto.ensemble import EnsembleArtifact
from crypto.private_inference.client import PrivateClient
from crypto.private_inference.server import EnsembleEvaluator

#: A least-squares quadratic fit of GELU on [-2, 2] (c2, c1, c0).
GELU_FIT = (0.2277, 0.5, 0.1359)


def _unit(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    x = rng.normal(size=shape)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _hidden_artifact(
    rng: np.random.Generator, k: int, c: int, d: int, h: int, *, out_scale: float, hidden_scale: float = 0.3
) -> EnsembleArtifact:
    return EnsembleArtifact(
        templates=[f"template {i}: {{}}" for i in range(k)],
        hidden_weights=rng.normal(size=(k, h, d)) * hidden_scale,
        hidden_biases=rng.normal(size=(k, h)) * 0.1,
        activation=GELU_FIT,
        weights=rng.normal(size=(k, c, h)) * out_scale,
        biases=rng.normal(size=(k, c)) * 0.1,
        classes=[f"c{i}" for i in range(c)],
    )


@pytest.fixture(scope="module")
def small() -> tuple[EnsembleArtifact, PrivateClient, EnsembleEvaluator]:
    art = _hidden_artifact(np.random.default_rng(1), k=3, c=5, d=20, h=10, out_scale=0.05)
    client = PrivateClient(spec=art.public_spec())
    return art, client, EnsembleEvaluator(artifact=art, public_context=client.evaluation_keys())


def test_encrypted_hidden_logits_match_numpy(small) -> None:
    art, client, evaluator = small
    assert art.head == "quadratic_mlp" and art.preset == "n8192-d5" and evaluator.sign_rounds == 1
    assert evaluator._bound < 2.0  # the tolerance below is 1e-4 absolute, ~5e-5 of the bound
    rng = np.random.default_rng(2)
    worst = 0.0
    for _ in range(3):
        emb = _unit(rng, (art.members, art.dim))
        # The comparison stage's input, decrypted by the client key (a test-only look inside).
        diffs_ct = evaluator._circuit.differences(evaluator._load_query(client.encrypt(emb)), evaluator._weights)
        values = np.array(ts.ckks_vector_from(client._ctx, evaluator._dump_reply(diffs_ct)).decrypt())
        got = packing.comparison_matrix(values, evaluator.layout) * evaluator._bound
        logits = art.plaintext_logits(emb)[0]
        worst = max(worst, float(np.max(np.abs(got - (logits[:, None] - logits[None, :])))))
        assert np.max(np.abs(got.mean(axis=1) - (logits - logits.mean()))) < 1e-4
    assert worst < 1e-4


def test_encrypted_argmax_on_random_inputs() -> None:
    rng = np.random.default_rng(3)
    art = _hidden_artifact(rng, k=2, c=6, d=16, h=8, out_scale=0.3)
    client = PrivateClient(spec=art.public_spec())
    evaluator = EnsembleEvaluator(artifact=art, public_context=client.evaluation_keys())
    assert client.batch_capacity >= 16  # lanes: many queries per ciphertext
    emb = _unit(rng, (224, art.members, art.dim))
    replies = evaluator.evaluate_batch(client.encrypt_batch(emb))
    scores = client.decrypt_batch(replies, total=len(emb))
    logits = art.plaintext_logits(emb)
    assert_argmax_agrees(np.array(scores.labels), logits)
    reference = argmax.reference_win_counts(logits, evaluator._bound, evaluator.sign_rounds)
    # Up to the secret output scale and the result-slot flooding (circuit privacy).
    assert_scaled_win_counts(scores.win_counts, reference, tol=2e-3)


def _train_quadratic_mlp(
    x: np.ndarray, y: np.ndarray, hidden: int, classes: int, seed: int, steps: int = 300
) -> tuple[np.ndarray, ...]:
    """Full-batch Adam on softmax cross-entropy; activation GELU_FIT (numpy, seeded)."""
    rng = np.random.default_rng(seed)
    c2, c1, c0 = GELU_FIT
    params = [
        rng.normal(size=(hidden, x.shape[1])) / np.sqrt(x.shape[1]) * 2.0,
        np.zeros(hidden),
        rng.normal(size=(classes, hidden)) / np.sqrt(hidden),
        np.zeros(classes),
    ]
    moments = [(np.zeros_like(p), np.zeros_like(p)) for p in params]
    onehot = np.eye(classes)[y]
    for step in range(1, steps + 1):
        a_w, a_b, b_w, b_b = params
        u = x @ a_w.T + a_b
        h = c2 * u**2 + c1 * u + c0
        z = h @ b_w.T + b_b
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        dz = (p - onehot) / len(x)
        du = (dz @ b_w) * (2 * c2 * u + c1)
        grads = [du.T @ x, du.sum(axis=0), dz.T @ h, dz.sum(axis=0)]
        for i, (g, (m, v)) in enumerate(zip(grads, moments, strict=True)):
            m[:] = 0.9 * m + 0.1 * g
            v[:] = 0.999 * v + 0.001 * g**2
            params[i] = params[i] - 0.02 * (m / (1 - 0.9**step)) / (np.sqrt(v / (1 - 0.999**step)) + 1e-8)
    return tuple(params)


def test_digits_hidden_heads_encrypted_accuracy_equals_plaintext() -> None:
    x, y = load_digits(return_X_y=True)
    x = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-6)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
    rng = np.random.default_rng(4)
    k, d, h, count = 4, 32, 8, 240
    projections = rng.normal(size=(k, d, x.shape[1])) / np.sqrt(x.shape[1])  # the "templates"

    def embed(features: np.ndarray) -> np.ndarray:
        emb = np.einsum("kdf,qf->qkd", projections, features)
        return emb / np.linalg.norm(emb, axis=2, keepdims=True)

    train_emb, test_emb = embed(x_train), embed(x_test[:count])
    heads = [_train_quadratic_mlp(train_emb[:, i], y_train, h, 10, seed=10 + i) for i in range(k)]
    art = EnsembleArtifact(
        templates=[f"projection seed 4 #{i}" for i in range(k)],
        hidden_weights=np.stack([p[0] for p in heads]),
        hidden_biases=np.stack([p[1] for p in heads]),
        activation=GELU_FIT,
        weights=np.stack([p[2] for p in heads]),
        biases=np.stack([p[3] for p in heads]),
        classes=[str(i) for i in range(10)],
        encoder="digits-random-projection",
    )
    plain_pred = art.plaintext_logits(test_emb).argmax(axis=1)
    plain_acc = np.mean(plain_pred == y_test[:count])
    assert plain_acc > 0.85
    client = PrivateClient(spec=art.public_spec())
    evaluator = EnsembleEvaluator(artifact=art, public_context=client.evaluation_keys())
    replies = evaluator.evaluate_batch(client.encrypt_batch(test_emb))
    enc_pred = np.array(client.decrypt_batch(replies, total=count).labels)
    enc_acc = np.mean(enc_pred == y_test[:count])
    assert abs(enc_acc - plain_acc) <= 0.005
    assert np.mean(enc_pred == plain_pred) >= 0.99


def test_hidden_evaluator_refusals_and_flooding(small) -> None:
    art, client, evaluator = small
    with pytest.raises(ContextError, match="private"):
        EnsembleEvaluator(artifact=art, public_context=client._ctx.serialize(save_secret_key=True))
    linear_only = make_context(art.preset, galois_steps=[1, 2, 4])  # lacks the stage-1 strides
    with pytest.raises(ContextError, match="lack the rotations"):
        EnsembleEvaluator(artifact=art, public_context=public_context_bytes(linear_only))
    short = ts.ckks_vector(client._ctx, [0.1] * 100).serialize()
    with pytest.raises(CiphertextError, match="expected"):
        evaluator.evaluate(short)
    reply = evaluator.evaluate(client.encrypt(np.full((art.members, art.dim), 0.05)))
    values = np.array(ts.ckks_vector_from(client._ctx, reply).decrypt())
    keep = packing.output_mask(evaluator.layout)
    assert np.all(np.abs(values[keep]) <= len(art.classes))
    assert np.std(values[~keep]) > 50.0  # uniform noise (amplitude 2^7 at n8192-d5)


def test_hidden_heads_refuse_the_wide_layout(small) -> None:
    art, client, evaluator = small
    assert not client.prefers_wide(64)
    assert set(client.layout.galois_steps) == set(client._steps)  # no wide-only keys sent
    with pytest.raises(packing.LayoutError, match="linear heads only"):
        client.encrypt_wide_batch(_unit(np.random.default_rng(0), (4, art.members, art.dim)))
    with pytest.raises(packing.LayoutError, match="linear heads only"):
        evaluator.evaluate_wide_batch(b"PEW1" + b"\x00" * 16)
    session = evaluator.with_session(PrivateClient(spec=art.public_spec()).evaluation_keys())
    assert session._weights.hidden_diagonals is evaluator._weights.hidden_diagonals
