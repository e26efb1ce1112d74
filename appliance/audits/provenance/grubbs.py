"""Grubbs' outlier test for one tested value against a reference sample (pure numpy/scipy).

TrainProVe asks whether the suspect's accuracy on the owner's validation set is an outlier
among the shadow model's accuracies on validation batches: a low outlier means the suspect
was not trained on the generator's data.

The tested value is appended to the reference sample, so the statistic is Grubbs' own
(bounded by ``(n-1)/sqrt(n)``) with ``n = len(reference) + 1``::

    G = (mean(all) - x) / sd(all)            # low outlier; (x - mean) / sd for a high one
    G_crit = (n-1)/sqrt(n) * sqrt(t^2 / (n-2+t^2)),  t = t_{1-q, n-2}

Three conventions for ``q`` (``mode``):

* ``"table"``: ``alpha / (2n)``, the published Grubbs table (2.708, 2.938, 3.036 at n = 20, 32,
  40 for alpha = 0.05), what TrainProVe compares against;
* ``"exact"``: ``alpha / n``, Grubbs' one-sided level for "the most extreme of n values";
* ``"designated"``: ``alpha``. The suspect is a value named in advance, not the most extreme
  one, so no Bonferroni factor is due: for it ``G`` is a monotone map of the prediction-interval
  statistic ``(mean_ref - x) / (sd_ref * sqrt(1 + 1/m)) ~ t_{m-1}`` (normal reference), and
  this mode is exactly level alpha. The two others are far more conservative for a designated
  value (size about alpha/(2n) and alpha/n; a test measures it).

:func:`prediction_interval_outlier` is the designated-value test written directly as the
prediction-interval t test on a reference of ``m`` values (one per independently trained shadow
model in TrainProVe's model-level test): for ``x`` exchangeable with ``m`` i.i.d. normal
reference values, ``x - mean_ref ~ N(0, s^2 (1 + 1/m))`` independently of ``sd_ref``, so::

    T = (mean_ref - x) / (sd_ref * sqrt(1 + 1/m)) ~ t_{m-1}     # low outlier; sign flipped for high
    reject when T > t_{1-alpha, m-1};  p = P(t_{m-1} > T)

It decides exactly as ``grubbs_outlier(..., mode="designated")`` on the same values (a test
checks it) and reads more plainly in a report.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from scipy import stats as _st

GrubbsMode = Literal["table", "exact", "designated"]
_DIVISOR: dict[str, Callable[[int], int]] = {
    "table": lambda n: 2 * n, "exact": lambda n: n, "designated": lambda n: 1}

Direction = Literal["low", "high"]


def grubbs_critical(n: int, alpha: float = 0.05, *, mode: GrubbsMode = "table") -> float:
    """Grubbs' critical value for ``n`` values at ``alpha`` under ``mode`` (see the module)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 3:
        raise ValueError(f"Grubbs' test needs n >= 3 values, got {n!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")
    if mode not in _DIVISOR:
        raise ValueError(f"mode must be one of {sorted(_DIVISOR)}, got {mode!r}")
    q = alpha / _DIVISOR[mode](n)
    t = float(_st.t.ppf(1.0 - q, n - 2))
    return (n - 1) / math.sqrt(n) * math.sqrt(t * t / (n - 2 + t * t))


def grubbs_p_value(g: float, n: int, *, mode: GrubbsMode = "table") -> float:
    """The smallest alpha at which ``g`` is an outlier among ``n`` values (inverts G_crit).

    ``p = k * P(T_{n-2} > t(g))`` with ``k`` = 2n, n or 1 for the three modes, clipped to 1.
    """
    bound = (n - 1) / math.sqrt(n)
    if g <= 0.0:
        return 1.0
    if g >= bound:
        g = bound * (1 - 1e-12)
    ratio = g * g * n / (n - 1) ** 2
    t = math.sqrt((n - 2) * ratio / (1.0 - ratio))
    tail = float(_st.t.sf(t, n - 2))
    return min(1.0, _DIVISOR[mode](n) * tail)


@dataclass(frozen=True)
class GrubbsResult:
    """One Grubbs decision: the statistic, its critical value, n, and whether it is an outlier."""

    statistic: float
    critical: float
    n: int
    alpha: float
    direction: Direction
    tested: float
    reference_mean: float
    reference_sd: float
    p_value: float
    outlier: bool
    mode: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def grubbs_outlier(
    reference: np.ndarray | list[float],
    tested: float,
    *,
    direction: Direction,
    alpha: float = 0.05,
    mode: GrubbsMode = "table",
) -> GrubbsResult:
    """Is ``tested`` a ``direction`` outlier of ``reference`` + [tested]? (Grubbs, one value).

    A reference with zero spread is handled explicitly: the tested value is an outlier iff it
    lies strictly beyond the common value in ``direction`` (G is then its bound).
    """
    if direction not in ("low", "high"):
        raise ValueError(f"direction must be 'low' or 'high', got {direction!r}")
    ref = np.asarray(reference, dtype=np.float64).ravel()
    if not np.isfinite(ref).all() or not math.isfinite(float(tested)):
        raise ValueError("Grubbs' test needs finite values")
    sample = np.append(ref, float(tested))
    n = len(sample)
    critical = grubbs_critical(n, alpha, mode=mode)
    mean, sd = float(sample.mean()), float(sample.std(ddof=1))
    sign = 1.0 if direction == "low" else -1.0
    if sd == 0.0:
        g = 0.0
    else:
        g = sign * (mean - float(tested)) / sd
    if float(ref.std(ddof=1) if len(ref) > 1 else 0.0) == 0.0 and sd > 0.0:
        g = (n - 1) / math.sqrt(n) * (1.0 if g > 0 else -1.0)  # beyond a constant reference
    return GrubbsResult(
        statistic=float(g), critical=float(critical), n=n, alpha=float(alpha), direction=direction,
        tested=float(tested), reference_mean=float(ref.mean()),
        reference_sd=float(ref.std(ddof=1)) if len(ref) > 1 else 0.0,
        p_value=grubbs_p_value(float(g), n, mode=mode), outlier=bool(g > critical), mode=mode,
    )


def prediction_interval_outlier(
    reference: np.ndarray | list[float],
    tested: float,
    *,
    direction: Direction,
    alpha: float = 0.05,
) -> GrubbsResult:
    """Is ``tested`` outside the one-sided ``1 - alpha`` prediction interval of ``reference``?

    The result's ``statistic`` is ``T`` and ``critical`` is ``t_{1-alpha, m-1}``; ``n`` counts the
    reference and the tested value (``m + 1``); ``mode`` is ``"prediction_interval"``.
    A reference with zero spread: outlier iff ``tested`` lies strictly beyond it (``T = inf``).
    """
    if direction not in ("low", "high"):
        raise ValueError(f"direction must be 'low' or 'high', got {direction!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")
    ref = np.asarray(reference, dtype=np.float64).ravel()
    m = len(ref)
    if m < 2:
        raise ValueError(f"a prediction interval needs at least 2 reference values, got {m}")
    if not np.isfinite(ref).all() or not math.isfinite(float(tested)):
        raise ValueError("the prediction-interval test needs finite values")
    mean, sd = float(ref.mean()), float(ref.std(ddof=1))
    sign = 1.0 if direction == "low" else -1.0
    gap = sign * (mean - float(tested))
    if sd == 0.0:
        t_stat = math.inf if gap > 0 else (-math.inf if gap < 0 else 0.0)
    else:
        t_stat = gap / (sd * math.sqrt(1.0 + 1.0 / m))
    critical = float(_st.t.ppf(1.0 - alpha, m - 1))
    p_value = float(_st.t.sf(t_stat, m - 1)) if math.isfinite(t_stat) else (0.0 if t_stat > 0 else 1.0)
    return GrubbsResult(
        statistic=float(t_stat), critical=critical, n=m + 1, alpha=float(alpha), direction=direction,
        tested=float(tested), reference_mean=mean, reference_sd=sd, p_value=p_value,
        outlier=bool(t_stat > critical), mode="prediction_interval",
    )


__all__ = [
    "Direction",
    "GrubbsMode",
    "GrubbsResult",
    "grubbs_critical",
    "grubbs_outlier",
    "grubbs_p_value",
    "prediction_interval_outlier",
]
