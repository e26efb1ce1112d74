"""One-hot output mode: products of encrypted comparisons, both layouts, refusals, artifact format."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tenseal as ts
from support import assert_argmax_agrees, identity_artifact

from crypto import argmax, packing
from crypto.ckks import CiphertextError, ContextError
from crypto.ensemble import ArtifactError, EnsembleArtifact
from crypto.private_inference.client import PrivateClient
from crypto.private_inference.server import EnsembleEvaluator
from crypto.private_inference.spec import sign_rounds
from crypto.private_inference.wire import encode_wide

C = 4  # P = 4: a two-level product tree; n8192-d5 fits it with one sign composition


def _identity_artifact(classes: int, **kwargs: object) -> EnsembleArtifact:
    """One member whose logits are its (clipped) embedding: the test chooses the logits."""
    return identity_artifact(classes, output="onehot", **kwargs)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def onehot() -> tuple[EnsembleArtifact, PrivateClient, EnsembleEvaluator]:
    art = _identity_artifact(C)
    client = PrivateClient(spec=art.public_spec())
    return art, client, EnsembleEvaluator(artifact=art, public_context=client.evaluation_keys())


def test_onehot_labels_and_values_match_plaintext(onehot) -> None:
    art, client, evaluator = onehot
    assert art.preset == "n8192-d5" and evaluator.sign_rounds == 1 and client.output == "onehot"
    logits = np.random.default_rng(31).uniform(-1.0, 1.0, size=(240, C))
    replies = evaluator.evaluate_batch(client.encrypt_batch(logits[:, None, :]))
    scores = client.decrypt_batch(replies, total=len(logits))
    assert scores.win_counts is None and scores.one_hot is not None and scores.one_hot.shape == (240, C)
    assert_argmax_agrees(np.array(scores.labels), logits)
    reference = argmax.reference_one_hot(logits, evaluator._bound, evaluator.sign_rounds)
    assert np.max(np.abs(scores.one_hot - reference)) < 1e-3
    assert np.all(scores.one_hot > -1e-3) and np.all(scores.one_hot < 1.0 + 1e-3)


def test_onehot_wide_layout_matches_reference(onehot) -> None:
    _, client, evaluator = onehot
    logits = np.random.default_rng(32).uniform(-1.0, 1.0, size=(client.wide_capacity, C))
    scores = client.decrypt_wide_batch(
        evaluator.evaluate_wide_batch(client.encrypt_wide_batch(logits[:, None, :])), count=len(logits)
    )
    assert scores.win_counts is None and scores.one_hot is not None
    assert_argmax_agrees(np.array(scores.labels), logits)
    reference = argmax.reference_one_hot(logits, evaluator._wide_state["bound"], evaluator.sign_rounds)
    assert np.max(np.abs(scores.one_hot - reference)) < 1e-3
    # A partial one-hot batch stays in one region; region bodies (another client's) are refused.
    part = client.encrypt_wide_batch(logits[:3, None, :])
    assert part[:4] == b"PEW1"
    lay = client.wide_layout
    for spread in (False, True):
        rows = packing.pack_wide(logits[:3, None, :], lay, norm_bound=1.0, regions=2, spread=spread)
        body = encode_wide([client._encrypt_values(r) for r in rows], layout=lay, count=3, regions=2, spread=spread)
        with pytest.raises(CiphertextError, match="one region"):
            evaluator.evaluate_wide_batch(body)


def test_onehot_two_classes_single_and_wide() -> None:
    """Two classes: the wide product has one factor, already rescaled (the reply is flooded
    and re-randomised without the rescale the longer products leave for it)."""
    art = _identity_artifact(2)
    client = PrivateClient(spec=art.public_spec())
    evaluator = EnsembleEvaluator(artifact=art, public_context=client.evaluation_keys())
    logits = np.random.default_rng(34).uniform(-1.0, 1.0, size=(client.wide_capacity, 2))
    wide = client.decrypt_wide_batch(
        evaluator.evaluate_wide_batch(client.encrypt_wide_batch(logits[:, None, :])), count=len(logits)
    )
    single = client.decrypt_batch(evaluator.evaluate_batch(client.encrypt_batch(logits[:8, None, :])), total=8)
    for scores, bound, rows in ((wide, evaluator._wide_state["bound"], logits), (single, evaluator._bound, logits[:8])):
        assert scores.one_hot is not None
        clear = np.abs(rows[:, 0] - rows[:, 1]) >= 0.01
        assert np.all(np.array(scores.labels)[clear] == rows.argmax(axis=1)[clear])
        reference = argmax.reference_one_hot(rows, bound, evaluator.sign_rounds)
        assert np.max(np.abs(scores.one_hot - reference)) < 1e-3


def test_unused_slots_flooded_and_no_secret_needed(onehot) -> None:
    art, client, evaluator = onehot
    with pytest.raises(ContextError, match="private"):
        EnsembleEvaluator(artifact=art, public_context=client._ctx.serialize(save_secret_key=True))
    reply = evaluator.evaluate(client.encrypt(np.array([[0.9, -0.2, 0.1, -0.5]])))
    values = np.array(ts.ckks_vector_from(client._ctx, reply).decrypt())
    keep = packing.output_mask(evaluator.layout, 1)
    assert np.all((values[keep] > -1e-3) & (values[keep] < 1.0 + 1e-3))
    # n8192-d5 floods with uniform noise of amplitude 2^(37 - 27 - 3) = 128 (std 74).
    assert np.std(values[~keep]) > 40.0


def test_deeper_preset_sharpens_towards_one_hot() -> None:
    # Two classes cost one product level, so n16384-d8 fits three sign compositions.
    art = _identity_artifact(2, preset="n16384-d8")
    client = PrivateClient(spec=art.public_spec())
    evaluator = EnsembleEvaluator(artifact=art, public_context=client.evaluation_keys())
    assert evaluator.sign_rounds == 3
    rng = np.random.default_rng(33)
    winner = rng.integers(0, 2, size=64)
    logits = np.where(np.arange(2)[None] == winner[:, None], 1.0, -1.0) * rng.uniform(0.5, 1.0, size=(64, 1))
    scores = client.decrypt_batch(evaluator.evaluate_batch(client.encrypt_batch(logits[:, None, :])), total=64)
    assert scores.one_hot is not None and list(scores.labels) == winner.tolist()
    ordered = np.sort(scores.one_hot, axis=1)
    assert ordered[:, -1].min() > 0.97 and ordered[:, 0].max() < 0.03
    reference = argmax.reference_one_hot(logits, evaluator._bound, 3)
    assert np.max(np.abs(scores.one_hot - reference)) < 1e-4


def test_shallow_presets_refused_with_a_deeper_hint() -> None:
    with pytest.raises(ArtifactError, match="depth >= 5") as linear:
        _identity_artifact(C, preset="n8192-d3")
    assert "n8192-d5" in str(linear.value.hint)
    with pytest.raises(ArtifactError) as ten:
        _identity_artifact(10, preset="n8192-d5")
    assert "n16384-d7" in str(ten.value.hint)
    assert _identity_artifact(10).preset == "n16384-d7"  # the smallest preset deep enough (1 + 2 + 4)
    # beyond 16 classes soft values (~2^-(C-1)) sink below the output flooding: refused
    with pytest.raises(ArtifactError, match="at most 16 classes") as many:
        _identity_artifact(17)
    assert "scores" in str(many.value.hint)
    rng = np.random.default_rng(34)
    with pytest.raises(ArtifactError) as hidden:  # 3 head levels + 2 + 4 > 8
        EnsembleArtifact(
            templates=["{}"],
            hidden_weights=rng.normal(size=(1, 4, 8)),
            hidden_biases=np.zeros((1, 4)),
            activation=(0.25, 0.5, 0.0),
            weights=rng.normal(size=(1, 10, 4)),
            biases=np.zeros((1, 10)),
            classes=[str(i) for i in range(10)],
            preset="n16384-d8",
            output="onehot",
        )
    assert "n32768-d18" in str(hidden.value.hint)
    with pytest.raises(ArtifactError, match="output"):
        EnsembleArtifact(templates=["{}"], weights=np.eye(2)[None], biases=np.zeros((1, 2)), classes="ab", output="x")
    # A hand-made spec (e.g. an older server's) is refused by the client and the evaluator alike.
    spec = {**_identity_artifact(C).public_spec(), "preset": "n8192-d3"}
    with pytest.raises(ContextError, match="no depth left") as ctx:
        PrivateClient(spec=spec)
    assert "n8192-d5" in str(ctx.value.hint)
    assert sign_rounds({**spec, "output": "scores"}) == 1


def test_artifact_format_v3_round_trip_and_v1_unchanged(onehot) -> None:
    art = onehot[0]
    files = art.dumps()
    meta = json.loads(files["ensemble.json"])
    assert meta["format"].endswith("/v3") and meta["output"] == "onehot" and meta["head"] == "linear"
    same = EnsembleArtifact.loads(files)
    assert same.output == "onehot" and same.preset == art.preset
    scores = EnsembleArtifact(
        templates=["{}"], weights=np.eye(2)[None], biases=np.zeros((1, 2)), classes=["a", "b"]
    ).dumps()
    v1 = json.loads(scores["ensemble.json"])
    assert v1["format"].endswith("/v1") and "output" not in v1
    assert EnsembleArtifact.loads(scores).output == "scores"
    for bad in (
        {**v1, "output": "onehot"},
        {**meta, "output": "scores"},
        {k: v for k, v in meta.items() if k != "output"},
    ):
        tensors = (
            files["ensemble.safetensors"] if bad.get("format") == meta["format"] else scores["ensemble.safetensors"]
        )
        with pytest.raises(ArtifactError):
            EnsembleArtifact.loads({"ensemble.json": json.dumps(bad).encode(), "ensemble.safetensors": tensors})


def test_reference_one_hot_is_exact_with_hard_signs() -> None:
    logits = np.array([[0.9, -0.9, 0.0, 0.3]])
    sharp = argmax.reference_one_hot(logits, bound=2.0, rounds=12)
    assert np.allclose(sharp, [[1.0, 0.0, 0.0, 0.0]], atol=1e-6)
    soft = argmax.reference_one_hot(logits, bound=2.0, rounds=1)
    assert soft.argmax() == 0 and 0.0 < soft.min() and soft.max() < 1.0
    assert argmax.onehot_levels(2) == 1 and argmax.onehot_levels(4) == 2 and argmax.onehot_levels(10) == 4
    assert argmax.rounds_for(8, argmax.LINEAR_LEVELS, "onehot", 10) == 1
    assert argmax.rounds_for(18, argmax.LINEAR_LEVELS, "onehot", 10) == 6


def test_compact_class_blocks_multiply_a_window_with_an_extra_step() -> None:
    # Three classes: a window of 2 then one extra slot (2 levels, as a block of P = 4 takes).
    art = _identity_artifact(3)
    client = PrivateClient(spec=art.public_spec())
    evaluator = EnsembleEvaluator(artifact=art, public_context=client.evaluation_keys())
    assert art.preset == "n8192-d5" and evaluator.layout.stride == 3 and evaluator.layout.chunk == 0
    logits = np.random.default_rng(35).uniform(-1.0, 1.0, size=(240, 3))
    scores = client.decrypt_batch(evaluator.evaluate_batch(client.encrypt_batch(logits[:, None, :])), total=240)
    assert scores.one_hot is not None
    assert_argmax_agrees(np.array(scores.labels), logits)
    reference = argmax.reference_one_hot(logits, evaluator._bound, evaluator.sign_rounds)
    assert np.max(np.abs(scores.one_hot - reference)) < 1e-3


def test_benchmark_shape_runs_in_a_chunked_lane_with_compact_blocks() -> None:
    """K=8 x 384-d, 10 classes at n16384-d7: one query fills the ciphertext, so it is laid out
    in chunks (64 diagonals instead of 256 with compact 10-slot class blocks) and the one-hot
    product is a window of 8 slots and 2 more; labels and values match plaintext."""
    rng = np.random.default_rng(36)
    art = EnsembleArtifact(
        templates=[f"t{i} {{}}" for i in range(8)],
        weights=rng.normal(size=(8, 10, 384)) / np.sqrt(384),
        biases=rng.normal(size=(8, 10)) * 0.1,
        classes=[str(i) for i in range(10)],
        output="onehot",
    )
    client = PrivateClient(spec=art.public_spec())
    evaluator = EnsembleEvaluator(artifact=art, public_context=client.evaluation_keys())
    lay = evaluator.layout
    assert art.preset == "n16384-d7" and (lay.chunk, lay.stride, lay.baby * lay.giant) == (64, 10, 64)
    assert len(evaluator._weights.diagonals) == 64
    # Five keys (39 MB): step 1, the giant step 8 and every third rotate-and-sum stride; the
    # circuit makes the other steps from those.
    assert lay.galois_steps == (1, 8, 128, 1024) and len(client.evaluation_keys()) < 40e6
    route = evaluator._circuit._route
    assert (route(8), route(256), route(4096), route(2), route(6)) == ((8,), (128, 128), (1024,) * 4, (1, 1), (1,) * 6)
    emb = rng.normal(size=(6, 8, 384))
    emb /= np.linalg.norm(emb, axis=2, keepdims=True)
    scores = client.decrypt_batch(evaluator.evaluate_batch(client.encrypt_batch(emb)), total=6)
    logits = art.plaintext_logits(emb)
    assert scores.one_hot is not None and list(scores.labels) == logits.argmax(axis=1).tolist()
    reference = argmax.reference_one_hot(logits, evaluator._bound, evaluator.sign_rounds)
    assert np.max(np.abs(scores.one_hot - reference)) < 1e-4
    # Wide batches at this ring: the same five keys (the circuit makes the block sums' strides
    # from them), the weights encoded piece by piece as the batch goes (none kept), one region.
    assert client.prefers_wide(12) and not client.prefers_wide(11)  # 48 ciphertexts per body
    wide = rng.normal(size=(24, 8, 384))
    wide /= np.linalg.norm(wide, axis=2, keepdims=True)
    body = client.encrypt_wide_batch(wide)
    assert body[:4] == b"PEW1"
    got = client.decrypt_wide_batch(evaluator.evaluate_wide_batch(body), count=24)
    logits = art.plaintext_logits(wide)
    assert got.one_hot is not None and list(got.labels) == logits.argmax(axis=1).tolist()
    reference = argmax.reference_one_hot(logits, evaluator._wide_state["bound"], evaluator.sign_rounds)
    assert np.max(np.abs(got.one_hot - reference)) < 1e-3
    assert evaluator._wide_state["plain"] is None
