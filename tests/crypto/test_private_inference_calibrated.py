"""A calibrated comparison scale: sharper win counts at the same depth, capped, stated, refused when malformed."""

from __future__ import annotations

import numpy as np
import pytest

from crypto import argmax
from crypto.ensemble import ArtifactError, EnsembleArtifact
from crypto.private_inference.client import PrivateClient
from crypto.private_inference.server import EnsembleEvaluator


def _unit(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    x = rng.normal(size=shape)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _artifact(rng: np.random.Generator, k: int = 4, c: int = 5, d: int = 64, **kw: object) -> EnsembleArtifact:
    return EnsembleArtifact(
        templates=[f"t{i}: {{}}" for i in range(k)],
        weights=rng.normal(size=(k, c, d)) / np.sqrt(d),
        biases=rng.normal(size=(k, c)) * 0.1,
        classes=[f"c{i}" for i in range(c)],
        **kw,  # type: ignore[arg-type]
    )


def test_calibrated_scale_sharpens_win_counts_and_keeps_labels() -> None:
    rng = np.random.default_rng(7)
    art = _artifact(rng)
    cal = art.calibrated(_unit(rng, (400, art.members, art.dim)))
    worst = art.worst_comparison_bound()
    scale = cal.effective_comparison_scale()
    assert scale is not None and scale < worst / 2  # random heads: typical differences are far below the worst case
    assert cal.public_spec()["comparison_scale"] == pytest.approx(scale)
    assert "comparison_scale" not in art.public_spec()
    emb = _unit(rng, (24, art.members, art.dim))
    logits = art.plaintext_logits(emb)
    margins = []
    for a in (art, cal):
        client = PrivateClient(spec=a.public_spec())
        evaluator = EnsembleEvaluator(artifact=a, public_context=client.evaluation_keys())
        assert evaluator._bound == pytest.approx(scale if a is cal else worst)
        got = client.decrypt_batch(evaluator.evaluate_batch(client.encrypt_batch(emb)), total=len(emb))
        assert list(got.labels) == list(logits.argmax(axis=1))
        assert got.win_counts is not None
        ordered = np.sort(got.win_counts, axis=1)
        margins.append(np.median(ordered[:, -1] - ordered[:, -2]))
        # the reference the circuit follows, up to the secret per-query factor in [0.75, 1]
        ref = argmax.reference_win_counts(logits, evaluator._bound, evaluator.sign_rounds)
        assert np.all(np.abs(got.win_counts - ref) <= 0.26 * np.abs(ref - (len(a.classes) - 1) / 2) + 1e-3)
    assert margins[1] > 2 * margins[0]


def test_scale_is_capped_by_the_headroom_and_ignored_when_not_smaller() -> None:
    rng = np.random.default_rng(8)
    art = _artifact(rng)
    worst = art.worst_comparison_bound()
    tiny = EnsembleArtifact(**{**_fields(art), "comparison_scale": worst * 1e-6})
    ratio = argmax.max_range_ratio(1, "scores", 5, 52 - 37 - 3)
    assert tiny.effective_comparison_scale() == pytest.approx(worst / ratio)
    # the cap's worst case fits the flooding amplitude, and twice the ratio would not
    assert argmax.worst_output(ratio * np.sqrt(2), 1, "scores", 5) <= 2.0**12
    assert argmax.worst_output(2 * ratio * np.sqrt(2), 1, "scores", 5) > 2.0**12
    big = EnsembleArtifact(**{**_fields(art), "comparison_scale": worst * 3})
    assert big.effective_comparison_scale() is None
    # one-hot products blow up outside the domain: no room to calibrate at n16384-d8
    assert argmax.max_range_ratio(1, "onehot", 10, 50 - 40 - 3) == 1.0


def test_calibrated_artifact_round_trips() -> None:
    rng = np.random.default_rng(9)
    cal = _artifact(rng).calibrated(_unit(rng, (30, 4, 64)), margin=1.5)
    same = EnsembleArtifact.loads(cal.dumps())
    assert same.comparison_scale == cal.comparison_scale
    assert same.public_spec() == cal.public_spec()


def _fields(art: EnsembleArtifact) -> dict[str, object]:
    return {
        "templates": art.templates,
        "weights": art.weights,
        "biases": art.biases,
        "classes": art.classes,
    }


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), "0.1", True])
def test_bad_scales_are_refused(bad: object) -> None:
    art = _artifact(np.random.default_rng(10))
    with pytest.raises(ArtifactError):
        EnsembleArtifact(**{**_fields(art), "comparison_scale": bad})


def test_bad_calibrations_are_refused() -> None:
    rng = np.random.default_rng(11)
    art = _artifact(rng)
    with pytest.raises(ArtifactError, match="Q >= 20"):
        art.calibrated(_unit(rng, (5, 4, 64)))
    with pytest.raises(ArtifactError):
        art.calibrated(_unit(rng, (30, 3, 64)))
    emb = _unit(rng, (30, 4, 64))
    emb[0, 0, 0] = np.nan
    with pytest.raises(ArtifactError, match="finite"):
        art.calibrated(emb)
    with pytest.raises(ArtifactError, match="margin"):
        art.calibrated(_unit(rng, (30, 4, 64)), margin=0.5)
    hidden = EnsembleArtifact(
        templates=["{}"],
        weights=rng.normal(size=(1, 3, 4)),
        biases=np.zeros((1, 3)),
        classes=["a", "b", "c"],
        hidden_weights=rng.normal(size=(1, 4, 8)),
        hidden_biases=np.zeros((1, 4)),
        activation=(0.5, 0.5, 0.0),
    )
    with pytest.raises(ArtifactError, match="linear heads only"):
        hidden.calibrated(_unit(rng, (30, 1, 8)))
