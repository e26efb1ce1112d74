"""Grubbs' critical values against the published table, and the outlier decision."""

from __future__ import annotations

import numpy as np
import pytest

from appliance.audits.provenance.grubbs import (
    grubbs_critical,
    grubbs_outlier,
    grubbs_p_value,
    prediction_interval_outlier,
)


@pytest.mark.parametrize(("n", "expected"), [(20, 2.708), (32, 2.938), (40, 3.036)])
def test_critical_values_match_the_table(n: int, expected: float) -> None:
    assert grubbs_critical(n, 0.05) == pytest.approx(expected, abs=5e-4)


def test_one_sided_critical_value_is_smaller_and_p_inverts_it() -> None:
    exact = grubbs_critical(20, 0.05, mode="exact")
    assert exact == pytest.approx(2.557, abs=5e-4) and exact < grubbs_critical(20, 0.05)
    assert grubbs_critical(20, 0.05, mode="designated") < exact
    for mode in ("table", "exact", "designated"):
        for n in (5, 21, 40):
            assert grubbs_p_value(grubbs_critical(n, 0.05, mode=mode), n, mode=mode) \
                == pytest.approx(0.05, rel=1e-6)


def test_low_and_high_outliers_are_told_apart() -> None:
    rng = np.random.default_rng(0)
    ref = 0.9 + 0.01 * rng.standard_normal(20)
    low = grubbs_outlier(ref, 0.80, direction="low")
    assert low.outlier and low.n == 21 and low.statistic > low.critical
    assert not grubbs_outlier(ref, 0.80, direction="high").outlier
    assert not grubbs_outlier(ref, 0.905, direction="low").outlier
    assert grubbs_outlier(ref, 1.0, direction="high").outlier
    # the statistic is bounded by (n-1)/sqrt(n), as Grubbs' is
    assert grubbs_outlier(ref, -1e6, direction="low").statistic <= 20 / np.sqrt(21)


def test_size_under_the_null_is_at_most_alpha() -> None:
    rng = np.random.default_rng(1)
    samples = rng.standard_normal((20000, 21))  # 20 reference values + the tested one, all null
    g = (samples.mean(axis=1) - samples[:, -1]) / samples.std(axis=1, ddof=1)
    for i in range(5):  # the vectorised statistic is grubbs_outlier's
        assert grubbs_outlier(samples[i, :-1], samples[i, -1], direction="low").statistic == pytest.approx(g[i])
    size = {mode: float(np.mean(g > grubbs_critical(21, mode=mode))) for mode in ("table", "exact", "designated")}
    # a designated value: exact level alpha; the Bonferroni modes are ~alpha/(2n) and ~alpha/n
    assert 0.045 < size["designated"] < 0.055
    assert size["table"] < 0.003 and size["exact"] < 0.005


def test_degenerate_and_bad_inputs() -> None:
    assert not grubbs_outlier([0.5] * 10, 0.5, direction="low").outlier
    assert grubbs_outlier([0.5] * 10, 0.4, direction="low").outlier
    with pytest.raises(ValueError):
        grubbs_critical(2)
    with pytest.raises(ValueError):
        grubbs_outlier([1.0, float("nan")], 0.5, direction="low")
    with pytest.raises(ValueError):
        grubbs_outlier([1.0, 2.0], 0.5, direction="sideways")  # type: ignore[arg-type]


def test_prediction_interval_test_is_level_alpha_and_agrees_with_designated_grubbs() -> None:
    rng = np.random.default_rng(2)
    m = 11  # e.g. eleven shadow models, one value each
    samples = rng.standard_normal((20000, m + 1))
    ref, x = samples[:, :-1], samples[:, -1]
    t = (ref.mean(axis=1) - x) / (ref.std(axis=1, ddof=1) * np.sqrt(1 + 1 / m))
    crit = prediction_interval_outlier(ref[0], x[0], direction="low").critical
    assert crit == pytest.approx(1.812, abs=5e-4)  # t_{0.95, 10} from the tables
    assert 0.045 < float(np.mean(t > crit)) < 0.055
    for i in range(40):  # same statistic, same decision as designated-value Grubbs, p in [0, 1]
        pi = prediction_interval_outlier(ref[i], x[i], direction="low")
        g = grubbs_outlier(ref[i], x[i], direction="low", mode="designated")
        assert pi.statistic == pytest.approx(t[i]) and pi.outlier == g.outlier
        assert pi.p_value == pytest.approx(g.p_value, rel=1e-6) if g.statistic > 0 else pi.p_value >= 0.5
    high = prediction_interval_outlier([0.1, 0.2, 0.15, 0.12], 0.9, direction="high")
    assert high.outlier and high.n == 5 and high.mode == "prediction_interval"
    assert not prediction_interval_outlier([0.1, 0.2, 0.15, 0.12], 0.9, direction="low").outlier
    assert prediction_interval_outlier([0.5, 0.5, 0.5], 0.4, direction="low").outlier
    with pytest.raises(ValueError):
        prediction_interval_outlier([0.5], 0.4, direction="low")
