"""The owner's ensemble artifact: safetensors + JSON round trip and validation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from crypto.ensemble import ArtifactError, EnsembleArtifact


def _art() -> EnsembleArtifact:
    rng = np.random.default_rng(0)
    return EnsembleArtifact(
        templates=["{}", "review: {}"],
        weights=rng.normal(size=(2, 3, 8)),
        biases=rng.normal(size=(2, 3)),
        classes=["a", "b", "c"],
        norm_bound=1.0,
    )


def test_round_trip(tmp_path) -> None:
    art = _art()
    art.save(tmp_path)
    again = EnsembleArtifact.load(tmp_path)
    assert np.array_equal(again.weights, art.weights) and again.public_spec() == art.public_spec()
    assert "weights" not in json.dumps(art.public_spec())


def test_invalid_artifacts_refused() -> None:
    art = _art()
    files = art.dumps()
    with pytest.raises(ArtifactError):
        EnsembleArtifact.loads({**files, "ensemble.safetensors": files["ensemble.safetensors"][:-10]})
    meta = json.loads(files["ensemble.json"])
    meta["members"] = 5
    with pytest.raises(ArtifactError):
        EnsembleArtifact.loads({**files, "ensemble.json": json.dumps(meta).encode()})
    with pytest.raises(ArtifactError):
        EnsembleArtifact(
            templates=["{}"],
            weights=np.zeros((2, 3, 4)),
            biases=np.zeros((2, 3)),
            classes=["a", "b", "c"],
        )
    with pytest.raises(ArtifactError):
        EnsembleArtifact(
            templates=["{}"],
            weights=np.full((1, 2, 4), np.nan),
            biases=np.zeros((1, 2)),
            classes=["a", "b"],
        )


def _hidden_art() -> EnsembleArtifact:
    rng = np.random.default_rng(1)
    return EnsembleArtifact(
        templates=["{}", "review: {}"],
        hidden_weights=rng.normal(size=(2, 5, 8)),
        hidden_biases=rng.normal(size=(2, 5)),
        activation=(0.25, 0.5, 0.1),
        weights=rng.normal(size=(2, 3, 5)),
        biases=rng.normal(size=(2, 3)),
        classes=["a", "b", "c"],
    )


def test_hidden_round_trip_and_public_spec(tmp_path) -> None:
    art = _hidden_art()
    art.save(tmp_path)
    again = EnsembleArtifact.load(tmp_path)
    assert again.head == "quadratic_mlp" and again.hidden == 5 and again.dim == 8
    assert again.activation == art.activation and np.array_equal(again.hidden_weights, art.hidden_weights)
    emb = np.random.default_rng(2).normal(size=(4, 2, 8))
    assert np.allclose(again.plaintext_logits(emb), art.plaintext_logits(emb))
    spec = art.public_spec()
    assert spec["head"] == "quadratic_mlp" and spec["hidden"] == 5 and spec["preset"] == "n8192-d5"
    assert spec["format"].endswith("/v2") and "activation" not in spec
    # plaintext_logits is the stated function: average of B_k p(A_k e + a_k) + b_k
    e = emb[0] * np.minimum(1.0, 1.0 / np.linalg.norm(emb[0], axis=1, keepdims=True))
    u = np.einsum("khd,kd->kh", art.hidden_weights, e) + art.hidden_biases
    hidden = 0.25 * u**2 + 0.5 * u + 0.1
    expected = (np.einsum("kch,kh->kc", art.weights, hidden) + art.biases).mean(axis=0)
    assert np.allclose(art.plaintext_logits(emb[0])[0], expected)
    # linear artifacts are still format v1 with exactly weights + biases
    linear = json.loads(_art().dumps()["ensemble.json"])
    assert linear["format"].endswith("/v1") and linear["head"] == "linear"


def test_malformed_hidden_artifacts_refused() -> None:
    from safetensors.numpy import load as st_load
    from safetensors.numpy import save as st_save

    art = _hidden_art()
    files = art.dumps()
    tensors = st_load(files["ensemble.safetensors"])
    meta = json.loads(files["ensemble.json"])

    def load(tensors=tensors, meta=meta):
        files = {"ensemble.json": json.dumps(meta).encode(), "ensemble.safetensors": st_save(tensors)}
        return EnsembleArtifact.loads(files)

    with pytest.raises(ArtifactError, match="exactly"):
        load(tensors={**tensors, "extra": np.zeros(1)})
    with pytest.raises(ArtifactError, match="exactly"):
        load(tensors={k: v for k, v in tensors.items() if k != "hidden_biases"})
    with pytest.raises(ArtifactError, match="hidden_weights"):
        load(tensors={**tensors, "hidden_weights": np.zeros((2, 4, 8))})
    with pytest.raises(ArtifactError, match="hidden_biases"):
        load(tensors={**tensors, "hidden_biases": np.zeros((2, 6))})
    with pytest.raises(ArtifactError, match="finite"):
        load(tensors={**tensors, "hidden_weights": np.full((2, 5, 8), np.inf)})
    with pytest.raises(ArtifactError, match="c2"):
        load(meta={**meta, "activation": [0.0, 1.0, 0.0]})
    with pytest.raises(ArtifactError, match="finite"):
        load(meta={**meta, "activation": [1.0, float("nan"), 0.0]})
    with pytest.raises(ArtifactError):
        load(meta={**meta, "activation": [1.0, 2.0]})
    with pytest.raises(ArtifactError):
        load(meta={**meta, "head": "linear"})  # v2 carries hidden heads only
    with pytest.raises(ArtifactError, match="depth"):
        load(meta={**meta, "preset": "n8192-d3"})
    with pytest.raises(ArtifactError, match="width"):
        load(meta={**meta, "hidden": 7})
    with pytest.raises(ArtifactError, match="together"):
        EnsembleArtifact(
            templates=["{}"],
            weights=np.zeros((1, 2, 3)),
            biases=np.zeros((1, 2)),
            classes=["a", "b"],
            hidden_weights=np.zeros((1, 3, 4)),
        )
