"""Hypothesis tests used by the audit methods (pure numpy/scipy functions).

All tests are one-sided with the alternative named in the docstring and return a
p-value in ``(0, 1]``; degenerate inputs (zero variance) are handled explicitly rather
than producing NaN.
"""

from __future__ import annotations

import math
from typing import cast

import numpy as np
from scipy import special as _sp
from scipy import stats as _st


def welch_greater(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Unpaired Welch t-test, H1: mean(a) > mean(b). Returns ``(t, p)``."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if len(a) < 2 or len(b) < 2:
        raise ValueError("welch_greater needs at least two values per sample")
    diff = float(a.mean() - b.mean())
    se = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    if se == 0.0:
        return (math.inf if diff > 0 else -math.inf if diff < 0 else 0.0), (0.0 if diff > 0 else 1.0)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    t = diff / se
    return float(t), float(_sp.stdtr(df, -t))


def paired_margin_greater(treated: np.ndarray, control: np.ndarray, *, margin: float) -> tuple[float, float]:
    """Paired t-test, H0: mean(treated - control) <= margin, H1: > margin. ``(t, p)``."""
    d = np.asarray(treated, np.float64).ravel() - np.asarray(control, np.float64).ravel()
    if len(d) < 2:
        raise ValueError("paired_margin_greater needs at least two pairs")
    shifted = d - margin
    sd = float(shifted.std(ddof=1))
    mean = float(shifted.mean())
    if sd == 0.0:
        return (math.inf if mean > 0 else -math.inf if mean < 0 else 0.0), (0.0 if mean > 0 else 1.0)
    t = mean / (sd / math.sqrt(len(d)))
    return float(t), float(_sp.stdtr(len(d) - 1, -t))


def permutation_mean_diff(
    scores: np.ndarray,
    is_first: np.ndarray,
    *,
    permutations: int,
    rng: np.random.Generator,
) -> tuple[float, float]:
    """Label-permutation test, H1: mean(scores[first]) > mean(scores[~first]).

    Exact under exchangeability of the two groups; Monte Carlo with the +1 correction
    ``p = (1 + #{T* >= T}) / (1 + B)``. Returns ``(T, p)``.
    """
    x = np.asarray(scores, np.float64).ravel()
    g = np.asarray(is_first, bool).ravel()
    n1 = int(g.sum())
    if len(x) != len(g) or n1 == 0 or n1 == len(x):
        raise ValueError("permutation test needs both groups non-empty and aligned scores")
    total = x.sum()
    n2 = len(x) - n1

    def stat(sum1: np.ndarray) -> np.ndarray:
        return np.asarray(sum1 / n1 - (total - sum1) / n2)

    observed = float(stat(np.asarray(x[g].sum())))
    exceed = 0
    done = 0
    chunk = 512
    tol = 1e-12 * max(1.0, abs(observed))
    while done < permutations:
        b = min(chunk, permutations - done)
        keys = rng.random((b, len(x)))
        idx = np.argpartition(keys, n1 - 1, axis=1)[:, :n1]
        sums = x[idx].sum(axis=1)
        exceed += int(np.count_nonzero(stat(sums) >= observed - tol))
        done += b
    return observed, (1 + exceed) / (1 + permutations)


def _share_at_least(values: np.ndarray) -> np.ndarray:
    """For each entry, the share of ``values`` that are at least as large (ties count): the
    permutation p-value of every row of a permutation distribution, the observed one included."""
    ordered = np.sort(values)
    return cast("np.ndarray", (len(values) - np.searchsorted(ordered, values, side="left")) / len(values))


def permutation_mean_or_upper(
    scores: np.ndarray,
    is_first: np.ndarray,
    *,
    permutations: int,
    rng: np.random.Generator,
    quantile: float = 0.75,
) -> tuple[float, float, float]:
    """Label-permutation test, H1: the first group's scores are larger in their mean **or** in
    their upper quantile (``quantile``; the two groups' quantiles compared).

    Two statistics on the same relabellings, combined by their smaller permutation p-value
    (nonparametric combination, min-p: Pesarin 2001). The combined statistic of every
    relabelling is ranked among all ``B + 1`` of them (the observed included), so the test is
    exact under exchangeability of the two groups, as :func:`permutation_mean_diff`. With
    symmetric noise it has about the mean's power; where the scores have a long lower tail
    (skewed left), which adds variance to the mean and none to the upper quantile, it finds a
    shift of the first group far more often. Returns ``(mean difference, upper-quantile
    difference, p)``.
    """
    x = np.asarray(scores, np.float64).ravel()
    g = np.asarray(is_first, bool).ravel()
    n1 = int(g.sum())
    if len(x) != len(g) or n1 < 2 or n1 > len(x) - 2:
        raise ValueError("permutation test needs two scores per group at least and aligned scores")
    if not 0.0 < quantile < 1.0:
        raise ValueError("quantile must lie in (0, 1)")
    n2 = len(x) - n1
    means: list[np.ndarray] = []
    uppers: list[np.ndarray] = []

    def add(mask: np.ndarray) -> None:  # rows of first-group flags; every row has n1 of them
        tiled = np.broadcast_to(x, mask.shape)
        first, second = tiled[mask].reshape(-1, n1), tiled[~mask].reshape(-1, n2)
        means.append(first.mean(axis=1) - second.mean(axis=1))
        uppers.append(np.quantile(first, quantile, axis=1) - np.quantile(second, quantile, axis=1))

    add(g[None, :])
    done = 0
    while done < permutations:
        b = min(256, permutations - done)
        keys = rng.random((b, len(x)))
        mask = np.zeros((b, len(x)), bool)
        np.put_along_axis(mask, np.argpartition(keys, n1 - 1, axis=1)[:, :n1], True, axis=1)
        add(mask)
        done += b
    mean_t, upper_t = np.concatenate(means), np.concatenate(uppers)
    return float(mean_t[0]), float(upper_t[0]), min_p_combined(mean_t, upper_t)


def min_p_combined(*statistics: np.ndarray) -> float:
    """Permutation p-value of several statistics combined by their smaller p-value (min-p).

    Each array holds one statistic for the observed labelling (first) and for every
    relabelling after it, all on the same relabellings. Each row's p-value is its share of rows
    at least as large; the observed row's smallest one is then ranked among every row's."""
    # rounding noise must not split ties between relabellings with the same groups' sums
    combined = np.minimum.reduce([_share_at_least(np.round(np.asarray(t, np.float64), 12)) for t in statistics])
    return float(np.count_nonzero(combined <= combined[0]) / len(combined))


def binomial_greater(successes: int, trials: int, null_rate: float) -> float:
    """Exact binomial test, H1: success rate > ``null_rate``. Returns p."""
    if trials <= 0:
        raise ValueError("binomial test needs at least one trial")
    if null_rate >= 1.0:
        return 1.0
    return float(_st.binomtest(int(successes), int(trials), max(null_rate, 0.0), alternative="greater").pvalue)


__all__ = [
    "binomial_greater",
    "paired_margin_greater",
    "min_p_combined",
    "permutation_mean_diff",
    "permutation_mean_or_upper",
    "welch_greater",
]
