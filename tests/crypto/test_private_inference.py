"""Private ensemble inference: encrypted logits, encrypted argmax, a real task, refusals."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import tenseal as ts
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from support import assert_argmax_agrees, assert_scaled_win_counts

from crypto import argmax, packing
from crypto.ckks import CiphertextError, ContextError, make_context, public_context_bytes
from crypto.ensemble import EnsembleArtifact
from crypto.private_inference.client import PrivateClient
from crypto.private_inference.server import EnsembleEvaluator
from crypto.private_inference.templates import embed_with_templates
from crypto.private_inference.wire import decode_blobs, encode_blobs


def _random_artifact(rng: np.random.Generator, k: int, c: int, d: int) -> EnsembleArtifact:
    return EnsembleArtifact(
        templates=[f"template {i}: {{}}" for i in range(k)],
        weights=rng.normal(size=(k, c, d)) * 0.2,
        biases=rng.normal(size=(k, c)) * 0.1,
        classes=[f"c{i}" for i in range(c)],
        norm_bound=1.0,
    )


@pytest.fixture(scope="module")
def small() -> tuple[EnsembleArtifact, PrivateClient, EnsembleEvaluator]:
    art = _random_artifact(np.random.default_rng(1), k=3, c=5, d=20)
    client = PrivateClient(spec=art.public_spec())
    return art, client, EnsembleEvaluator(artifact=art, public_context=client.evaluation_keys())


def test_encrypted_ensemble_logits_match_numpy(small) -> None:
    art, client, evaluator = small
    rng = np.random.default_rng(2)
    emb = rng.normal(size=(art.members, art.dim))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    # The comparison stage's input, decrypted by the client key (a test-only look inside).
    diffs_ct = evaluator._circuit.differences(evaluator._load_query(client.encrypt(emb)), evaluator._weights)
    values = np.array(ts.ckks_vector_from(client._ctx, evaluator._dump_reply(diffs_ct)).decrypt())
    got = packing.comparison_matrix(values, evaluator.layout) * evaluator._bound
    logits = art.plaintext_logits(emb)[0]
    expected = logits[:, None] - logits[None, :]
    assert np.max(np.abs(got - expected)) < 1e-4
    # The logits themselves, up to the constant the argmax ignores (row means of differences).
    recovered = got.mean(axis=1)
    assert np.max(np.abs(recovered - (logits - logits.mean()))) < 1e-4


def test_encrypted_argmax_on_random_logits() -> None:
    rng = np.random.default_rng(3)
    c, count = 10, 208
    art = EnsembleArtifact(
        templates=["{}"],
        weights=np.eye(c)[None],
        biases=np.zeros((1, c)),
        classes=[str(i) for i in range(c)],
        norm_bound=float(np.sqrt(c)),
    )
    client = PrivateClient(spec=art.public_spec())
    evaluator = EnsembleEvaluator(artifact=art, public_context=client.evaluation_keys())
    logits = rng.uniform(-1.0, 1.0, size=(count, c))
    replies = evaluator.evaluate_batch(client.encrypt_batch(logits[:, None, :]))
    scores = client.decrypt_batch(replies, total=count)
    assert_argmax_agrees(np.array(scores.labels), logits)
    reference = argmax.reference_win_counts(logits, evaluator._bound, evaluator.sign_rounds)
    # Up to the secret output scale and the result-slot flooding (circuit privacy).
    assert_scaled_win_counts(scores.win_counts, reference, tol=2e-3)


def test_win_counts_in_a_chunked_lane_with_fewer_keys() -> None:
    """K=4 x 384-d fills half of n8192-d3's slots, so a query is laid out in chunks (32
    diagonals of the 45 pair rows instead of 64) and the single layout needs keys for steps 1,
    the giant step 4 and every third rotate-and-sum stride only; the circuit makes the others."""
    rng = np.random.default_rng(4)
    art = _random_artifact(rng, k=4, c=10, d=384)
    client = PrivateClient(spec=art.public_spec())
    evaluator = EnsembleEvaluator(artifact=art, public_context=client.evaluation_keys())
    lay = evaluator.layout
    assert (lay.chunk, lay.stride, lay.baby * lay.giant, lay.lane, lay.pairs) == (32, 64, 32, lay.slots, True)
    assert lay.galois_steps == (1, 4, 64, 512) and client._steps[:4] == (1, 2, 4, 8)  # + the wide layout's
    emb = rng.normal(size=(12, 4, 384))
    emb /= np.linalg.norm(emb, axis=2, keepdims=True)
    scores = client.decrypt_batch(evaluator.evaluate_batch(client.encrypt_batch(emb)), total=12)
    logits = art.plaintext_logits(emb)
    assert list(scores.labels) == logits.argmax(axis=1).tolist()
    reference = argmax.reference_win_counts(logits, evaluator._bound, evaluator.sign_rounds)
    assert_scaled_win_counts(scores.win_counts, reference, tol=2e-3)


def test_pair_rows_where_a_query_fills_the_ciphertext() -> None:
    """K=8 x 384-d fills n8192-d3's slots: the 45 pairs of 10 classes are computed once (64
    diagonals instead of the compact layout's 128), block i of the replicated rows is weighed
    +-1 in the last sign step and summed into class i's win count, the same as before up to
    the secret factor; a client that follows a server predating the pair rows packs compactly."""
    from crypto.private_inference.spec import single_layout

    rng = np.random.default_rng(11)
    art = _random_artifact(rng, k=8, c=10, d=384)
    client = PrivateClient(spec=art.public_spec())
    evaluator = EnsembleEvaluator(artifact=art, public_context=client.evaluation_keys())
    lay = evaluator.layout
    assert (lay.pairs, lay.rows, lay.stride, lay.baby * lay.giant, lay.queries_per_ciphertext) == (True, 64, 64, 64, 1)
    assert client.layout == lay
    emb = rng.normal(size=(6, 8, 384))
    emb /= np.linalg.norm(emb, axis=2, keepdims=True)
    diffs = evaluator._circuit.differences(evaluator._load_query(client.encrypt(emb[0])), evaluator._weights)
    values = np.array(ts.ckks_vector_from(client._ctx, evaluator._dump_reply(diffs)).decrypt())
    logits = art.plaintext_logits(emb)
    got = packing.comparison_matrix(values, lay) * evaluator._bound
    assert np.max(np.abs(got - (logits[0][:, None] - logits[0][None, :]))) < 1e-4
    scores = client.decrypt_batch(evaluator.evaluate_batch(client.encrypt_batch(emb)), total=6)
    assert list(scores.labels) == logits.argmax(axis=1).tolist()
    reference = argmax.reference_win_counts(logits, evaluator._bound, evaluator.sign_rounds)
    assert_scaled_win_counts(scores.win_counts, reference, tol=2e-3)
    old_server = {**art.public_spec(), "layout": {"class_stride": 10, "chunk": 0}}
    assert (single_layout(old_server).pairs, single_layout(old_server).rows) == (False, 128)
    assert single_layout({**art.public_spec(), "layout": {"class_stride": 64, "pairs": True}}) == lay
    assert not single_layout({**art.public_spec(), "output": "onehot", "preset": "n16384-d7"}).pairs


def test_digits_encrypted_accuracy_equals_plaintext() -> None:
    x, y = load_digits(return_X_y=True)
    x = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-6)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
    rng = np.random.default_rng(4)
    k, d = 4, 32
    projections = rng.normal(size=(k, d, x.shape[1])) / np.sqrt(x.shape[1])  # the "templates"

    def embed(features: np.ndarray) -> np.ndarray:
        emb = np.einsum("kdf,qf->qkd", projections, features)
        return emb / np.linalg.norm(emb, axis=2, keepdims=True)

    train_emb, test_emb = embed(x_train), embed(x_test[:120])
    heads = [LogisticRegression(max_iter=500, C=5.0).fit(train_emb[:, i], y_train) for i in range(k)]
    art = EnsembleArtifact(
        templates=[f"projection seed 4 #{i}" for i in range(k)],
        weights=np.stack([h.coef_ for h in heads]),
        biases=np.stack([h.intercept_ for h in heads]),
        classes=[str(i) for i in range(10)],
        norm_bound=1.0,
        encoder="digits-random-projection",
    )
    plain_pred = art.plaintext_logits(test_emb).argmax(axis=1)
    plain_acc = np.mean(plain_pred == y_test[:120])
    assert plain_acc > 0.85
    client = PrivateClient(spec=art.public_spec())
    evaluator = EnsembleEvaluator(artifact=art, public_context=client.evaluation_keys())
    replies = evaluator.evaluate_batch(client.encrypt_batch(test_emb))
    enc_pred = np.array(client.decrypt_batch(replies, total=len(test_emb)).labels)
    enc_acc = np.mean(enc_pred == y_test[:120])
    assert abs(enc_acc - plain_acc) <= 0.005
    assert np.mean(enc_pred == plain_pred) >= 0.99


def test_evaluator_refuses_secret_key_material(small) -> None:
    art, client, _ = small
    with pytest.raises(ContextError, match="private"):
        EnsembleEvaluator(artifact=art, public_context=client._ctx.serialize(save_secret_key=True))
    with pytest.raises(ContextError, match="secret"):
        EnsembleEvaluator(artifact=art, public_context=client._ctx)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        pickle.dumps(client)
    assert b"secret" not in repr(client).encode()


def test_evaluator_refuses_missing_rotation_keys(small) -> None:
    art, _, _ = small
    ctx = make_context(art.preset, galois_steps=[1])
    with pytest.raises(ContextError, match="lack the rotations"):
        EnsembleEvaluator(artifact=art, public_context=public_context_bytes(ctx))


def test_evaluator_refuses_bad_queries(small) -> None:
    art, client, evaluator = small
    good = client.encrypt(np.ones((art.members, art.dim)) * 0.1)
    for bad in (b"", b"\x00" * 50, good[: len(good) // 2], good[:-9]):
        with pytest.raises(CiphertextError):
            evaluator.evaluate(bad)
    short = ts.ckks_vector(client._ctx, [0.1] * 100).serialize()
    with pytest.raises(CiphertextError, match="expected"):
        evaluator.evaluate(short)
    foreign = ts.ckks_vector(make_context("n16384-d8"), [0.1] * 4096).serialize()
    with pytest.raises(CiphertextError):
        evaluator.evaluate(foreign)


def test_evaluation_keys_hold_no_secret_and_unused_slots_are_flooded(small) -> None:
    art, client, evaluator = small
    keys = client.evaluation_keys()
    secret_blob = client._ctx.serialize(save_secret_key=True, save_public_key=False)
    canary = secret_blob[-4096:]  # tail of the serialized secret key
    assert canary not in keys
    reply = evaluator.evaluate(client.encrypt(np.full((art.members, art.dim), 0.05)))
    values = np.array(ts.ckks_vector_from(client._ctx, reply).decrypt())
    keep = np.zeros(values.size, dtype=bool)
    keep[[i * evaluator.layout.stride for i in range(len(art.classes))]] = True
    assert np.all(np.abs(values[keep]) <= len(art.classes))
    assert np.std(values[~keep]) > 1000.0  # uniform noise, not partial comparison sums


def test_second_session_shares_encoded_weights(small) -> None:
    """A sibling session shares the encoded weights and the key-free SEAL objects (context,
    evaluator, encoder: ~55 MB per session at N=16384), never the keys."""
    art, _, evaluator = small
    other = PrivateClient(spec=art.public_spec())
    session = evaluator.with_session(other.evaluation_keys())
    assert session._weights.diagonals is evaluator._weights.diagonals
    assert session._seal.context is evaluator._seal.context
    assert session._seal.evaluator is evaluator._seal.evaluator
    assert session._seal.encoder is evaluator._seal.encoder
    assert session._seal.galois is not evaluator._seal.galois
    assert session._seal.relin is not evaluator._seal.relin
    emb = np.random.default_rng(5).normal(size=(art.members, art.dim))
    body = encode_blobs(other.encrypt_batch(emb[None]))
    replies = session.evaluate_batch(decode_blobs(body, max_items=4, max_bytes=1 << 24))
    label = other.decrypt_batch(replies, total=1).labels[0]
    assert label == int(art.plaintext_logits(emb).argmax())
    for bad in (body[:-1], b"XXXX" + body[4:], body + b"\x00"):
        with pytest.raises(CiphertextError):
            decode_blobs(bad, max_items=4, max_bytes=1 << 24)


def test_a_context_is_shared_only_for_the_same_parameters(small) -> None:
    import tenseal.sealapi as sealapi

    from crypto.ckks import get_preset
    from crypto.private_inference.server import _same_parameters

    art, _, evaluator = small

    def parms(preset: str) -> object:
        p = get_preset(preset)
        out = sealapi.EncryptionParameters(sealapi.SCHEME_TYPE.CKKS)
        out.set_poly_modulus_degree(p.poly_modulus_degree)
        out.set_coeff_modulus(sealapi.CoeffModulus.Create(p.poly_modulus_degree, list(p.coeff_mod_bit_sizes)))
        return out

    assert _same_parameters(evaluator._seal.context, parms(art.preset))
    other = "n8192-d5" if art.preset != "n8192-d5" else "n8192-d3"
    assert not _same_parameters(evaluator._seal.context, parms(other))


def test_embed_with_templates_shapes_and_order() -> None:
    def encode(prompts: list[str]) -> np.ndarray:
        return np.array([[len(p), p.count("x"), 1.0] for p in prompts])

    emb = embed_with_templates(["x", "xyz"], ["a {} b", "{}!", "plain"], encode, normalize=False)
    assert emb.shape == (2, 3, 3)
    assert emb[1, 0, 0] == len("a xyz b") and emb[0, 2, 0] == len("plain x")
    unit = embed_with_templates(["x"], ["{}"], encode)
    assert abs(np.linalg.norm(unit[0, 0]) - 1.0) < 1e-12


def test_compact_rows_and_chunked_lanes_only_where_they_fit_and_servers_announce_them() -> None:
    from crypto.private_inference.spec import single_layout

    art = EnsembleArtifact(
        templates=["{}", "x {}"],
        weights=np.ones((2, 10, 8)),
        biases=np.zeros((2, 10)),
        classes=[str(i) for i in range(10)],
    )
    spec = art.public_spec()
    compact = single_layout(spec)
    assert (compact.stride, compact.rows, compact.pad_classes) == (10, 128, 16)
    # A server that predates the compact rows serves 16-slot class blocks; its spec says so
    # by a layout without class_stride, and the client follows it.
    legacy = single_layout({**spec, "layout": {"pad_classes": 16, "rows": 256}})
    assert (legacy.stride, legacy.rows) == (16, 256)
    assert single_layout({**spec, "layout": {"class_stride": 10}}).stride == 10
    # One-hot: compact where the window product of C slots is no deeper than over P (10: 8 + 2,
    # 4 levels as for 16; 7 = 4 + 2 + 1 would take 4 levels where 8 takes 3).
    onehot = single_layout({**spec, "output": "onehot", "preset": "n16384-d8"})
    assert (onehot.stride, onehot.rows) == (10, 128)
    seven = {**spec, "classes": [str(i) for i in range(7)], "output": "onehot", "preset": "n16384-d8"}
    assert single_layout(seven).stride == 8
    old_onehot = {**spec, "output": "onehot", "preset": "n16384-d8", "layout": {"class_stride": 16, "rows": 256}}
    assert (single_layout(old_onehot).stride, single_layout(old_onehot).chunk) == (16, 0)
    # Chunked lanes where one query fills the ciphertext (K=8 x 384 at N=16384), unless the
    # server's layout predates them (no "chunk" in it); a server's "chunk": 0 is followed too.
    big = {**spec, "members": 8, "dim": 384, "output": "onehot", "preset": "n16384-d7"}
    assert single_layout(big).chunk == 64 and single_layout({**big, "layout": {"class_stride": 10}}).chunk == 0
    assert single_layout({**big, "layout": {"class_stride": 10, "chunk": 64}}).chunk == 64
    assert single_layout(spec).chunk == 0  # two members of 8 dims: many lanes per ciphertext
    # What a client relies on, digested: sent when it opens a session. The chunked lane and the
    # compact one-hot blocks changed it where clients that predate the digest still pack the old
    # way; win counts kept theirs.
    from crypto.private_inference.spec import client_geometry, layout_digest, legacy_layout

    assert client_geometry(legacy_layout(spec)) == client_geometry(single_layout(spec))
    for changed in (big, {**spec, "output": "onehot", "preset": "n16384-d8"}):
        assert layout_digest(legacy_layout(changed)) != layout_digest(single_layout(changed))
    assert layout_digest(single_layout(big)) == layout_digest(single_layout(dict(big)))


def test_replies_are_rerandomised_under_the_public_key(small, monkeypatch) -> None:
    """The flooding hides the decrypted value's error; a fresh public-key encryption of zero
    hides the ciphertext: with the circuit's own randomness (output scale, flooding) pinned,
    the same query twice still gives different reply ciphertexts (their mask parts would
    otherwise be a fixed function of the query and the owner's weights) that decrypt to the
    same values, on the single, one-region wide and spread wide paths."""
    import crypto.private_inference.circuits as circuits

    monkeypatch.setattr(circuits.secrets, "randbits", lambda bits: 12345)
    art, client, evaluator = small
    rng = np.random.default_rng(9)
    emb = rng.normal(size=(client.wide_layout.capacity, art.members, art.dim))
    emb /= np.linalg.norm(emb, axis=-1, keepdims=True)
    query = client.encrypt(emb[0])
    first, second = evaluator.evaluate(query), evaluator.evaluate(query)
    assert not first == second, "the same query gave the same reply ciphertext twice"
    values = [np.array(ts.ckks_vector_from(client._ctx, r).decrypt()) for r in (first, second)]
    assert np.max(np.abs(values[0] - values[1])) < 1e-6
    for count in (client.wide_layout.capacity, 2):  # one region; spread over regions
        body = client.encrypt_wide_batch(emb[:count])
        first, second = evaluator.evaluate_wide_batch(body), evaluator.evaluate_wide_batch(body)
        assert not first == second, f"the same wide batch of {count} gave the same reply twice"
        a, b = (client.decrypt_wide_batch(r, count=count).win_counts for r in (first, second))
        assert np.max(np.abs(np.asarray(a) - np.asarray(b))) < 1e-6


def test_result_slots_are_flooded_and_scaled_afresh_per_query(small) -> None:
    """Circuit privacy of the result slots: the same query twice decrypts to the same label
    but to comparison sums that differ by a fresh secret factor in [OUTPUT_SCALE_MIN, 1] and
    fresh noise of amplitude OUTPUT_FLOOD, so their absolute size (the logit gaps' scale) and
    the circuit's exact CKKS error do not come back to the client."""
    from crypto.private_inference.circuits import OUTPUT_FLOOD

    art, client, evaluator = small
    rng = np.random.default_rng(8)
    emb = rng.normal(size=(art.members, art.dim))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    query = client.encrypt(emb)
    runs = [client.decrypt_result(evaluator.evaluate(query)) for _ in range(3)]
    truth = int(np.argmax(art.plaintext_logits(emb)[0]))
    assert all(r.labels == (truth,) for r in runs)
    c = len(art.classes)
    raws = np.stack([2.0 * r.win_counts[0] - (c - 1) for r in runs])
    factors = raws @ raws[0] / (raws[0] @ raws[0])
    assert np.ptp(factors) > 1e-3  # a fresh scale per evaluation
    residual = raws - factors[:, None] * raws[0]
    assert np.max(np.abs(residual)) < 3 * OUTPUT_FLOOD["scores"] + 1e-4
    assert np.max(np.abs(residual[1:])) > 2e-5  # and fresh noise, well above the CKKS error (~5e-6)
