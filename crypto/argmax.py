"""Encrypted argmax from pairwise comparisons with a composite odd sign polynomial.

The comparison ``sign(L_i - L_j)`` is approximated by ``s_ij = f^(r)((L_i - L_j) / bound)``,
``r`` compositions of the Cheon-Kim-Kim base polynomial ``f(x) = (3x - x^3) / 2`` (each costs
2 levels). ``f`` is odd, strictly increasing on [-1, 1] and maps [-1, 1] onto itself. Two
output modes read the comparisons (the owner picks one per ensemble):

``scores``: the soft win count

    W_i = (C - 1) / 2 + 1/2 * sum_j s_ij   (the j = i term is f(0) = 0)

satisfies ``W_a - W_b >= s_ab > 0`` whenever ``L_a > L_b``: the argmax of the win counts is
the argmax of the logits for any ``r >= 1``, up to CKKS noise (about 1e-6 here). With enough
depth ``s`` approaches the true sign and the counts approach integers (label = class with
``C - 1`` wins); with one composition they are soft.

``onehot``: the product of comparisons

    o_i = prod_{j != i} (1 + s_ij) / 2

is exactly one-hot when the signs are exact and lies in [0, 1] always (so it needs no
headroom above the scale, whatever ``C``). With soft signs the argmax is still exact: for the
winner ``a`` and any ``b``, ``s_aj > s_bj`` for every ``j`` (``f^(r)`` is increasing) and
``1 + s_ab > 1 > 1 + s_ba``, so ``o_a > o_b`` (CKKS noise and the output flooding aside). But
every soft factor is near 1/2, so the values are about ``2^-(C-1)``: beyond
:data:`MAX_ONEHOT_CLASSES` they sink below the flooding noise and the labels drown. The product costs
``ceil(log2 C)`` more levels (a rotate-and-multiply window over a block of ``P`` slots, or of
``C`` where that is no deeper, e.g. 10 = 8 + 2; a balanced product of the ``C - 1`` pairwise
factors in the wide layout), so it needs a deeper
preset (``n16384-d7``: ``r = 1`` up to 16 classes with linear heads; ``n16384-d8``: ``r = 2`` up
to 4, and hidden heads; ``n32768-d18``). As
the comparisons sharpen it tends to the label alone, where win counts tend to the whole
ranking of the classes; with soft comparisons both leak approximate margins.

``label``: two rounds instead of a polynomial (see :mod:`crypto.private_inference.label`).
The server returns every pairwise difference under a secret permutation of the classes, each
multiplied by its own secret positive factor, so the client learns the signs of a tournament
between anonymous classes; it encrypts a selection of the anonymous winner, and the server
maps it back through the permutation to a one-hot vector of the real class, exact (0 and 1
up to the flooding noise). No sign polynomial: one level after the heads (the masks), so it
runs at ``n8192-d3`` (linear) and ``n8192-d5`` (hidden heads).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = [
    "LABEL_LEVELS",
    "MAX_ONEHOT_CLASSES",
    "OUTPUTS",
    "compositions_for_depth",
    "max_label_classes",
    "max_range_ratio",
    "min_depth",
    "onehot_levels",
    "reference_one_hot",
    "reference_win_counts",
    "rounds_for",
    "sign_composite",
    "win_counts",
    "winner",
]

FloatArray = npt.NDArray[np.float64]

#: Output modes: soft win counts, a (soft) one-hot vector from products of comparisons, or
#: the label alone (two rounds, an exact one-hot vector).
OUTPUTS = ("scores", "onehot", "label")
#: Levels the two-round label output uses after the heads (the permuted, masked differences).
LABEL_LEVELS = 1
#: Most classes a one-hot output serves. With soft comparisons every factor of the product is
#: near 1/2, so the winner's value is about 2^-(C-1) and the top-2 difference a fraction of it,
#: while every result slot carries uniform noise of 1e-6 (circuit privacy). Measured on random
#: linear heads, K=8 x 384-d, 128 wide-batch queries each: labels agree with plaintext on 128 at
#: 10, 12, 14 and 16 classes (winner median 8.7e-5 at 16), 127 at 17, 113 at 20, 30 at 24 and 4
#: at 32 (the single layout alike: 1 of 8 at 32).
MAX_ONEHOT_CLASSES = 16
#: Levels the linear (plaintext-weight) stage consumes before the comparisons.
LINEAR_LEVELS = 1
#: Levels hidden-layer heads consume: stage 1, the square, stage 2.
HIDDEN_LEVELS = 3
#: Levels one composition of f consumes.
LEVELS_PER_COMPOSITION = 2


def max_label_classes(slots: int) -> int:
    """Most classes the label output serves at ``slots`` slots: its round 1 holds each of the
    ``C (C - 1) / 2`` pairs in a block of ``m`` slots (``m`` = that count rounded up to a power
    of two), 11 classes at ``N = 8192``."""
    def blocks(c: int) -> int:
        pairs = c * (c - 1) // 2
        return pairs * (1 << max(0, (pairs - 1).bit_length()))

    c = 2
    while blocks(c + 1) <= slots:
        c += 1
    return c


def compositions_for_depth(depth: int, stage_levels: int = LINEAR_LEVELS) -> int:
    """How many compositions of ``f`` fit after the heads (``stage_levels`` levels) in ``depth``."""
    return max(0, (depth - stage_levels) // LEVELS_PER_COMPOSITION)


def onehot_levels(classes: int) -> int:
    """Levels of the one-hot product: ``log2 P`` (``P`` = classes rounded up to a power of two).

    The wide layout's balanced product of ``C - 1`` factors needs ``ceil(log2(C - 1))``, never
    more, so one sign depth serves both layouts.
    """
    return max(1, (int(classes) - 1).bit_length())


def rounds_for(depth: int, stage_levels: int, output: str, classes: int) -> int:
    """Compositions of ``f`` that fit ``depth`` for an output mode (0: the mode does not fit)."""
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    if output == "label":
        return 0  # no sign polynomial
    tree = onehot_levels(classes) if output == "onehot" else 0
    return compositions_for_depth(depth - tree, stage_levels)


def min_depth(stage_levels: int, output: str, classes: int) -> int:
    """Smallest preset depth that runs the heads, one composition and the output mode (the
    label output: the heads and its masks)."""
    if output == "label":
        return stage_levels + LABEL_LEVELS
    tree = onehot_levels(classes) if output == "onehot" else 0
    return stage_levels + LEVELS_PER_COMPOSITION + tree


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
    """Predicted label per row of ``counts`` (win counts or one-hot values: the largest)."""
    return np.asarray(np.argmax(np.asarray(counts), axis=-1), dtype=np.int64)


def _scaled_signs(logits: FloatArray, bound: float, rounds: int) -> FloatArray:
    lg = np.asarray(logits, dtype=np.float64)
    return sign_composite((lg[:, :, None] - lg[:, None, :]) / bound, rounds)


def reference_win_counts(logits: FloatArray, bound: float, rounds: int) -> FloatArray:
    """Plaintext win counts the circuit computes for ``(Q, C)`` logits and scale ``bound``."""
    signs = _scaled_signs(logits, bound, rounds)
    return win_counts(signs.sum(axis=2), signs.shape[1])


def reference_one_hot(logits: FloatArray, bound: float, rounds: int) -> FloatArray:
    """Plaintext one-hot values ``prod_{j != i} (1 + s_ij) / 2`` of ``(Q, C)`` logits."""
    factors = (1.0 + _scaled_signs(logits, bound, rounds)) / 2.0
    idx = np.arange(factors.shape[1])
    factors[:, idx, idx] = 1.0
    out: FloatArray = factors.prod(axis=2)
    return out


def _worst_sign(bound: float, rounds: int) -> float:
    """Largest ``|f^(r)(z)|`` for ``|z| <= bound`` (``f`` stays in [-1, 1] on [-1, 1] and is
    bounded by ``1.5 |z| + 0.5 |z|^3`` outside it)."""
    b = float(bound)
    for _ in range(rounds):
        b = 1.0 if b <= 1.0 else 1.5 * b + 0.5 * b**3
    return b


def worst_output(ratio: float, rounds: int, output: str, classes: int) -> float:
    """Largest result-slot magnitude when comparison inputs reach ``ratio`` times the domain:
    win-count sums ``(C - 1) / 2 * |f^(r)|``, one-hot products ``((1 + |f^(r)|) / 2)^(C - 1)``.

    Unread slots may sum more signs than a result slot: up to ``C`` in a compact window and
    ``2 C - 3`` in the single layout's pair rows (a window straddling two class blocks). The
    ``sqrt 2`` by which :func:`max_range_ratio` inflates the inputs (a factor of at least 1.77 on
    the bound of ``|f|`` past the domain, 2.8 far out) and the flooding margin (slots may reach
    4 times the flooding amplitude before they wrap, :data:`crypto.ensemble.FLOOD_MARGIN_BITS`)
    cover both: at most ``(2 C - 3) / ((C - 1) / 2 * 1.77) < 2.3`` times the limit, plus the
    flood, stays below 4."""
    b = _worst_sign(ratio, rounds)
    if output == "onehot":
        return float(((1.0 + b) / 2.0) ** (classes - 1))
    return 0.5 * (classes - 1) * b


def max_range_ratio(rounds: int, output: str, classes: int, headroom_bits: float) -> float:
    """Largest ``R`` such that comparison inputs up to ``R`` (times sqrt 2, the wide layout's
    unread partial sums) keep every result slot within ``2^headroom_bits``.

    A calibrated comparison scale may be at most ``R`` times smaller than the worst-case bound:
    then no clipped embedding, however far outside the calibration, drives a slot past the
    flooding amplitude the unread slots already carry, so it cannot wrap the modulus and
    corrupt the other queries packed in the same ciphertext.
    """
    limit = 2.0**headroom_bits
    lo, hi = 1.0, 1e6
    if worst_output(lo * np.sqrt(2.0), rounds, output, classes) > limit:
        return 1.0
    for _ in range(200):
        mid = np.sqrt(lo * hi)
        if worst_output(mid * np.sqrt(2.0), rounds, output, classes) <= limit:
            lo = mid
        else:
            hi = mid
    return float(lo)
