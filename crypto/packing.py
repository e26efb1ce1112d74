"""Slot layout of the private ensemble: one plaintext-weighted diagonal product, no per-row matmul.

The K member embeddings of one query are concatenated into a vector ``x`` of length ``n``
(each member in a power-of-two block of ``block`` slots, zero padded). The ensemble average
and the pairwise-difference matrix are folded into one ``m x n`` plaintext matrix ``M`` whose
row ``r = i * P + j`` (``P`` = classes rounded up to a power of two, ``m = P * P``) computes the
scaled difference ``(L_i - L_j) / bound`` of the averaged logits. The server evaluates
``M x`` with the Halevi-Shoup diagonal method in baby-step/giant-step form:

    sum_b rot( sum_a rot(x, a) * rot(diag_{a + g b}, -g b), g b ),  then rotate-and-sum
    with strides m, 2m, ..., n/2,

and the comparisons come out directly in slots ``r``. Baby steps reuse one rotation key (1),
giant steps are done in Horner form with one key (``g``), so only ``O(log n)`` Galois keys are
needed. Each query sits in a lane of ``2n`` slots holding ``x`` twice (so rotations never leave
the lane) unless ``n`` fills the whole ciphertext, in which case rotations are cyclic. Several
lanes in one ciphertext give the batch form.

Domain bound: with every member embedding clipped to Euclidean norm ``<= norm_bound`` the
concatenation has norm ``<= norm_bound * sqrt(K)``; by Cauchy-Schwarz each scaled difference,
and every partial sum the layout produces in unused slots, lies in ``[-1, 1]``.
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
    "difference_matrix",
    "make_layout",
    "make_wide_layout",
    "pack_queries",
    "pack_wide",
    "score_slots",
    "wide_weights",
]

FloatArray = npt.NDArray[np.float64]


class LayoutError(CryptoError, ValueError):
    """The ensemble shape does not fit the ciphertext slots, or inputs have the wrong shape."""

    default_hint = (
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
    baby: int  # g
    giant: int  # h, with g * h == m

    @property
    def queries_per_ciphertext(self) -> int:
        """How many queries one ciphertext packs (batch form)."""
        return self.slots // self.lane

    @property
    def sum_strides(self) -> tuple[int, ...]:
        """Rotate-and-sum strides that finish the matrix product (m, 2m, ..., n/2)."""
        out = []
        stride = self.rows
        while stride < self.n:
            out.append(stride)
            stride *= 2
        return tuple(out)

    @property
    def block_strides(self) -> tuple[int, ...]:
        """Strides that add the P comparisons of class i into slot i * P (1, 2, ..., P/2)."""
        return tuple(1 << k for k in range(self.pad_classes.bit_length() - 1))

    @property
    def galois_steps(self) -> tuple[int, ...]:
        """Every rotation step the server circuit performs: the only keys a client sends."""
        steps = {1, *self.sum_strides, *self.block_strides}
        if self.giant > 1:
            steps.add(self.baby)
        return tuple(sorted(s for s in steps if 0 < s < self.slots))


def make_layout(*, members: int, dim: int, classes: int, slots: int) -> EnsembleLayout:
    """Compute the packed layout, or raise :class:`LayoutError` if it does not fit ``slots``."""
    if members < 1 or dim < 1 or classes < 2:
        raise LayoutError(f"need members >= 1, dim >= 1, classes >= 2 (got {members}, {dim}, {classes})")
    block = _pow2_at_least(dim)
    pad_classes = _pow2_at_least(classes)
    rows = pad_classes * pad_classes
    n = max(_pow2_at_least(members * block), rows)
    if n > slots:
        raise LayoutError(f"{members} members x {block} slots (or {rows} comparison rows) exceed {slots} slots")
    lane = 2 * n if 2 * n <= slots else n
    log_rows = rows.bit_length() - 1
    baby = 1 << ((log_rows + 1) // 2)
    giant = rows // baby
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
    )


def difference_matrix(
    weights: FloatArray, biases: FloatArray, *, norm_bound: float, layout: EnsembleLayout
) -> tuple[FloatArray, FloatArray, float]:
    """Fold ensemble averaging and pairwise differences into one scaled plaintext matrix.

    ``weights`` is ``(K, C, d)``, ``biases`` ``(K, C)``. Returns ``(M, bias, bound)`` with
    ``M`` of shape ``(m, n)`` and ``bias`` of shape ``(m,)`` such that for a packed query
    ``x``: ``(M @ x + bias)[i * P + j] == (L_i - L_j) / bound`` where ``L`` are the averaged
    logits, and ``|M @ x + bias| <= 1`` whenever each embedding has norm ``<= norm_bound``.
    """
    k, c, d = weights.shape
    if (k, c, d) != (layout.members, layout.classes, layout.dim) or biases.shape != (k, c):
        raise LayoutError(f"weights {weights.shape} / biases {biases.shape} do not fit the layout")
    if not np.all(np.isfinite(weights)) or not np.all(np.isfinite(biases)):
        raise LayoutError("weights and biases must be finite")
    p = layout.pad_classes
    full = np.zeros((c, layout.n))
    for member in range(k):
        start = member * layout.block
        full[:, start : start + d] = weights[member] / k
    mean_bias = biases.mean(axis=0)
    diff = np.zeros((layout.rows, layout.n))
    diff_bias = np.zeros(layout.rows)
    for i in range(c):
        for j in range(c):
            diff[i * p + j] = full[i] - full[j]
            diff_bias[i * p + j] = mean_bias[i] - mean_bias[j]
    x_norm = float(norm_bound) * np.sqrt(k)
    bound = float(np.max(np.linalg.norm(diff, axis=1) * x_norm + np.abs(diff_bias)))
    if bound <= 0.0:
        bound = 1.0  # all classes tie everywhere; any positive scale keeps the domain
    return diff / bound, diff_bias / bound, bound


def diagonals(matrix: FloatArray, layout: EnsembleLayout) -> list[FloatArray]:
    """Pre-rotated generalized diagonals, one slot vector per (baby a, giant b) pair.

    Entry ``a + g * b`` multiplies ``rot(x, a)`` inside giant step ``b``.
    """
    m, n, lane = layout.rows, layout.n, layout.lane
    t = np.arange(layout.slots)
    pos = t % lane
    valid = pos < n
    out: list[FloatArray] = []
    for b in range(layout.giant):
        for a in range(layout.baby):
            c = a + layout.baby * b
            diag = np.where(valid, matrix[pos % m, (pos + c) % n], 0.0)
            out.append(np.roll(diag, layout.baby * b))
    return out


def bias_slots(bias: FloatArray, layout: EnsembleLayout) -> FloatArray:
    """Bias vector laid out so every partial row sum stays inside [-1, 1]."""
    pos = np.arange(layout.slots) % layout.lane
    return np.where(pos < layout.n, bias[pos % layout.rows], 0.0)


def output_mask(layout: EnsembleLayout, count: int | None = None) -> npt.NDArray[np.bool_]:
    """Slots that carry a class win count (slot ``lane * q + i * P`` for class ``i``)."""
    count = layout.queries_per_ciphertext if count is None else count
    mask = np.zeros(layout.slots, dtype=bool)
    for q in range(count):
        for i in range(layout.classes):
            mask[q * layout.lane + i * layout.pad_classes] = True
    return mask


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
        out[base : base + layout.lane] = np.tile(x, layout.lane // layout.n)
    return out


def score_slots(values: FloatArray, layout: EnsembleLayout, count: int) -> FloatArray:
    """Read ``(count, C)`` raw comparison sums from a decrypted result vector."""
    vals = np.asarray(values, dtype=np.float64)
    idx = np.array([[q * layout.lane + i * layout.pad_classes for i in range(layout.classes)] for q in range(count)])
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
    def galois_steps(self) -> tuple[int, ...]:
        """Rotation steps the wide circuit performs."""
        return tuple(s for s in self.sum_strides if 0 < s < self.slots)


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
    weights: FloatArray, biases: FloatArray, *, norm_bound: float, layout: WideLayout
) -> tuple[FloatArray, FloatArray, float]:
    """Averaged class weights and biases, scaled so every pairwise difference lies in [-1, 1].

    Returns ``(W, bias, bound)``: ``W`` is ``(C, chunks, block)`` (piece ``t`` of class ``c``'s
    weights over the concatenated, zero-padded embeddings, divided by ``K * bound``), ``bias``
    ``(C,)`` the mean bias over ``bound``. ``bound`` is the same Cauchy-Schwarz bound as
    :func:`difference_matrix`: ``max_ij ||w_i - w_j|| * norm_bound * sqrt(K) + |b_i - b_j|``,
    so ``(L_i - L_j) / bound`` is in [-1, 1] for clipped embeddings (and, in the slots the
    client never reads, partial sums mixing two neighbouring queries stay within sqrt(2)).
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
    bound = float(np.max(diff_norm * float(norm_bound) * np.sqrt(k) + diff_bias))
    if bound <= 0.0:
        bound = 1.0
    return (full / bound).reshape(c, layout.chunks, layout.block), mean_bias / bound, bound


def wide_weight_slots(piece: FloatArray, layout: WideLayout) -> FloatArray:
    """One weight piece ``(block,)`` tiled over every query block of the slots."""
    return np.tile(np.asarray(piece, dtype=np.float64), layout.capacity)


def pack_wide(embeddings: FloatArray, layout: WideLayout, *, norm_bound: float) -> FloatArray:
    """Pack ``(Q, K, d)`` embeddings into ``(chunks, slots)`` slot vectors, clipping norms.

    Row ``t`` holds features ``t * block .. (t + 1) * block - 1`` of every query's concatenated
    (member-major) embeddings, query ``b`` in slots ``b * block ..``; unused slots are zero.
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
    out = np.zeros((layout.chunks, layout.slots))
    out[:, : q * layout.block] = pieces.reshape(layout.chunks, q * layout.block)
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
