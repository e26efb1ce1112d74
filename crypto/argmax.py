"""Encrypted argmax from pairwise comparisons with a composite odd sign polynomial.

The comparison ``sign(L_i - L_j)`` is approximated by ``f^(r)``, ``r`` compositions of the
Cheon-Kim-Kim base polynomial ``f(x) = (3x - x^3) / 2`` (each costs 2 levels). ``f`` is odd,
strictly increasing on [-1, 1] and maps [-1, 1] onto itself, so the soft win count

    W_i = (C - 1) / 2 + 1/2 * sum_j f^(r)(L_i - L_j)   (the j = i term is f(0) = 0)

satisfies ``W_a - W_b >= f^(r)(L_a - L_b) > 0`` whenever ``L_a > L_b``: the argmax of the
win counts is the argmax of the logits for any ``r >= 1``, up to CKKS noise (about 1e-6 here).
With enough depth ``f^(r)`` approaches the true sign and the counts approach integers
(label = class with ``C - 1`` wins); with one composition they are soft.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = [
    "compositions_for_depth",
    "reference_win_counts",
    "sign_composite",
    "win_counts",
    "winner",
]

FloatArray = npt.NDArray[np.float64]

#: Levels the linear (plaintext-weight) stage consumes before the comparisons.
LINEAR_LEVELS = 1
#: Levels hidden-layer heads consume: stage 1, the square, stage 2.
HIDDEN_LEVELS = 3
#: Levels one composition of f consumes.
LEVELS_PER_COMPOSITION = 2


def compositions_for_depth(depth: int, stage_levels: int = LINEAR_LEVELS) -> int:
    """How many compositions of ``f`` fit after the heads (``stage_levels`` levels) in ``depth``."""
    return max(0, (depth - stage_levels) // LEVELS_PER_COMPOSITION)


def sign_composite(x: FloatArray, rounds: int) -> FloatArray:
    """Plaintext reference of the encrypted comparison: ``f`` applied ``rounds`` times."""
    y = np.asarray(x, dtype=np.float64)
    for _ in range(rounds):
        y = 1.5 * y - 0.5 * y**3
    return y


def win_counts(raw_sums: FloatArray, classes: int) -> FloatArray:
    """Turn decrypted ``sum_j f(L_i - L_j)`` into win counts ``W_i`` (shape preserved)."""
    return (classes - 1) / 2.0 + 0.5 * np.asarray(raw_sums, dtype=np.float64)


def winner(counts: FloatArray) -> npt.NDArray[np.int64]:
    """Predicted label per row of ``counts`` (the class with the most wins)."""
    return np.asarray(np.argmax(np.asarray(counts), axis=-1), dtype=np.int64)


def reference_win_counts(logits: FloatArray, bound: float, rounds: int) -> FloatArray:
    """Plaintext win counts the circuit computes for ``(Q, C)`` logits and scale ``bound``."""
    lg = np.asarray(logits, dtype=np.float64)
    diffs = (lg[:, :, None] - lg[:, None, :]) / bound
    return win_counts(sign_composite(diffs, rounds).sum(axis=2), lg.shape[1])
