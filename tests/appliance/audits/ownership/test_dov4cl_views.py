"""DOV4CL's views: data on its own scale, configurable view families, and a flip policy chosen
label-blind from the suspect's own invariance."""

from __future__ import annotations

import numpy as np
import pytest

from appliance.audits.errors import AuditInputError, AuditParameterError
from appliance.audits.ownership.dov4cl import DOV4CLInputs, data_range, flip_invariance, view_specs
from appliance.audits.registry import create_method
from models.vision import digits_splits

PARAMS = {"rounds": 6, "k": 12, "permutations": 500}


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    splits = digits_splits(seed=0)
    return splits.public[0][:120], splits.private[0][:120]


def _projection(seed: int, dim: int = 256) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((dim, 24)) / 16.0


def _embed(w: np.ndarray, scale: float = 1.0):
    def embed(x: np.ndarray) -> np.ndarray:
        return np.tanh((np.asarray(x, np.float64) / scale).reshape(len(x), -1) @ w)
    return embed


def _flip_symmetric(w: np.ndarray):
    def embed(x: np.ndarray) -> np.ndarray:
        return _embed(w)(x) + _embed(w)(x[..., ::-1])
    return embed


def _flip_antisymmetric(w: np.ndarray):
    def embed(x: np.ndarray) -> np.ndarray:
        return _embed(w)(x) - _embed(w)(x[..., ::-1])
    return embed


def test_suspect_is_queried_on_its_own_scale(digits):
    public, private = digits
    w, w0 = _projection(1), _projection(2)
    unit = create_method("dov4cl").run(
        DOV4CLInputs(public=public, private=private, suspect=_embed(w), shadow=_embed(w0)),
        params=PARAMS, seed=3)
    seen: list[float] = []

    def suspect16(x: np.ndarray) -> np.ndarray:
        seen.append(float(x.max()))
        return _embed(w, 16.0)(x)

    scaled = create_method("dov4cl").run(
        DOV4CLInputs(public=public * 16, private=private * 16, suspect=suspect16, shadow=_embed(w0, 16.0)),
        params=PARAMS, seed=3)
    assert max(seen) > 8  # the views were on the 0..16 scale, not clamped to [0, 1]
    assert scaled.statistics["views"]["value_range"] == [0.0, 16.0]
    assert scaled.statistics["calibrated_statistic"] == pytest.approx(unit.statistics["calibrated_statistic"],
                                                                      rel=1e-4, abs=1e-6)
    assert scaled.p_value == pytest.approx(unit.p_value)
    assert scaled.statistics["warnings"] == []


def test_declared_range_must_cover_the_data(digits):
    public, private = digits
    assert data_range(public, private, None) == (0.0, 1.0)
    assert data_range(public, private, [-1, 1]) == (-1.0, 1.0)
    with pytest.raises(AuditInputError, match="outside the declared value_range"):
        data_range(public * 16, private * 16, [0, 1])
    w = _projection(1)
    with pytest.raises(AuditParameterError, match="value_range"):
        create_method("dov4cl").run(DOV4CLInputs(public=public, private=private, suspect=_embed(w),
                                                 shadow=_embed(w)), params={**PARAMS, "value_range": [1, 0]}, seed=0)


def test_saturating_views_raise_a_warning(digits):
    public, private = digits
    w = _projection(1)
    result = create_method("dov4cl").run(
        DOV4CLInputs(public=public, private=private, suspect=_embed(w), shadow=_embed(_projection(2))),
        params={**PARAMS, "views": {"flip": False, "noise": 0.8, "brightness": 0.9}}, seed=0)
    assert result.statistics["warnings"] and "value range" in result.statistics["warnings"][0]


def test_view_parameters_are_checked():
    g, local = view_specs({"flip": True, "rotation": 15, "global_scale": [0.6, 1.0]}, flip=True)
    assert g.flip_p == 0.5 and g.rotation == 15 and g.scale == (0.6, 1.0) and local.scale == (0.15, 0.45)
    for bad in ({"flips": True}, {"flip": "maybe"}, {"rotation": 400}, {"global_scale": [0.9, 0.1]},
                {"noise": -1}, {"local_scale": 0.3}):
        with pytest.raises(AuditParameterError):
            view_specs(bad, flip=False)


def test_flip_policy_follows_the_suspects_invariance(digits):
    public, private = digits
    w = _projection(5)
    pooled = np.concatenate([public, private])
    symmetric = flip_invariance(pooled, _flip_symmetric(w), probe=128, seed=0, value_range=(0.0, 1.0))
    antisymmetric = flip_invariance(pooled, _flip_antisymmetric(w), probe=128, seed=0, value_range=(0.0, 1.0))
    assert symmetric > 1.0 > 0.0 > antisymmetric
    for embed, expected in ((_flip_symmetric(w), True), (_flip_antisymmetric(w), False)):
        result = create_method("dov4cl").run(
            DOV4CLInputs(public=public, private=private, suspect=embed, shadow=_embed(_projection(6))),
            params=PARAMS, seed=0)
        assert result.statistics["views"]["flip"] is expected
        assert (result.statistics["views"]["global"]["flip_p"] > 0) is expected


def test_flip_policy_is_blind_to_which_images_are_public(digits):
    # The policy may depend on the pooled images only; otherwise the permutation test over
    # public/private labels would no longer be exact.
    public, private = digits
    w = _projection(7)
    a = flip_invariance(np.concatenate([public, private]), _embed(w), probe=64, seed=4, value_range=(0.0, 1.0))
    b = flip_invariance(np.concatenate([private, public]), _embed(w), probe=64, seed=4, value_range=(0.0, 1.0))
    rng = np.random.default_rng(0)
    pooled = np.concatenate([public, private])
    c = flip_invariance(pooled[rng.permutation(len(pooled))], _embed(w), probe=64, seed=4, value_range=(0.0, 1.0))
    assert a == pytest.approx(b, abs=1e-12) and a == pytest.approx(c, abs=1e-12)


def test_null_sets_stay_calibrated_under_the_auto_policy(digits):
    # 40 random public/private splits of one pool, suspect and shadow independent of both:
    # p-values must be roughly uniform (few below 0.05, mean near 0.5).
    public, private = digits
    pool = np.concatenate([public, private])
    rng = np.random.default_rng(11)
    p_values = []
    for i in range(40):
        order = rng.permutation(len(pool))
        result = create_method("dov4cl").run(
            DOV4CLInputs(public=pool[order[:60]], private=pool[order[60:120]],
                         suspect=_flip_symmetric(_projection(100 + i)), shadow=_embed(_projection(200 + i))),
            params={"rounds": 4, "k": 10, "permutations": 400, "invariance_probe": 32}, seed=i)
        p_values.append(result.p_value)
    p = np.array(p_values)
    assert (p < 0.05).sum() <= 5  # 2 expected; P(>5 | exact test) < 0.02
    assert 0.35 < p.mean() < 0.65


def test_shadow_that_does_not_match_the_suspect_is_a_caution(digits):
    public, private = digits
    w = _projection(5)
    matched = create_method("dov4cl").run(
        DOV4CLInputs(public=public, private=private, suspect=_flip_symmetric(w),
                     shadow=_flip_symmetric(_projection(6))),
        params=PARAMS, seed=0)
    assert matched.statistics["cautions"] == []
    mismatched = create_method("dov4cl").run(
        DOV4CLInputs(public=public, private=private, suspect=_flip_symmetric(w),
                     shadow=_flip_antisymmetric(np.random.default_rng(6).standard_normal((256, 40)) / 16)),
        params=PARAMS, seed=0)
    cautions = " ".join(mismatched.statistics["cautions"])
    assert "24 dimensions" in cautions and "flip invariance" in cautions
