"""DOV4CL's views: data on its own scale, configurable view families, and a flip policy chosen
label-blind from the suspect's own invariance."""

from __future__ import annotations

import numpy as np
import pytest

from appliance.audits.errors import AuditInputError, AuditParameterError
from appliance.audits.ownership.dov4cl import (
    DOV4CL,
    PROFILE_TOLERANCE,
    DOV4CLInputs,
    data_range,
    flip_invariance,
    invariance_profile,
    suspect_profile,
    view_specs,
)
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


def test_views_of_an_image_do_not_depend_on_its_set(digits):
    # Every image gets the views its content and the seed give it, whichever set it is in and
    # wherever it sits: swapping the sets or shuffling them only moves the rows.
    public, private = digits
    method = DOV4CL()
    p = method.resolve_params({"n_global": 3})
    views, is_public = method.build_image_queries(public, private, p, seed=4)
    assert views.shape[:2] == (240, 3) and is_public.sum() == 120
    swapped, _ = method.build_image_queries(private, public, p, seed=4)
    assert np.array_equal(swapped, np.concatenate([views[120:], views[:120]]))
    order = np.random.default_rng(0).permutation(120)
    shuffled, _ = method.build_image_queries(public[order], private, p, seed=4)
    assert np.array_equal(shuffled[:120], views[order])
    assert not np.array_equal(method.build_image_queries(public, private, p, seed=5)[0], views)


def _memoriser(bank: np.ndarray, seed: int):
    # An encoder that has memorised every image of ``bank``: similarities to them, projected.
    flat_bank = bank.reshape(len(bank), -1)
    w = np.random.default_rng(seed).standard_normal((len(bank), 24))

    def embed(x: np.ndarray) -> np.ndarray:
        flat = np.asarray(x, np.float64).reshape(len(x), -1)
        d2 = (flat**2).sum(1)[:, None] - 2 * flat @ flat_bank.T + (flat_bank**2).sum(1)[None]
        return np.exp(-d2 / 4.0) @ w
    return embed


def test_null_sets_stay_calibrated_under_every_view_policy(digits):
    # Random public/private splits of one pool (40 under the default policy, 20 under each fixed
    # one), with the suspect independent of the split: a random projection, or an encoder that
    # memorised the whole pool (every image is "trained on", so again nothing tells public from
    # private). p-values must be roughly uniform: few below 0.05 (P(> 5 of 40) and P(> 3 of 20)
    # are both < 0.02 for an exact test), mean near 0.5.
    public, private = digits
    pool = np.concatenate([public[:60], private[:60]])
    for policy, count, most in (("auto", 40, 5), (False, 20, 3), (True, 20, 3)):
        rng = np.random.default_rng(11)
        p_values = []
        for i in range(count):
            order = rng.permutation(len(pool))
            suspect = _flip_symmetric(_projection(100 + i)) if i % 2 else _memoriser(pool, i)
            result = create_method("dov4cl").run(
                DOV4CLInputs(public=pool[order[:60]], private=pool[order[60:]],
                             suspect=suspect, shadow=_embed(_projection(200 + i))),
                params={"n_global": 4, "k": 10, "rounds": 2, "permutations": 400, "invariance_probe": 32,
                        "views": {"flip": policy}}, seed=i)
            p_values.append(result.p_value)
        p = np.array(p_values)
        assert (p < 0.05).sum() <= most, (policy, np.sort(p)[:8])
        assert 0.3 < p.mean() < 0.7, policy


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
    assert "24 dimensions" in cautions and "invariance differs" in cautions and "flip " in cautions
    assert mismatched.statistics["views"]["shadow_invariance"]["flip"] < 0.0 < \
        mismatched.statistics["views"]["invariance"]["flip"]


def _radial(x: np.ndarray) -> np.ndarray:
    """Mean intensity in rings around the centre, one ring per half pixel: unchanged by
    rotations (up to resampling), as an encoder trained with rotations nearly is."""
    x = np.asarray(x, np.float64)
    side = x.shape[-1]
    yy, xx = np.mgrid[:side, :side] - (side - 1) / 2
    ring = (2 * np.hypot(yy, xx)).astype(int).ravel()
    flat = x.reshape(len(x), -1)
    rings = np.stack([flat[:, ring == r].mean(axis=1) for r in np.unique(ring)], axis=1)
    return np.tanh(4 * (rings - rings.mean()))


def test_invariance_profile_tells_a_rotation_invariant_suspect_from_shadows(digits):
    public, private = digits
    pooled = np.concatenate([public, private])
    rotation_free = invariance_profile(pooled, _radial, probe=128, seed=0, value_range=(0.0, 1.0))
    plain = invariance_profile(pooled, _embed(_projection(8)), probe=128, seed=0, value_range=(0.0, 1.0))
    assert rotation_free["rotation"] > plain["rotation"] + PROFILE_TOLERANCE["rotation"]
    assert set(rotation_free) == {"flip", "rotation", "noise", "crop"}
    result = create_method("dov4cl").run(
        DOV4CLInputs(public=public, private=private, suspect=_radial, shadow=_embed(_projection(8))),
        params=PARAMS, seed=0)
    assert "rotation" in " ".join(result.statistics["cautions"])
    assert result.statistics["views"]["invariance"] == pytest.approx(
        invariance_profile(pooled, _radial, probe=PARAMS.get("invariance_probe", 256), seed=0,
                           value_range=(0.0, 1.0)))


def test_a_profile_measured_beforehand_is_the_audits_own(digits):
    # What a caller chooses from the profile (the shadows' training views) may depend on the
    # pooled images only: any split of the pool measures the same profile. Handed to the audit,
    # it is not measured again, gives the same report and its queries are counted.
    public, private = digits
    method = create_method("dov4cl")
    p = method.resolve_params(PARAMS)
    calls: list[int] = []

    def suspect(x: np.ndarray) -> np.ndarray:
        calls.append(len(x))
        return _radial(x)

    profile = suspect_profile(public, private, suspect, p, seed=2)
    cost = sum(calls)
    pool = np.concatenate([public, private])
    order = np.random.default_rng(5).permutation(len(pool))
    for pub, pvt in ((private, public), (pool[order[:100]], pool[order[100:]])):
        assert suspect_profile(pub, pvt, _radial, p, seed=2) == profile
    shadow = _embed(_projection(8))
    measured = method.run(DOV4CLInputs(public=public, private=private, suspect=_radial, shadow=shadow),
                          params=PARAMS, seed=2)
    calls.clear()
    given = method.run(DOV4CLInputs(public=public, private=private, suspect=suspect, shadow=shadow,
                                    invariance=(profile, cost)), params=PARAMS, seed=2)
    assert given.statistics == measured.statistics and given.queries == measured.queries
    assert sum(calls) == measured.queries - cost == given.statistics["audit_queries"]
    for bad in (({"flip": 1.0}, cost), (profile, -1), ({**profile, "hue": 1.0}, cost)):
        with pytest.raises(AuditInputError):
            method.run(DOV4CLInputs(public=public, private=private, suspect=_radial, shadow=shadow,
                                    invariance=bad), params=PARAMS, seed=2)


@pytest.mark.parametrize("policy", ["auto", False, True])
def test_every_per_image_score_is_blind_to_which_images_are_public(digits, policy):
    # The permutation test is exact only if each image's residual score is a function of the
    # pooled images and the seed, never of the labels (views, flip policy, centring,
    # standardisation, the shadows' fit). Then swapping the sets must give exactly -T and
    # shuffling within a set exactly T. The suspect memorised the public images: a real signal
    # under flip-free views (T ~ 0.15), little under forced flips (it is not flip-invariant).
    public, private = digits
    suspect = _memoriser(public, 3)
    shadows = [_embed(_projection(8)), _flip_symmetric(_projection(9))]
    params = {**PARAMS, "views": {"flip": policy}}

    def statistic(pub: np.ndarray, pvt: np.ndarray) -> float:
        result = create_method("dov4cl").run(
            DOV4CLInputs(public=pub, private=pvt, suspect=suspect, shadow=shadows), params=params, seed=3)
        return float(result.statistics["calibrated_statistic"])

    t = statistic(public, private)
    assert abs(t) > 0.01 and (t > 0.1 or policy is True)
    assert statistic(private, public) == pytest.approx(-t, abs=1e-9)
    order = np.random.default_rng(1).permutation(len(public))
    assert statistic(public[order], private[::-1]) == pytest.approx(t, abs=1e-9)
