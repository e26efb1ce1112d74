"""Slot layout of the private ensemble: plaintext-weighted diagonal products, no per-row matmul.

The K member embeddings of one query are concatenated into a vector ``x`` of length ``n``
(each member in a power-of-two block of ``block`` slots, zero padded). Heads are linear or
have one hidden layer with a degree-2 activation.

Linear heads: the ensemble average and the pairwise-difference matrix are folded into one
``m x n`` plaintext matrix ``M`` whose row ``r = i * P + j`` (``P`` = classes rounded up to a
power of two, ``m = P * P``) computes the scaled difference ``(L_i - L_j) / bound`` of the
averaged logits. The server evaluates ``M x`` with the Halevi-Shoup diagonal method in
baby-step/giant-step form:

    sum_b rot( sum_a rot(x, a) * rot(diag_{a + g b}, -g b), g b ),  then rotate-and-sum
    with strides m, 2m, ..., n/2,

and the comparisons come out directly in slots ``r``. Linear heads use compact rows instead
(``compact=True``: row ``r = i * C + j``, ``m`` = ``C * C`` rounded up to a power of two, 128
instead of 256 rows for 10 classes, so half the diagonals) with win counts, and with one-hot
outputs where the product over ``C`` slots is no deeper than over ``P``
(:func:`window_levels`); class ``i``'s ``C`` comparisons are then summed (or multiplied) into
slot ``i * C`` with power-of-two rotations only (:func:`window_plan`). Baby steps are built
from power-of-two rotations, giant steps are done in Horner form with one key (``g``), so only
``O(log n)`` Galois keys are needed. Each query sits in a lane of ``2n`` slots holding ``x``
twice (so rotations never leave the lane) unless ``n`` fills the whole ciphertext, in which
case rotations are cyclic. Several lanes in one ciphertext give the batch form.

Pair rows (``pairs=True``; win counts of linear or hidden heads where one query fills the
ciphertext, ``n == slots`` or a chunked lane): row ``r`` = :func:`pair_rows` ``[i, j]`` holds the comparison of the pair
``i < j`` once, so ``m`` = ``C (C - 1) / 2`` rounded up (64 for 10 classes, half the compact
rows). The rotate-and-sum leaves every row in each block of ``m`` slots; the last sign step
multiplies slot-wise by :func:`pair_signs` (in block ``i``: ``+1`` on class ``i``'s pairs
``(i, j)``, ``-1`` on its pairs ``(j, i)``, as the sign polynomial is odd; 0 elsewhere), and a
window sum of ``m`` slots leaves class ``i``'s win count in slot ``i * m``.

Chunked lane (linear heads whose lane is the whole ciphertext, ``2 n == slots``): with ``x``
twice, rows are read at lane positions below ``n`` only and half the products are zero.
Instead, slot ``p`` holds input ``(p // m) * K + p % K`` with ``K = m / 2`` (each chunk of
``K`` inputs twice in a run of ``m`` slots), rows repeat with period ``m`` over all slots, and
``K`` rotations ``c < K`` suffice: row ``r`` reads slot ``r + m t + c``, which holds input
``t' K + (r + c) % K`` (``t' = t`` or ``t + 1`` past the run's end); for each ``c`` the runs
``t'`` cover all ``2 n / m`` chunks once as ``t`` does, and the ``K`` offsets cover each
chunk's ``K`` positions once, so every input meets every row exactly once. The rotate-and-sum
then runs up to ``slots / 2`` (one stride more) and leaves every slot holding its full row.
For 10 one-hot classes at N=16384 (compact rows too) that is 64 diagonals instead of 256.

Hidden-layer heads (``H`` units per member, activation ``p(u) = c2 u^2 + c1 u + c0``) run two
such products with a ciphertext square between them. With ``p(u) = c2 (u + t)^2 + c0'`` and
``t = c1 / (2 c2)``, stage 1 is an ``m1 x n`` matrix (``m1`` = ``K * H`` rounded up to a
power of two, row ``k * H + u``) computing ``s = (u + t) / S`` per unit, each unit scaled by
its own bound ``S = ||A_u|| * norm_bound + |a_u + t|`` so ``s`` lies in [-1, 1]. Its diagonals
are defined periodically over the whole lane (the duplicated ``x`` makes ``rot(x, d)`` right
at lane positions below ``2n - d``), so after the rotate-and-sum (strides ``m1 .. n/2``) the
vector ``s`` is replicated with period ``m1`` over lane slots ``[0, n]``. The server squares it
(1 level, no mask), and stage 2, an ``m x m1`` matrix folding ``c2 S^2``, the average over K,
the pairwise differences and every constant, reads that replicated vector with the same
diagonal method (``min(m, m1)`` diagonals; rotate-and-sum strides ``m .. m1/2`` when
``m < m1``). Its reads stay below lane slot ``m + m1 - 1 <= n``, which :func:`make_layout`
guarantees. The comparisons land in slots ``r`` exactly as for linear heads.

Domain bound: with every member embedding clipped to Euclidean norm ``<= norm_bound`` the
concatenation has norm ``<= norm_bound * sqrt(K)``; by Cauchy-Schwarz each scaled difference
of a linear head, and every partial sum the layout produces in unused slots, lies in
``[-1, 1]``. For hidden heads ``s^2`` lies in [0, 1] and the stage-2 bound is
``max_r max(|pos_r + c_r|, |neg_r + c_r|)`` (sums of the row's positive and negative weights,
plus its constant), so every comparison lies in [-1, 1]; unused slots mix two queries' data
and stay within a small constant (``|s| <= 1 + sqrt(2)``), far inside the modulus.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from crypto.errors import CryptoError

__all__ = [
    "EnsembleLayout",
    "LayoutError",
    "WideLayout",
    "chunk_sources",
    "comparison_matrix",
    "difference_matrix",
    "hidden_matrices",
    "make_layout",
    "make_wide_layout",
    "onehot_constants",
    "pack_queries",
    "pack_wide",
    "pair_rows",
    "pair_signs",
    "score_slots",
    "spread_rows",
    "wide_weights",
    "window_levels",
]

FloatArray = npt.NDArray[np.float64]


class LayoutError(CryptoError, ValueError):
    """The ensemble shape does not fit the ciphertext slots, or inputs have the wrong shape."""

    hint = (
        "Use a larger CKKS preset (more slots), fewer members or a smaller embedding, and pass "
        "embeddings shaped (members, dim) as declared by the ensemble artifact."
    )


def _pow2_at_least(value: int) -> int:
    return 1 << max(0, (int(value) - 1).bit_length())


@dataclass(frozen=True)
class EnsembleLayout:
    """Slot geometry of the packed ensemble circuit for one CKKS slot count."""

    members: int
    dim: int
    classes: int
    slots: int
    block: int  # slots per member embedding (power of two >= dim)
    n: int  # length of the packed query vector x (power of two)
    lane: int  # slots one query occupies (2n, or n when n == slots)
    pad_classes: int  # P: classes rounded up to a power of two
    rows: int  # m = P * P comparison rows
    baby: int  # g, comparison stage
    giant: int  # h, with g * h == min(m, width)
    hidden: int = 0  # H hidden units per member (0: linear heads)
    hidden_rows: int = 0  # m1: K * H rounded up to a power of two (0: linear heads)
    hidden_baby: int = 0  # g1, stage 1
    hidden_giant: int = 0  # h1, with g1 * h1 == m1
    class_stride: int = 0  # slots per class block of comparisons: C (compact), m (pairs) or P; 0 means P
    chunk: int = 0  # K of the chunked lane (see chunk_sources); 0: x twice, rows read below n only
    pairs: bool = False  # rows hold the C(C-1)/2 pairs i < j once; class i sums them in block i

    @property
    def stride(self) -> int:
        """Row ``i * stride + j`` compares classes ``i`` and ``j``; class ``i``'s result sits in
        slot ``i * stride`` of its lane (with ``pairs``, row :func:`pair_rows` ``[i, j]``, and
        the stride is ``m``: class ``i`` sums block ``i`` of the replicated rows)."""
        return self.class_stride or self.pad_classes

    @property
    def queries_per_ciphertext(self) -> int:
        """How many queries one ciphertext packs (batch form)."""
        return self.slots // self.lane

    @property
    def width(self) -> int:
        """Length of the vector the comparison matrix reads: ``n`` (linear) or ``m1`` (hidden)."""
        return self.hidden_rows or self.n

    @property
    def sum_strides(self) -> tuple[int, ...]:
        """Rotate-and-sum strides that finish the comparison product (m, 2m, ..., width/2; up
        to slots/2 in a chunked lane, where every slot holds a partial row sum)."""
        return _doublings(self.rows, self.slots if self.chunk else self.width)

    @property
    def hidden_sum_strides(self) -> tuple[int, ...]:
        """Rotate-and-sum strides that finish stage 1 (m1, 2 m1, ..., n/2; none if linear)."""
        return _doublings(self.hidden_rows, self.n) if self.hidden_rows else ()

    @property
    def block_strides(self) -> tuple[int, ...]:
        """Strides that add the comparisons of class i into slot ``i * stride``: 1, 2, ...,
        P/2 for a power-of-two stride; for a compact stride C the powers of two below C
        (windows of those lengths, combined as in :func:`window_plan`)."""
        return tuple(1 << k for k in range(self.stride.bit_length() - 1))

    @property
    def galois_steps(self) -> tuple[int, ...]:
        """The rotation keys a client sends: every step the server circuit performs, except in a
        chunked lane, where the circuit makes the other steps from these (see
        :data:`CHUNK_FOLD_KEYS_EVERY`)."""
        if self.chunk:
            steps = {1, *self.sum_strides[::CHUNK_FOLD_KEYS_EVERY]}
            if self.giant > 1:
                steps.add(self.baby)
            return tuple(sorted(s for s in steps if 0 < s < self.slots))
        # Baby steps are built from power-of-two rotations (see EnsembleEvaluator._babies).
        babies = _doublings(1, max(self.baby, self.hidden_baby))
        steps = {1, *babies, *self.sum_strides, *self.block_strides, *self.hidden_sum_strides}
        if self.giant > 1:
            steps.add(self.baby)
        if self.hidden_giant > 1:
            steps.add(self.hidden_baby)
        return tuple(sorted(s for s in steps if 0 < s < self.slots))


def window_plan(length: int) -> tuple[int, tuple[int, ...]]:
    """How to sum ``length`` consecutive slots with power-of-two rotations only.

    Returns ``(top, extras)``: build windows ``S_1 .. S_top`` by doubling (``S_2k = S_k +
    rot(S_k, k)``, ``top`` the largest power of two <= length), then for each ``b`` in
    ``extras`` (the lower set bits of ``length``, descending) ``R = S_b + rot(R, b)``, which
    lengthens the window ``R`` by ``b``. Slot ``p`` then holds ``sum_{u < length} v[p + u]``.
    """
    if length < 1:
        raise LayoutError("a window holds at least one slot")
    top = 1 << (length.bit_length() - 1)
    extras = tuple(b for b in (1 << k for k in reversed(range(top.bit_length() - 1))) if length & b)
    return top, extras


#: Chunked lanes (one query per N=16384 ciphertext) keep only some rotation keys, as each costs
#: ~7.6 MB of upload and server memory per session at n16384-d7: step 1 (baby steps in a chain,
#: and the class windows, which run at the lowest levels where rotations are cheap), the giant
#: step, and every third rotate-and-sum stride (the two between are that stride's key used two
#: and four times). At K=8 x 384-d, 10 one-hot classes: 5 keys, 39 MB, against 9 keys, 69 MB
#: with every stride's key (1 or 2 here give 69 or 47 MB and ~14% or ~5% less CPU per query,
#: measured one after the other in one process).
CHUNK_FOLD_KEYS_EVERY = 3


def window_levels(length: int) -> int:
    """Multiplicative depth of a product over ``length`` consecutive slots built as in
    :func:`window_plan` (one level per doubling, one per extra)."""
    top, extras = window_plan(length)
    return top.bit_length() - 1 + len(extras)


def _doublings(start: int, stop: int) -> tuple[int, ...]:
    out = []
    while start < stop:
        out.append(start)
        start *= 2
    return tuple(out)


def _split(count: int) -> tuple[int, int]:
    """Baby/giant split of ``count`` (a power of two) diagonals: ``g = 2^ceil(log/2)``."""
    log = count.bit_length() - 1
    baby = 1 << ((log + 1) // 2)
    return baby, count // baby


def make_layout(
    *,
    members: int,
    dim: int,
    classes: int,
    slots: int,
    hidden: int = 0,
    compact: bool = False,
    chunked: bool = False,
    pairs: bool = False,
    fill: bool = False,
) -> EnsembleLayout:
    """Compute the packed layout, or raise :class:`LayoutError` if it does not fit ``slots``.

    ``hidden`` is the number of hidden units per member (0 for linear heads). ``compact``
    (linear heads) packs the comparisons of class ``i`` in ``C`` rows instead of ``P`` (row
    ``i * C + j``), so ``m`` is ``C * C`` rounded up to a power of two: 128 rows instead of 256
    for 10 classes, half the diagonals of the product. ``chunked`` (linear heads) lays a query
    whose lane is the whole ciphertext (``2 n == slots``) out in chunks (see
    :func:`chunk_sources`) so every slot computes a partial row sum: half the diagonals again.
    ``pairs`` (win counts, one query per ciphertext) computes each pair ``i < j`` once
    (``m`` = ``C (C - 1) / 2`` rounded up, 64 rows for 10 classes): the rotate-and-sum leaves
    the rows replicated in every block of ``m`` slots, the last sign step weighs block ``i``'s
    slots by ``+1`` where ``i`` is a pair's first class, ``-1`` where it is the second and 0
    elsewhere (:func:`pair_signs`), and a window sum of ``m`` slots gives class ``i``'s win
    count in slot ``i * m``. ``fill`` pads the query vector to the whole ciphertext (``n`` =
    ``slots``, one query per ciphertext, cyclic rotations), so pair rows fit any ensemble that
    does not fill it by itself (the label output of :mod:`crypto.private_inference.label`).
    Raises :class:`LayoutError` where the ``C`` blocks do not fit.
    """
    if compact and hidden:
        raise LayoutError("the compact comparison rows serve linear heads only")
    if members < 1 or dim < 1 or classes < 2 or hidden < 0:
        raise LayoutError(
            f"need members >= 1, dim >= 1, classes >= 2, hidden >= 0 (got {members}, {dim}, {classes}, {hidden})"
        )
    block = _pow2_at_least(dim)
    pad_classes = _pow2_at_least(classes)
    if pairs:
        rows = _pow2_at_least(classes * (classes - 1) // 2)
    else:
        rows = _pow2_at_least(classes * classes) if compact else pad_classes * pad_classes
    hidden_rows = _pow2_at_least(members * hidden) if hidden else 0
    n = max(_pow2_at_least(members * block), rows, hidden_rows)
    if n > slots:
        raise LayoutError(
            f"{members} members x {block} slots ({rows} comparison rows, {hidden_rows} hidden rows) "
            f"exceed {slots} slots"
        )
    if fill:
        n = slots
    if hidden_rows:
        # Stage 2 reads the replicated hidden vector up to lane slot m + m1 - 2, valid while
        # <= n; a ciphertext-wide n (cyclic rotations) is valid everywhere.
        n = min(slots, max(n, _pow2_at_least(rows + hidden_rows - 1)))
    lane = 2 * n if 2 * n <= slots else n
    chunk = rows * n // slots if chunked and not hidden_rows and 2 * n == slots and rows >= 2 else 0
    baby, giant = _split(chunk or min(rows, hidden_rows or n))
    if pairs and not (chunk or n == slots) or pairs and classes * rows > slots:
        # Class blocks beyond the first need the rows replicated over the whole ciphertext.
        raise LayoutError(f"{classes} class blocks of {rows} pair rows need one query per ciphertext "
                          f"and {classes * rows} <= {slots} slots")
    if (compact or pairs or chunk) and giant < baby:
        # Fewer baby steps, more giant ones: babies rotate the fresh query at the top level,
        # giant steps an inner sum one prime lower (cheaper), see EnsembleEvaluator._matvec.
        baby, giant = giant, baby
    hidden_baby, hidden_giant = _split(hidden_rows) if hidden_rows else (0, 0)
    return EnsembleLayout(
        members=members,
        dim=dim,
        classes=classes,
        slots=slots,
        block=block,
        n=n,
        lane=lane,
        pad_classes=pad_classes,
        rows=rows,
        baby=baby,
        giant=giant,
        hidden=hidden,
        hidden_rows=hidden_rows,
        hidden_baby=hidden_baby,
        hidden_giant=hidden_giant,
        class_stride=rows if pairs else classes if compact else 0,
        chunk=chunk,
        pairs=pairs,
    )


def _check_finite(*arrays: FloatArray) -> None:
    if not all(np.all(np.isfinite(a)) for a in arrays):
        raise LayoutError("weights and biases must be finite")


def pair_rows(classes: int) -> npt.NDArray[np.int64]:
    """``(C, C)`` row of each class pair in a ``pairs`` layout: ``i < j`` in order, row
    ``[j, i]`` equal to row ``[i, j]`` (it holds the pair's one comparison), -1 on the diagonal."""
    out = np.full((classes, classes), -1, dtype=np.int64)
    i, j = np.triu_indices(classes, k=1)
    out[i, j] = out[j, i] = np.arange(i.size)
    return out


def pair_signs(layout: EnsembleLayout) -> FloatArray:
    """The last sign step's per-slot weight in a ``pairs`` layout: in block ``i`` (slots
    ``i * m .. i * m + m - 1``), ``+1`` on the row of pair ``(i, j)``, ``-1`` on that of
    ``(j, i)`` (``s_ji = -s_ij``), 0 on rows not involving ``i`` and past the last block, so
    block ``i`` sums to class ``i``'s win count."""
    if not layout.pairs:
        raise LayoutError("the layout does not hold each pair once")
    out = np.zeros(layout.slots)
    rows = pair_rows(layout.classes)
    for i in range(layout.classes):
        for j in range(layout.classes):
            if i != j:
                out[i * layout.rows + rows[i, j]] = 1.0 if i < j else -1.0
    return out


def comparison_matrix(values: FloatArray, layout: EnsembleLayout) -> FloatArray:
    """The ``(C, C)`` scaled differences ``(L_i - L_j) / bound`` read from a decrypted
    comparison vector (the circuit's input to the sign steps) of the first query's lane."""
    vals = np.asarray(values, dtype=np.float64)
    c = layout.classes
    if layout.pairs:
        picked = vals[np.maximum(pair_rows(c), 0)]  # pair (i, j)'s comparison, for i < j and j < i
        upper = np.triu(np.ones((c, c), dtype=bool), k=1)
        out: FloatArray = np.where(upper, picked, -picked)
        np.fill_diagonal(out, 0.0)
        return out
    block: FloatArray = vals[np.arange(c)[:, None] * layout.stride + np.arange(c)[None, :]]
    return block


def _pairwise(full: FloatArray, mean_bias: FloatArray, layout: EnsembleLayout) -> tuple[FloatArray, FloatArray]:
    """Rows ``i * P + j`` of ``full[i] - full[j]`` and of the bias differences (zero padded);
    with ``pairs``, row :func:`pair_rows` ``[i, j]`` for ``i < j``."""
    p, c = layout.stride, full.shape[0]
    diff = np.zeros((layout.rows, full.shape[1]))
    diff_bias = np.zeros(layout.rows)
    rows = pair_rows(c) if layout.pairs else None
    for i in range(c):
        for j in range(c):
            if rows is not None and i >= j:
                continue
            r = i * p + j if rows is None else int(rows[i, j])
            diff[r] = full[i] - full[j]
            diff_bias[r] = mean_bias[i] - mean_bias[j]
    return diff, diff_bias


def difference_matrix(
    weights: FloatArray,
    biases: FloatArray,
    *,
    norm_bound: float,
    layout: EnsembleLayout,
    scale: float | None = None,
) -> tuple[FloatArray, FloatArray, float]:
    """Fold ensemble averaging and pairwise differences into one scaled plaintext matrix.

    ``weights`` is ``(K, C, d)``, ``biases`` ``(K, C)``. Returns ``(M, bias, bound)`` with
    ``M`` of shape ``(m, n)`` and ``bias`` of shape ``(m,)`` such that for a packed query
    ``x``: ``(M @ x + bias)[i * P + j] == (L_i - L_j) / bound`` where ``L`` are the averaged
    logits, and ``|M @ x + bias| <= 1`` whenever each embedding has norm ``<= norm_bound``.
    A calibrated ``scale`` (see :meth:`crypto.ensemble.EnsembleArtifact.calibrated`) replaces
    that worst-case bound when smaller: differences then use more of [-1, 1], and only queries
    whose differences stay within ``scale`` keep them inside it.
    """
    k, c, d = weights.shape
    if (k, c, d) != (layout.members, layout.classes, layout.dim) or biases.shape != (k, c) or layout.hidden:
        raise LayoutError(f"weights {weights.shape} / biases {biases.shape} do not fit the layout")
    _check_finite(weights, biases)
    full = np.zeros((c, layout.n))
    for member in range(k):
        start = member * layout.block
        full[:, start : start + d] = weights[member] / k
    diff, diff_bias = _pairwise(full, biases.mean(axis=0), layout)
    x_norm = float(norm_bound) * np.sqrt(k)
    bound = _calibrated(float(np.max(np.linalg.norm(diff, axis=1) * x_norm + np.abs(diff_bias))), scale)
    return diff / bound, diff_bias / bound, bound


def _calibrated(worst: float, scale: float | None) -> float:
    """The comparisons' divisor: the worst-case bound, or a smaller calibrated ``scale``."""
    if worst <= 0.0:
        return 1.0  # all classes tie everywhere; any positive scale keeps the domain
    if scale is None:
        return worst
    if not (np.isfinite(scale) and scale > 0.0):
        raise LayoutError(f"comparison scale must be a positive finite number, got {scale!r}")
    return min(worst, float(scale))


def hidden_matrices(
    hidden_weights: FloatArray,
    hidden_biases: FloatArray,
    weights: FloatArray,
    biases: FloatArray,
    activation: tuple[float, float, float],
    *,
    norm_bound: float,
    layout: EnsembleLayout,
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray, float]:
    """Both plaintext stages of hidden-layer heads, scaled so the circuit stays in [-1, 1].

    ``hidden_weights`` ``(K, H, d)`` and ``hidden_biases`` ``(K, H)`` give ``u = A_k e_k + a_k``,
    the activation ``(c2, c1, c0)`` gives ``h = c2 u^2 + c1 u + c0``, and ``weights``
    ``(K, C, H)``, ``biases`` ``(K, C)`` give member logits ``B_k h + b_k``. Returns
    ``(M1, bias1, M2, bias2, bound)``: ``M1 @ x + bias1`` (shape ``(m1,)``) is ``(u + t) / S``
    per unit, within [-1, 1] for clipped embeddings, and ``M2 @ s**2 + bias2`` (``M2`` is
    ``(m, m1)``) is ``(L_i - L_j) / bound`` in row ``i * P + j``, within [-1, 1].
    """
    k, h, d = hidden_weights.shape
    c = weights.shape[1]
    lay = layout
    if (
        (k, h, d) != (lay.members, lay.hidden, lay.dim)
        or hidden_biases.shape != (k, h)
        or weights.shape != (k, lay.classes, h)
        or biases.shape != (k, c)
    ):
        raise LayoutError(
            f"hidden weights {hidden_weights.shape} / {hidden_biases.shape}, weights {weights.shape} / "
            f"{biases.shape} do not fit the layout"
        )
    _check_finite(hidden_weights, hidden_biases, weights, biases, np.asarray(activation, dtype=np.float64))
    c2, c1, c0 = (float(v) for v in activation)
    if c2 == 0.0:
        raise LayoutError("the activation's square coefficient c2 must be nonzero")
    shift = c1 / (2.0 * c2)
    centre = hidden_biases + shift  # u + t = A e + (a + t)
    scale = np.linalg.norm(hidden_weights, axis=2) * float(norm_bound) + np.abs(centre)
    scale = np.where(scale > 0.0, scale, 1.0)  # a unit that is identically zero
    stage1 = np.zeros((lay.hidden_rows, lay.n))
    bias1 = np.zeros(lay.hidden_rows)
    for member in range(k):
        rows = slice(member * h, (member + 1) * h)
        start = member * lay.block
        stage1[rows, start : start + d] = hidden_weights[member] / scale[member][:, None]
        bias1[rows] = centre[member] / scale[member]
    # L = 1/K sum_k B_k (c2 S^2 s^2 + c0') + b_k with c0' = c0 - c2 t^2.
    full = np.zeros((c, lay.hidden_rows))
    for member in range(k):
        full[:, member * h : (member + 1) * h] = weights[member] * (c2 * scale[member] ** 2) / k
    constant = (weights.sum(axis=2) * (c0 - c2 * shift**2) + biases).mean(axis=0)
    diff, diff_bias = _pairwise(full, constant, lay)
    # Row r is const_r + sum_k sum_u G[r, k, u] v_u^2 with v = u + t. Member k's part lies
    # between the sums of its negative and of its positive weights on s^2 = (v / S)^2 in
    # [0, 1] and, tighter when units share directions, between min G and max G times
    # ||v_k||^2 <= (sigma_max(A_k) * norm_bound + ||a_k + t||)^2. Both also bound partial
    # sums over any subset of units, which is what unused slots hold.
    used = diff[:, : k * h].reshape(lay.rows, k, h)
    coef = used / (scale**2)[None]
    sigma = np.linalg.norm(hidden_weights, ord=2, axis=(1, 2))
    radius = (sigma * float(norm_bound) + np.linalg.norm(centre, axis=1)) ** 2
    upper = np.minimum(np.clip(used, 0.0, None).sum(axis=2), np.clip(coef, 0.0, None).max(axis=2) * radius)
    lower = np.maximum(np.clip(used, None, 0.0).sum(axis=2), np.clip(coef, None, 0.0).min(axis=2) * radius)
    positive = upper.sum(axis=1) + diff_bias
    negative = lower.sum(axis=1) + diff_bias
    bound = float(np.max(np.maximum(np.abs(positive), np.abs(negative))))
    if not np.isfinite(bound):
        raise LayoutError("the hidden-layer weights overflow the comparison bound")
    if bound <= 0.0:
        bound = 1.0
    return stage1, bias1, diff / bound, diff_bias / bound, bound


def chunk_sources(layout: EnsembleLayout) -> npt.NDArray[np.int64]:
    """Which input of ``x`` each slot of a chunked lane holds: ``(p // m) * K + p % K``."""
    if not layout.chunk:
        raise LayoutError("the layout is not chunked")
    pos = np.arange(layout.slots)
    out: npt.NDArray[np.int64] = (pos // layout.rows) * layout.chunk + pos % layout.chunk
    return out


def _diagonals(matrix: FloatArray, layout: EnsembleLayout, *, baby: int, giant: int, reach: int) -> list[FloatArray]:
    """Diagonal ``c`` at lane position ``p`` is ``matrix[p mod rows, (p + c) mod width]`` where
    ``p < layout.n`` and ``p + c < reach`` (the lane slots whose input is valid), else 0."""
    rows, width = matrix.shape
    pos = np.arange(layout.slots) % layout.lane
    out: list[FloatArray] = []
    for b in range(giant):
        for a in range(baby):
            c = a + baby * b
            valid = (pos < layout.n) & (pos + c < reach)
            diag = np.where(valid, matrix[pos % rows, (pos + c) % width], 0.0)
            out.append(np.roll(diag, baby * b))
    return out


def diagonals(matrix: FloatArray, layout: EnsembleLayout) -> list[FloatArray]:
    """Pre-rotated generalized diagonals of the comparison stage, one per (baby a, giant b).

    Entry ``a + g * b`` multiplies ``rot(v, a)`` inside giant step ``b``, where ``v`` is the
    packed query (linear heads) or the squared hidden vector (hidden heads). Products that
    would read the hidden vector past lane slot ``n`` (where it is not replicated) are zero,
    so every slot, used or not, holds a partial row sum inside [-1, 1].
    """
    if layout.chunk:
        pos = np.arange(layout.slots)
        source = chunk_sources(layout)
        out: list[FloatArray] = []
        for b in range(layout.giant):
            for a in range(layout.baby):
                c = a + layout.baby * b
                out.append(np.roll(matrix[pos % layout.rows, source[(pos + c) % layout.slots]], layout.baby * b))
        return out
    # Cyclic lanes (lane == n) and linear heads (x is duplicated) read valid slots everywhere.
    reach = layout.n + 1 if layout.hidden_rows and layout.lane > layout.n else 2 * layout.slots
    return _diagonals(matrix, layout, baby=layout.baby, giant=layout.giant, reach=reach)


def hidden_diagonals(matrix: FloatArray, layout: EnsembleLayout) -> list[FloatArray]:
    """Stage-1 diagonals of hidden heads, periodic over the whole lane (see the module doc)."""
    if not layout.hidden_rows:
        raise LayoutError("the layout has no hidden layer")
    pos = np.arange(layout.slots) % layout.lane
    out: list[FloatArray] = []
    for b in range(layout.hidden_giant):
        for a in range(layout.hidden_baby):
            c = a + layout.hidden_baby * b
            out.append(np.roll(matrix[pos % layout.hidden_rows, (pos + c) % layout.n], layout.hidden_baby * b))
    return out


def bias_slots(bias: FloatArray, layout: EnsembleLayout) -> FloatArray:
    """Bias vector laid out so every partial row sum stays inside [-1, 1]."""
    pos = np.arange(layout.slots) % layout.lane
    return np.where((pos < layout.n) | (layout.chunk > 0), bias[pos % layout.rows], 0.0)


def hidden_bias_slots(bias: FloatArray, layout: EnsembleLayout) -> FloatArray:
    """Stage-1 bias, replicated with period ``m1`` like the hidden vector it shifts."""
    pos = np.arange(layout.slots) % layout.lane
    out: FloatArray = bias[pos % layout.hidden_rows]
    return out


def output_mask(layout: EnsembleLayout, count: int | None = None) -> npt.NDArray[np.bool_]:
    """Slots that carry a class win count (slot ``lane * q + i * P`` for class ``i``)."""
    count = layout.queries_per_ciphertext if count is None else count
    mask = np.zeros(layout.slots, dtype=bool)
    for q in range(count):
        for i in range(layout.classes):
            mask[q * layout.lane + i * layout.stride] = True
    return mask


def onehot_constants(layout: EnsembleLayout) -> FloatArray:
    """What one-hot mode adds to ``s / 2`` per slot: 1/2 where slot ``i * S + j`` (``S`` the
    class stride, ``P`` or compact ``C``) compares two real classes ``i != j``, else 1 (there
    ``s = 0``), so the product over a block of ``S`` slots is ``prod_{j != i} (1 + s_ij) / 2``
    and every slot stays within [0, 1]."""
    if layout.pairs:
        raise LayoutError("one-hot outputs multiply class blocks; the pair rows serve win counts only")
    pos = np.arange(layout.slots) % layout.lane
    row = pos % layout.rows
    i, j = row // layout.stride, row % layout.stride
    valid = (pos < layout.n) | (layout.chunk > 0)
    compares = valid & (i < layout.classes) & (j < layout.classes) & (i != j)
    return np.where(compares, 0.5, 1.0)


def pack_queries(embeddings: FloatArray, layout: EnsembleLayout, *, norm_bound: float) -> FloatArray:
    """Pack ``(Q, K, d)`` embeddings into one slot vector, clipping each to ``norm_bound``.

    Clipping keeps the comparison inside the sign polynomial's domain; it changes nothing
    for embeddings already within the bound (e.g. unit-normalised MiniLM embeddings, bound 1).
    """
    emb = np.asarray(embeddings, dtype=np.float64)
    if emb.ndim != 3 or emb.shape[1:] != (layout.members, layout.dim):
        raise LayoutError(f"embeddings must be shaped (queries, {layout.members}, {layout.dim}), got {emb.shape}")
    if emb.shape[0] < 1 or emb.shape[0] > layout.queries_per_ciphertext:
        raise LayoutError(
            f"{emb.shape[0]} queries do not fit one ciphertext (capacity {layout.queries_per_ciphertext})"
        )
    if not np.all(np.isfinite(emb)):
        raise LayoutError("embeddings must be finite")
    norms = np.linalg.norm(emb, axis=2, keepdims=True)
    emb = emb * np.minimum(1.0, norm_bound / np.maximum(norms, 1e-300))
    out = np.zeros(layout.slots)
    for q, query in enumerate(emb):
        x = np.zeros(layout.n)
        for member in range(layout.members):
            start = member * layout.block
            x[start : start + layout.dim] = query[member]
        base = q * layout.lane
        lane = x[chunk_sources(layout)] if layout.chunk else np.tile(x, layout.lane // layout.n)
        out[base : base + layout.lane] = lane
    return out


def score_slots(values: FloatArray, layout: EnsembleLayout, count: int) -> FloatArray:
    """Read ``(count, C)`` raw comparison sums from a decrypted result vector."""
    vals = np.asarray(values, dtype=np.float64)
    idx = np.array([[q * layout.lane + i * layout.stride for i in range(layout.classes)] for q in range(count)])
    out: FloatArray = vals[idx]
    return out


# -- wide batch layout: slots index queries ------------------------------------------------
#
# The K*d features of a query are cut into ``chunks`` pieces of ``block`` consecutive
# features. Ciphertext ``t`` of a batch holds piece ``t`` of every query: query ``b`` occupies
# slots ``b * block .. b * block + block - 1``. Class ``c``'s averaged, scaled logit is then
#
#     sum_t  ct_t * W[c, t]          (W[c, t]: piece t of class c's weights, tiled per query)
#
# followed by a rotate-and-sum over strides 1, 2, ..., block/2, which leaves the logit of query
# ``b`` in slot ``b * block``. The linear stage needs ``classes * chunks`` plaintext products
# and ``classes * log2(block)`` rotations for a whole batch of ``slots / block`` queries;
# pairwise differences and the sign polynomial then run on all queries of the batch at once.
# With ``block == 1`` the layout is pure SIMD across queries (no rotations, one ciphertext per
# feature); a larger block trades rotations for fewer uploaded ciphertexts per batch.

#: Features per query block in the wide layout (power of two); see :func:`make_wide_layout`.
WIDE_BLOCK = 64
#: Most regions a partial wide batch is replicated into (see :func:`wide_regions`).
WIDE_MAX_REGIONS = 8


@dataclass(frozen=True)
class WideLayout:
    """Geometry of the wide batch layout (slots index queries) for one CKKS slot count."""

    members: int
    dim: int
    classes: int
    slots: int
    block: int  # features of one query per ciphertext (power of two)
    chunks: int  # ciphertexts per batch: ceil(members * dim / block)

    @property
    def features(self) -> int:
        """Length of one query's concatenated embeddings (K * d)."""
        return self.members * self.dim

    @property
    def capacity(self) -> int:
        """Most queries one wide batch carries (one block of slots each)."""
        return self.slots // self.block

    @property
    def sum_strides(self) -> tuple[int, ...]:
        """Rotate-and-sum strides that finish each logit (1, 2, ..., block/2)."""
        return tuple(1 << k for k in range(self.block.bit_length() - 1))

    @property
    def region_steps(self) -> tuple[int, ...]:
        """Power-of-two rotations that move whole regions of a partial batch (slots/2 ..)."""
        out = []
        size = self.slots // 2
        while size >= self.slots // WIDE_MAX_REGIONS and size >= self.block and size > 0:
            out.append(size)
            size //= 2
        return tuple(sorted(out))

    @property
    def galois_steps(self) -> tuple[int, ...]:
        """Rotation steps the wide circuit performs (block sums, region moves)."""
        return tuple(sorted({s for s in (*self.sum_strides, *self.region_steps) if 0 < s < self.slots}))


def wide_regions(layout: WideLayout, count: int) -> int:
    """Copies of a partial batch of ``count`` queries in the wide layout (a power of two).

    A batch that fills at most half the capacity is replicated into ``R`` regions of
    ``slots / R`` slots; the server tiles ``R`` different classes' weights over them, so one
    plaintext product and one rotate-and-sum serve ``R`` classes, and one sign evaluation
    serves ``R`` pairs. Capped by :data:`WIDE_MAX_REGIONS`, half the padded class count and
    the rotations of :attr:`WideLayout.region_steps`.
    """
    if not 1 <= count <= layout.capacity:
        raise LayoutError(f"{count} queries do not fit one wide batch (capacity {layout.capacity})")
    regions = layout.capacity // _pow2_at_least(count)
    cap = min(WIDE_MAX_REGIONS, max(1, _pow2_at_least(layout.classes) // 2))
    while regions > 1 and (regions > cap or layout.slots // regions not in layout.region_steps):
        regions //= 2
    return max(1, regions)


def make_wide_layout(*, members: int, dim: int, classes: int, slots: int, block: int | None = None) -> WideLayout:
    """Wide layout for the ensemble shape; ``block`` defaults to :data:`WIDE_BLOCK` (capped by K*d)."""
    if members < 1 or dim < 1 or classes < 2:
        raise LayoutError(f"need members >= 1, dim >= 1, classes >= 2 (got {members}, {dim}, {classes})")
    features = members * dim
    if block is None:
        block = min(WIDE_BLOCK, _pow2_at_least(features))
    if block < 1 or block & (block - 1) or block > slots:
        raise LayoutError(f"block must be a power of two in [1, {slots}], got {block}")
    return WideLayout(
        members=members,
        dim=dim,
        classes=classes,
        slots=slots,
        block=block,
        chunks=-(-features // block),
    )


def wide_weights(
    weights: FloatArray, biases: FloatArray, *, norm_bound: float, layout: WideLayout, scale: float | None = None
) -> tuple[FloatArray, FloatArray, float]:
    """Averaged class weights and biases, scaled so every pairwise difference lies in [-1, 1].

    Returns ``(W, bias, bound)``: ``W`` is ``(C, chunks, block)`` (piece ``t`` of class ``c``'s
    weights over the concatenated, zero-padded embeddings, divided by ``K * bound``), ``bias``
    ``(C,)`` the mean bias over ``bound``. ``bound`` is the same Cauchy-Schwarz bound as
    :func:`difference_matrix`: ``max_ij ||w_i - w_j|| * norm_bound * sqrt(K) + |b_i - b_j|``,
    so ``(L_i - L_j) / bound`` is in [-1, 1] for clipped embeddings (and, in the slots the
    client never reads, partial sums mixing two neighbouring queries stay within sqrt(2)).
    A calibrated ``scale`` replaces the bound when smaller, as in :func:`difference_matrix`.
    """
    k, c, d = weights.shape
    if (k, c, d) != (layout.members, layout.classes, layout.dim) or biases.shape != (k, c):
        raise LayoutError(f"weights {weights.shape} / biases {biases.shape} do not fit the layout")
    if not np.all(np.isfinite(weights)) or not np.all(np.isfinite(biases)):
        raise LayoutError("weights and biases must be finite")
    full = np.zeros((c, layout.chunks * layout.block))
    full[:, : k * d] = np.transpose(weights, (1, 0, 2)).reshape(c, k * d) / k
    mean_bias = biases.mean(axis=0)
    diff_norm = np.linalg.norm(full[:, None, :] - full[None, :, :], axis=2)
    diff_bias = np.abs(mean_bias[:, None] - mean_bias[None, :])
    bound = _calibrated(float(np.max(diff_norm * float(norm_bound) * np.sqrt(k) + diff_bias)), scale)
    return (full / bound).reshape(c, layout.chunks, layout.block), mean_bias / bound, bound


def wide_weight_slots(piece: FloatArray, layout: WideLayout) -> FloatArray:
    """One weight piece ``(block,)`` tiled over every query block of the slots."""
    return np.tile(np.asarray(piece, dtype=np.float64), layout.capacity)


def spread_rows(layout: WideLayout, regions: int) -> int:
    """Ciphertexts of a partial batch spread over ``regions`` regions: ``ceil(chunks / R)``."""
    return -(-layout.chunks // regions)


def pack_wide(
    embeddings: FloatArray, layout: WideLayout, *, norm_bound: float, regions: int = 1, spread: bool = False
) -> FloatArray:
    """Pack ``(Q, K, d)`` embeddings into ``(chunks, slots)`` slot vectors, clipping norms.

    Row ``t`` holds features ``t * block .. (t + 1) * block - 1`` of every query's concatenated
    (member-major) embeddings, query ``b`` in slots ``b * block ..``; unused slots are zero.
    With ``regions`` R > 1 (:func:`wide_regions`) the batch is repeated at the start of each
    of R equal regions of the slots. With ``spread`` as well, region ``j`` of row ``u`` holds
    piece ``u * R + j`` instead, so the batch takes :func:`spread_rows` rows (zero regions past
    the last piece); the server rotates the regions' partial products together.
    """
    emb = np.asarray(embeddings, dtype=np.float64)
    if emb.ndim != 3 or emb.shape[1:] != (layout.members, layout.dim):
        raise LayoutError(f"embeddings must be shaped (queries, {layout.members}, {layout.dim}), got {emb.shape}")
    q = emb.shape[0]
    if q < 1 or q > layout.capacity:
        raise LayoutError(f"{q} queries do not fit one wide batch (capacity {layout.capacity})")
    if not np.all(np.isfinite(emb)):
        raise LayoutError("embeddings must be finite")
    norms = np.linalg.norm(emb, axis=2, keepdims=True)
    emb = emb * np.minimum(1.0, norm_bound / np.maximum(norms, 1e-300))
    flat = np.zeros((q, layout.chunks * layout.block))
    flat[:, : layout.features] = emb.reshape(q, layout.features)
    pieces = flat.reshape(q, layout.chunks, layout.block).transpose(1, 0, 2)  # (chunks, q, block)
    if regions < 1 or layout.slots % regions or q * layout.block * regions > layout.slots:
        raise LayoutError(f"{q} queries do not fit {regions} regions of the wide layout")
    size = layout.slots // regions
    runs = pieces.reshape(layout.chunks, q * layout.block)  # piece t of every query, in a run
    out = np.zeros((spread_rows(layout, regions) if spread else layout.chunks, layout.slots))
    for t in range(layout.chunks):
        u, k = divmod(t, regions) if spread else (t, 0)
        for region in (k,) if spread else range(regions):
            out[u, region * size : region * size + q * layout.block] = runs[t]
    return out


def wide_output_mask(layout: WideLayout, count: int) -> npt.NDArray[np.bool_]:
    """Slots that carry a result in a wide reply (slot ``b * block`` for query ``b < count``)."""
    mask = np.zeros(layout.slots, dtype=bool)
    mask[: count * layout.block : layout.block] = True
    return mask


def wide_score_slots(per_class: FloatArray, layout: WideLayout, count: int) -> FloatArray:
    """``(count, C)`` raw comparison sums from ``(C, slots)`` decrypted wide replies."""
    vals = np.asarray(per_class, dtype=np.float64)
    out: FloatArray = vals[:, : count * layout.block : layout.block].T.copy()
    return out
