"""Registry, statistical tests and input validation of the audit methods (no training)."""

from __future__ import annotations

import numpy as np
import pytest

from appliance.audits.errors import (
    AuditInputError,
    AuditParameterError,
    QueryBudgetExceeded,
    QueryError,
    WatermarkKeyError,
)
from appliance.audits.ownership.dov4cl import DOV4CL, DOV4CLInputs, round_relations, shadow_adjusted
from appliance.audits.ownership.watermark import (
    WatermarkInputs,
    apply_trigger,
    make_trigger,
    mark_dataset,
)
from appliance.audits.registry import (
    AuditMethod,
    AuditResult,
    create_method,
    list_methods,
    register_method,
)
from appliance.audits.stats import (
    binomial_greater,
    paired_margin_greater,
    permutation_mean_diff,
    permutation_mean_or_upper,
    welch_greater,
)


def test_registry_lists_and_creates_methods():
    assert {"dov4cl", "watermark_dvbw"} <= set(list_methods())
    assert create_method("dov4cl").name == "dov4cl"
    with pytest.raises(ValueError, match="known methods: .*dov4cl"):
        create_method("nope")


def test_register_rejects_conflicts_and_non_methods():
    class Dummy(AuditMethod):
        name = "dummy_test"

        @classmethod
        def defaults(cls):
            return {"a": 1}

        def execute(self, inputs, params, *, seed, progress, log):
            return AuditResult(
                method=self.name,
                version="0",
                statistics={},
                p_value=1.0,
                verdict="not_detected",
                alpha=0.05,
                queries=0,
                parameters={},
            )

    register_method("dummy_test", Dummy)
    register_method("dummy_test", Dummy)
    with pytest.raises(ValueError, match="already registered"):
        register_method("dummy_test", type("Other", (Dummy,), {}))
    with pytest.raises(TypeError):
        register_method("x", int)  # type: ignore[arg-type]
    with pytest.raises(AuditParameterError, match="unknown parameter 'b'"):
        create_method("dummy_test").run(None, params={"b": 2}, seed=0)
    # the template fills the effective parameters and the seed, and times the run
    result = create_method("dummy_test").run(None, params={"a": 3}, seed=7)
    assert result.parameters == {"a": 3, "seed": 7} and result.timings["total_s"] >= 0
    with pytest.raises(AuditParameterError, match="seed must be an integer"):
        create_method("dummy_test").run(None, seed=True)  # type: ignore[arg-type]
    # an abstract method (no execute) cannot be made at all
    with pytest.raises(TypeError):
        type("NoExecute", (AuditMethod,), {"defaults": classmethod(lambda cls: {})})()


def test_permutation_test_is_calibrated_and_powerful():
    rng = np.random.default_rng(0)
    groups = np.arange(60) < 30
    null_p = [permutation_mean_diff(rng.normal(size=60), groups, permutations=400, rng=rng)[1] for _ in range(200)]
    rate = np.mean(np.array(null_p) < 0.05)
    assert rate <= 0.09
    shifted = rng.normal(size=60) + groups * 1.0
    assert permutation_mean_diff(shifted, groups, permutations=400, rng=rng)[1] < 0.01


def test_mean_or_upper_quartile_test_is_calibrated_and_catches_a_shifted_tail():
    rng = np.random.default_rng(3)
    groups = np.arange(300) < 180
    null_p = np.array([permutation_mean_or_upper(rng.standard_t(4, size=300), groups, permutations=300, rng=rng)[2]
                       for _ in range(400)])
    # exact under exchangeability: uniform p (400 draws; binomial sd of the 5% rate ~1.1 points)
    assert 0.02 <= np.mean(null_p < 0.05) <= 0.085 and 0.42 <= np.mean(null_p < 0.5) <= 0.58
    # residuals with a long lower tail (as DOV4CL's: images a suspect finds far harder than its
    # shadows predict), the first group shifted: the tail adds noise to the mean, not to the
    # upper quartile, so the combined test finds the shift more often
    found = {"mean": 0, "combined": 0}
    for _ in range(40):
        x = 1.0 - rng.exponential(size=300) + groups * 0.25
        found["mean"] += permutation_mean_diff(x, groups, permutations=300, rng=rng)[1] < 0.05
        found["combined"] += permutation_mean_or_upper(x, groups, permutations=300, rng=rng)[2] < 0.05
    assert found["combined"] >= found["mean"] + 6 and found["combined"] >= 34, found
    # and with symmetric noise it keeps the mean's power
    whole = rng.normal(size=300) + groups * 0.3
    assert permutation_mean_or_upper(whole, groups, permutations=500, rng=rng)[2] < 0.05
    mean, upper, _ = permutation_mean_or_upper(whole, groups, permutations=10, rng=rng)
    assert mean == pytest.approx(whole[groups].mean() - whole[~groups].mean())
    assert upper == pytest.approx(np.quantile(whole[groups], 0.75) - np.quantile(whole[~groups], 0.75))
    with pytest.raises(ValueError):
        permutation_mean_or_upper(whole, groups, permutations=10, rng=rng, quantile=1.0)


def test_parametric_tests_directions():
    rng = np.random.default_rng(1)
    a, b = rng.normal(1, 1, 50), rng.normal(0, 1, 50)
    assert welch_greater(a, b)[1] < 0.01 and welch_greater(b, a)[1] > 0.5
    base = rng.uniform(0, 0.1, 40)
    assert paired_margin_greater(base + 0.6, base, margin=0.2)[1] < 1e-6
    assert paired_margin_greater(base + 0.1, base, margin=0.2)[1] == 1.0
    assert binomial_greater(90, 100, 0.3) < 1e-10
    assert binomial_greater(25, 100, 0.3) > 0.5


def test_round_relations_detects_stable_views():
    rng = np.random.default_rng(2)
    k, views, dim = 8, 5, 16
    base = rng.normal(size=(2 * k, 1, dim))
    noise = rng.normal(size=(2 * k, views, dim))
    scale = np.r_[np.full(k, 0.1), np.full(k, 1.0)][:, None, None]
    unary, binary, gaps = round_relations(base + scale * noise, k=k, n_global=2)
    for kind in ("gg", "ll", "gl"):
        assert unary[kind][:k].mean() > unary[kind][k:].mean()
        assert binary[kind][:k].mean() < binary[kind][k:].mean()
        assert gaps[kind][0] > 0 and gaps[kind][1] > 0


def _embed(x):
    flat = x.reshape(len(x), -1)
    return np.stack([flat.mean(1), flat.std(1), flat[:, 0]], axis=1)


def _images(n, seed=0, shape=(1, 8, 8)):
    return np.random.default_rng(seed).uniform(0, 1, (n, *shape)).astype(np.float32)


def test_dov4cl_bad_inputs_raise_named_errors():
    method = create_method("dov4cl")
    ok = dict(public=_images(40), private=_images(40, 1), suspect=_embed, shadow=_embed)
    with pytest.raises(AuditInputError, match="same"):
        method.run(DOV4CLInputs(**{**ok, "private": _images(40, 1, (1, 6, 6))}), seed=0)
    with pytest.raises(AuditInputError, match="0 samples"):
        method.run(DOV4CLInputs(**{**ok, "public": _images(0)}), seed=0)
    with pytest.raises(AuditInputError, match="NaN"):
        bad = _images(40)
        bad[0, 0, 0, 0] = np.nan
        method.run(DOV4CLInputs(**{**ok, "public": bad}), seed=0)
    with pytest.raises(AuditInputError, match="k=32"):
        method.run(DOV4CLInputs(**{**ok, "public": _images(10)}), seed=0)
    with pytest.raises(AuditParameterError):
        method.run(DOV4CLInputs(**ok), params={"rounds": 0}, seed=0)
    with pytest.raises(QueryBudgetExceeded, match="budget"):
        method.run(DOV4CLInputs(**ok, query_budget=100), params={"rounds": 2}, seed=0)
    with pytest.raises(QueryError, match="shape"):
        junk = DOV4CLInputs(**{**ok, "suspect": lambda x: np.zeros((len(x) - 1, 3))})
        method.run(junk, params={"rounds": 2}, seed=0)
    with pytest.raises(QueryError, match="NaN"):
        junk = DOV4CLInputs(**{**ok, "suspect": lambda x: np.full((len(x), 3), np.nan)})
        method.run(junk, params={"rounds": 2}, seed=0)


def test_dov4cl_runs_on_synthetic_embeddings():
    inputs = DOV4CLInputs(public=_images(40), private=_images(40, 1), suspect=_embed, shadow=_embed)
    progress: list[float] = []
    result = create_method("dov4cl").run(
        inputs,
        params={"rounds": 3, "k": 8, "permutations": 200},
        seed=0,
        progress=progress.append,
    )
    # every image (40 + 40) x 16 global views, plus the invariance probe: 6 views of all 80
    # (plain, a crop, flipped, rotated, noisy)
    assert result.queries == 80 * 16 + 6 * 80
    assert result.statistics["queries"] == result.queries
    assert result.statistics["audit_queries"] == 80 * 16
    assert result.statistics["distinct_public_images"] == result.statistics["distinct_private_images"] == 40
    assert result.statistics["views"]["flip_invariance"] is not None
    fixed = create_method("dov4cl").run(
        inputs, params={"rounds": 3, "k": 8, "permutations": 200, "views": {"flip": False}}, seed=0)
    assert fixed.queries == 80 * 16
    assert fixed.statistics["views"] == {**fixed.statistics["views"], "flip": False, "flip_invariance": None}
    rounds = create_method("dov4cl").run(
        inputs, params={"design": "rounds", "rounds": 3, "k": 8, "n_global": 2, "n_local": 6,
                        "permutations": 200, "views": {"flip": False}}, seed=0)
    assert rounds.queries == 3 * 16 * 8 and rounds.statistics["design"] == "rounds"
    assert progress[-1] == 1.0
    # The suspect is the shadow: identical scores give a zero statistic, p = 1.
    assert result.statistics["calibrated_statistic"] == pytest.approx(0.0, abs=1e-12)
    assert result.verdict == "not_detected"
    assert result.to_dict()["parameters"]["seed"] == 0


def test_trigger_is_keyed_faint_and_deterministic():
    p1, m1 = make_trigger(b"a" * 32, (1, 16, 16), strength=0.1)
    p2, _ = make_trigger(b"a" * 32, (1, 16, 16), strength=0.1)
    p3, _ = make_trigger(b"b" * 32, (1, 16, 16), strength=0.1)
    assert np.array_equal(p1, p2) and not np.array_equal(p1, p3)
    x = _images(4, shape=(1, 16, 16))
    assert np.abs(apply_trigger(x, p1, m1) - x).max() <= 0.1 + 1e-6
    with pytest.raises(WatermarkKeyError):
        make_trigger(b"short", (1, 4, 4))


def test_mark_dataset_variants():
    x = _images(100, shape=(1, 8, 8))
    y = np.arange(100) % 10
    dirty = mark_dataset(x, y, b"k" * 32, fraction=0.1, target_class=3)
    assert len(dirty.indices) == 10 and (y[dirty.indices] != 3).all()
    assert (dirty.y[dirty.indices] == 3).all()
    assert len(dirty.decoy_indices) == 0  # decoys are opt-in
    assert np.array_equal(np.delete(dirty.x, dirty.indices, 0), np.delete(x, dirty.indices, 0))
    clean = mark_dataset(x, y, b"k" * 32, fraction=0.05, target_class=3, clean_label=True)
    assert (y[clean.indices] == 3).all() and np.array_equal(clean.y, y)
    decoyed = mark_dataset(x, y, b"k" * 32, fraction=0.1, target_class=3, decoy_fraction=0.03)
    touched = np.concatenate([decoyed.indices, decoyed.decoy_indices])
    assert len(decoyed.decoy_indices) == 3 and np.array_equal(decoyed.y[decoyed.decoy_indices], y[touched[10:]])
    assert np.array_equal(np.delete(decoyed.x, touched, 0), np.delete(x, touched, 0))
    with pytest.raises(AuditParameterError):
        mark_dataset(x, y, b"k" * 32, decoy_fraction=1.0)


def test_mark_dataset_decoys_keep_labels_and_differ_from_the_trigger():
    x = _images(200, shape=(1, 8, 8))
    y = np.arange(200) % 10
    marked = mark_dataset(x, y, b"k" * 32, fraction=0.05, target_class=3, decoy_fraction=0.1)
    dec = marked.decoy_indices
    assert len(marked.indices) == 10 and len(dec) == 20
    assert not set(dec.tolist()) & set(marked.indices.tolist())
    assert np.array_equal(marked.y[dec], y[dec])
    # Decoys are faint (same strength) but not the key's trigger, and differ from each other.
    pattern, mask = make_trigger(b"k" * 32, (1, 8, 8))
    assert np.abs(marked.x[dec] - x[dec]).max() <= 0.15 + 1e-6
    assert not np.allclose(marked.x[dec], apply_trigger(x[dec], pattern, mask), atol=1e-3)
    noise = (marked.x[dec] - 0.85 * x[dec]) / 0.15
    assert not np.allclose(noise[0], noise[1], atol=1e-3)
    untouched = np.setdiff1d(np.arange(200), np.concatenate([dec, marked.indices]))
    assert np.array_equal(marked.x[untouched], x[untouched])
    again = mark_dataset(x, y, b"k" * 32, fraction=0.05, target_class=3, decoy_fraction=0.1)
    assert np.array_equal(again.x, marked.x) and np.array_equal(again.decoy_indices, dec)
    with pytest.raises(AuditInputError):
        mark_dataset(x, y[:-1], b"k" * 32)
    with pytest.raises(AuditInputError):
        mark_dataset(x[:0], y[:0], b"k" * 32)


def test_watermark_bad_inputs():
    method = create_method("watermark_dvbw")
    x = _images(300, shape=(1, 8, 8))
    y = np.arange(300) % 10

    def uniform(batch):
        return np.full((len(batch), 10), 0.1)

    ok = dict(benign=x, benign_labels=y, suspect=uniform, key=b"k" * 32, target_class=0)
    assert method.run(WatermarkInputs(**ok), seed=0).verdict == "not_detected"
    with pytest.raises(AuditInputError, match="benign_labels"):
        method.run(WatermarkInputs(**{**ok, "benign_labels": y[:5]}), seed=0)
    with pytest.raises(AuditInputError, match="m=100"):
        method.run(WatermarkInputs(**{**ok, "benign": x[:50], "benign_labels": y[:50]}), seed=0)
    with pytest.raises(QueryError, match="sum to 1"):
        method.run(WatermarkInputs(**{**ok, "suspect": lambda b: np.ones((len(b), 10))}), seed=0)
    with pytest.raises(QueryBudgetExceeded):
        method.run(WatermarkInputs(**ok, query_budget=150), seed=0)
    with pytest.raises(AuditParameterError):
        method.run(WatermarkInputs(**ok), params={"mode": "logits"}, seed=0)


def test_shadow_adjustment_is_label_free_and_removes_shared_difficulty():
    rng = np.random.default_rng(0)
    difficulty = rng.normal(size=300)
    shadows = [difficulty + 0.3 * rng.normal(size=300) for _ in range(3)]
    suspect = 0.8 * difficulty + 0.3 * rng.normal(size=300)
    residual, coef = shadow_adjusted(suspect, shadows)
    assert coef.shape == (4,) and abs(residual.mean()) < 1e-9
    # The fit removes more of the shared per-image difficulty than the plain difference.
    assert residual.var() < (suspect - np.mean(shadows, axis=0)).var()
    # Same images in another order: same residuals in that order (no group labels used).
    order = rng.permutation(300)
    again, _ = shadow_adjusted(suspect[order], [s[order] for s in shadows])
    assert np.allclose(again, residual[order])
    # Identical suspect and shadow: zero residual; too few images: plain difference.
    assert np.allclose(shadow_adjusted(shadows[0], [shadows[0]])[0], 0.0, atol=1e-9)
    small, small_coef = shadow_adjusted(suspect[:6], [s[:6] for s in shadows])
    assert np.allclose(small, suspect[:6] - np.mean([s[:6] for s in shadows], axis=0))
    assert np.allclose(small_coef, [0.0, 1 / 3, 1 / 3, 1 / 3])


def test_dov4cl_private_pool_is_larger_but_rounds_stay_balanced():
    method = DOV4CL()
    p = method.resolve_params({"rounds": 20, "k": 8, "private_pool": 3, "n_global": 2, "n_local": 6})
    ids, views, n_pub = method.build_queries(_images(30), _images(200, 1), p, seed=0)
    assert n_pub == 30 and views.shape[:3] == (20, 16, 8)
    assert (ids[:, :8] < 30).all() and (ids[:, 8:] >= 30).all()
    assert ids[:, 8:].max() >= 60 and ids.max() < 30 + 90  # up to 3 x 30 private images
    p1 = method.resolve_params({"rounds": 20, "k": 8, "n_global": 2, "n_local": 6})  # symmetric pools
    assert method.build_queries(_images(30), _images(200, 1), p1, seed=0)[0].max() < 60
    with pytest.raises(AuditParameterError):
        method.run(
            DOV4CLInputs(public=_images(30), private=_images(30, 1), suspect=_embed, shadow=_embed),
            params={"private_pool": 0.5},
            seed=0,
        )
