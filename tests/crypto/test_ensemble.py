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
