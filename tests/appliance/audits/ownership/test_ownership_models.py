"""DOV4CL and the keyed watermark on real, independently trained small models (digits)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from appliance.audits.ownership.dov4cl import DOV4CLInputs
from appliance.audits.ownership.watermark import RECOMMENDED_DECOY_FRACTION, WatermarkInputs, mark_dataset
from appliance.audits.registry import VERDICT_NEGATIVE, VERDICT_POSITIVE, create_method
from models.architectures import SmallCNN
from models.vision import (
    ENCODERS,
    ConvClassifier,
    accuracy,
    build_model,
    digits_splits,
    embed_fn,
    label_fn,
    proba_fn,
    train_classifier,
    train_contrastive,
)

N_PUB = 128
EPOCHS = 400
#: SimSiam (no negatives) needs more steps than SimCLR to leave a per-image trace.
SIMSIAM_EPOCHS = 1000
KEY = bytes(range(32))
# Clean-label marks need a stronger blend to be learnt without relabelling.
CLEAN_LABEL_STRENGTH = 0.3


@pytest.fixture(scope="module")
def splits():
    torch.set_num_threads(1)
    return digits_splits(seed=0)


def _encoder(data: np.ndarray, seed: int, arch: str = "conv_encoder", objective: str = "simclr"):
    enc = build_model(ENCODERS[arch], seed=seed, width=16)
    epochs = SIMSIAM_EPOCHS if objective == "simsiam" else EPOCHS
    return train_contrastive(enc, data, objective=objective, seed=seed, epochs=epochs, batch_size=N_PUB)


@pytest.fixture(scope="module")
def encoders(splits):
    pub = splits.public[0][:N_PUB]
    alt = splits.alternative[0]
    half = np.concatenate([pub[: N_PUB // 2], alt[-N_PUB // 2 :]])
    return {
        "shadow": _encoder(alt[:N_PUB], seed=100),
        "full": _encoder(pub, seed=1),
        "half": _encoder(half, seed=2),
        "none": _encoder(alt[N_PUB : 2 * N_PUB], seed=3),
        "other_arch": _encoder(alt[2 * N_PUB : 3 * N_PUB], seed=4, arch="pool_encoder"),
    }


@pytest.fixture(scope="module")
def simsiam_encoders(splits):
    pub = splits.public[0][:N_PUB]
    alt = splits.alternative[0]
    return {
        "shadow": _encoder(alt[:N_PUB], seed=100, objective="simsiam"),
        "full": _encoder(pub, seed=1, objective="simsiam"),
        "none": _encoder(alt[N_PUB : 2 * N_PUB], seed=3, objective="simsiam"),
    }


def _dov(splits, encoders, suspect: str, seed: int = 0):
    inputs = DOV4CLInputs(
        public=splits.public[0][:N_PUB],
        private=splits.private[0],
        suspect=embed_fn(encoders[suspect]),
        shadow=embed_fn(encoders["shadow"]),
    )
    return create_method("dov4cl").run(inputs, params={"rounds": 20}, seed=seed)


def test_dov4cl_detects_encoder_trained_on_public_set(splits, encoders):
    result = _dov(splits, encoders, "full")
    assert result.verdict == VERDICT_POSITIVE
    assert result.p_value < 0.05
    # every image x 16 views, plus the invariance probe: 6 views of 256 images
    n_images = N_PUB + len(splits.private[0])
    assert result.queries == n_images * 16 + 6 * 256
    assert result.statistics["distinct_public_images"] == N_PUB
    assert result.statistics["views"]["flip"] is True  # trained with flips: flip-invariant
    assert {"reference_p", "calibrated_p"} <= set(result.statistics)


def test_dov4cl_mean_or_upper_quartile_statistic(splits, encoders):
    from appliance.audits.errors import AuditParameterError

    inputs = DOV4CLInputs(public=splits.public[0][:N_PUB], private=splits.private[0],
                          suspect=embed_fn(encoders["full"]), shadow=embed_fn(encoders["shadow"]))
    method = create_method("dov4cl")
    combined = method.run(inputs, params={"rounds": 20, "statistic": "mean_or_upper_quartile"}, seed=0)
    plain = method.run(inputs, params={"rounds": 20}, seed=0)
    assert combined.verdict == VERDICT_POSITIVE and combined.statistics["statistic"] == "mean_or_upper_quartile"
    assert combined.statistics["upper_quartile_difference"] > 0
    # the same residuals: the mean difference is the plain test's statistic
    assert combined.statistics["calibrated_statistic"] == pytest.approx(plain.statistics["calibrated_statistic"])
    assert plain.statistics["statistic"] == "mean" and "upper_quartile_difference" not in plain.statistics
    with pytest.raises(AuditParameterError, match="statistic"):
        method.run(inputs, params={"statistic": "median"}, seed=0)


@pytest.mark.parametrize("suspect", ["none", "other_arch"])
def test_dov4cl_negatives_not_detected(splits, encoders, suspect):
    result = _dov(splits, encoders, suspect)
    assert result.verdict == VERDICT_NEGATIVE
    assert result.p_value > 0.05


def test_dov4cl_statistic_grows_with_share_of_public_data(splits, encoders):
    stats = [_dov(splits, encoders, name).statistics["calibrated_statistic"] for name in ("none", "half", "full")]
    assert stats[0] < stats[1] < stats[2]


def test_dov4cl_detects_simsiam_encoder_against_simsiam_shadow(splits, simsiam_encoders):
    result = _dov(splits, simsiam_encoders, "full")
    assert result.verdict == VERDICT_POSITIVE, result.statistics
    negative = _dov(splits, simsiam_encoders, "none")
    assert negative.verdict == VERDICT_NEGATIVE, negative.statistics
    assert result.statistics["calibrated_statistic"] > negative.statistics["calibrated_statistic"]


def test_dov4cl_simsiam_recipe_does_not_collapse(splits, simsiam_encoders):
    # The projector's BatchNorm keeps the embedding spread over many directions; without
    # it these encoders collapse to 2-4 effective dimensions and DOV4CL sees nothing.
    emb = embed_fn(simsiam_encoders["none"])(splits.private[0])
    sv = np.linalg.svd(emb - emb.mean(axis=0), compute_uv=False)
    share = sv**2 / np.sum(sv**2)
    assert np.exp(-np.sum(share * np.log(share + 1e-12))) > 6.0


def test_dov4cl_is_deterministic_for_a_seed(splits, encoders):
    a = _dov(splits, encoders, "full", seed=5)
    b = _dov(splits, encoders, "full", seed=5)
    assert a.statistics == b.statistics and a.p_value == b.p_value


@pytest.fixture(scope="module")
def classifiers(splits):
    (x, y) = splits.public
    # Default 1% marked, plus decoys for key specificity.
    marked = mark_dataset(x, y, KEY, target_class=0, decoy_fraction=RECOMMENDED_DECOY_FRACTION)
    # The weaker SmallCNN needs a higher marking rate to learn the trigger.
    marked_5 = mark_dataset(x, y, KEY, fraction=0.05, target_class=0)
    clean_label = mark_dataset(
        x, y, KEY, fraction=0.08, target_class=0, clean_label=True, strength=CLEAN_LABEL_STRENGTH
    )

    def conv(data_x, data_y, seed):
        model = build_model(ConvClassifier, seed=seed, width=16)
        return train_classifier(model, data_x, data_y, seed=seed, epochs=40)

    def small(data_x, data_y, seed):
        model = build_model(SmallCNN, seed=seed, in_channels=1, image_size=16, num_classes=10)
        return train_classifier(model, data_x, data_y, seed=seed, epochs=40)

    alt_x, alt_y = splits.alternative
    return {
        "clean": conv(x, y, 1),
        "marked": conv(marked.x, marked.y, 1),
        "clean_label": conv(clean_label.x, clean_label.y, 1),
        "other_seed_alt": conv(alt_x, alt_y, 7),
        "other_arch": small(x, y, 2),
        "marked_small": small(marked_5.x, marked_5.y, 2),
    }


def _wm(splits, model, mode: str = "proba", strength: float = 0.15):
    x, y = splits.private
    fn = proba_fn(model) if mode == "proba" else label_fn(model)
    inputs = WatermarkInputs(benign=x, benign_labels=y, suspect=fn, key=KEY, target_class=0, strength=strength)
    return create_method("watermark_dvbw").run(inputs, params={"mode": mode}, seed=3)


@pytest.mark.parametrize("mode", ["proba", "label"])
@pytest.mark.parametrize("name", ["marked", "marked_small", "clean_label"])
def test_watermark_detects_models_trained_on_marked_data(splits, classifiers, name, mode):
    strength = CLEAN_LABEL_STRENGTH if name == "clean_label" else 0.15
    result = _wm(splits, classifiers[name], mode, strength)
    assert result.verdict == VERDICT_POSITIVE, result.statistics
    assert result.queries == 200


@pytest.mark.parametrize("mode", ["proba", "label"])
@pytest.mark.parametrize("name", ["clean", "other_seed_alt", "other_arch"])
def test_watermark_negatives_not_detected(splits, classifiers, name, mode):
    result = _wm(splits, classifiers[name], mode)
    assert result.verdict == VERDICT_NEGATIVE, result.statistics


@pytest.mark.parametrize("mode", ["proba", "label"])
@pytest.mark.parametrize("name", ["marked"])
def test_watermark_is_key_specific(splits, classifiers, name, mode):
    # Decoy noise in the marked set teaches the model the key's pattern, not "any noise":
    # the same model is detected with its key (test above) and not with other keys.
    for other in (bytes(range(1, 33)), bytes(range(200, 232))):
        x, y = splits.private
        fn = proba_fn(classifiers[name]) if mode == "proba" else label_fn(classifiers[name])
        inputs = WatermarkInputs(benign=x, benign_labels=y, suspect=fn, key=other, target_class=0)
        result = create_method("watermark_dvbw").run(inputs, params={"mode": mode}, seed=3)
        assert result.verdict == VERDICT_NEGATIVE, result.statistics


def test_watermark_costs_at_most_one_point_of_accuracy(splits, classifiers):
    x, y = splits.private
    clean = accuracy(classifiers["clean"], x, y)
    marked = accuracy(classifiers["marked"], x, y)
    clean_label = accuracy(classifiers["clean_label"], x, y)
    assert clean > 0.9
    assert clean - marked <= 0.01
    assert clean - clean_label <= 0.01
