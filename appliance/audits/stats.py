"""Hypothesis tests used by the audit methods (pure numpy/scipy functions).

All tests are one-sided with the alternative named in the docstring and return a
p-value in ``(0, 1]``; degenerate inputs (zero variance) are handled explicitly rather
than producing NaN.
"""

from __future__ import annotations

import math

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
    "permutation_mean_diff",
    "welch_greater",
]
