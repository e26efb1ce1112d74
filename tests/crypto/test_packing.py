"""The packed layout's algebra, simulated in numpy (rotation = np.roll by -step)."""

from __future__ import annotations

import numpy as np
import pytest

from crypto import packing


def _simulate(
    layout: packing.EnsembleLayout,
    diags: list[np.ndarray],
    x: np.ndarray,
    *,
    baby: int | None = None,
    giant: int | None = None,
    sum_strides: tuple[int, ...] | None = None,
) -> np.ndarray:
    """The evaluator's baby-step/giant-step product (comparison stage unless told otherwise)."""

    def rot(v: np.ndarray, k: int) -> np.ndarray:
        return np.roll(v, -k)

    baby = layout.baby if baby is None else baby
    giant = layout.giant if giant is None else giant
    babies = [x]
    for _ in range(1, baby):
        babies.append(rot(babies[-1], 1))
    acc = None
    for b in reversed(range(giant)):
        inner = sum(babies[a] * diags[a + baby * b] for a in range(baby))
        acc = inner if acc is None else rot(acc, baby) + inner
    for stride in layout.sum_strides if sum_strides is None else sum_strides:
        acc = acc + rot(acc, stride)
    return acc


@pytest.mark.parametrize("compact", [False, True])
@pytest.mark.parametrize(
    ("members", "dim", "classes", "queries"),
    [(8, 384, 10, 1), (4, 32, 10, 8), (1, 10, 10, 8), (3, 20, 5, 2), (2, 7, 2, 3)],
)
def test_diagonal_circuit_computes_scaled_pairwise_differences(members, dim, classes, queries, compact):
    rng = np.random.default_rng(members * 100 + dim)
    layout = packing.make_layout(members=members, dim=dim, classes=classes, slots=4096, compact=compact)
    assert layout.stride == (classes if compact else layout.pad_classes)
    weights = rng.normal(size=(members, classes, dim))
    biases = rng.normal(size=(members, classes))
    matrix, bias, bound = packing.difference_matrix(weights, biases, norm_bound=2.0, layout=layout)
    emb = rng.normal(size=(queries, members, dim)) * 3.0  # norms above the bound get clipped
    packed = packing.pack_queries(emb, layout, norm_bound=2.0)
    out = _simulate(layout, packing.diagonals(matrix, layout), packed)
    out = out + packing.bias_slots(bias, layout)
    assert np.max(np.abs(out)) <= 1.0 + 1e-9  # every slot, used or not, stays in the domain
    norms = np.linalg.norm(emb, axis=2, keepdims=True)
    clipped = emb * np.minimum(1.0, 2.0 / norms)
    logits = np.einsum("qkd,kcd->qc", clipped, weights) / members + biases.mean(axis=0)
    p = layout.stride
    for q in range(queries):
        got = out[q * layout.lane : q * layout.lane + classes * p].reshape(classes, p)[:, :classes]
        expected = (logits[q][:, None] - logits[q][None, :]) / bound
        np.testing.assert_allclose(got, expected, atol=1e-12)
        # The class windows the evaluator sums land on slot i * stride: sum_j (L_i - L_j) / bound.
        base = q * layout.lane
        sums = [out[base + i * p : base + i * p + p][:classes].sum() for i in range(classes)]
        np.testing.assert_allclose(sums, expected.sum(axis=1), atol=1e-10)
    assert layout.queries_per_ciphertext >= queries
    assert len(layout.galois_steps) <= 12


def _one_query(rng: np.random.Generator, layout: packing.EnsembleLayout) -> tuple[np.ndarray, ...]:
    """Random heads and one query (norms above the bound 1.5 get clipped) through the simulated
    diagonal circuit: ``(weights, biases, matrix, bias, bound, emb, out)``."""
    weights = rng.normal(size=(layout.members, layout.classes, layout.dim))
    biases = rng.normal(size=(layout.members, layout.classes))
    matrix, bias, bound = packing.difference_matrix(weights, biases, norm_bound=1.5, layout=layout)
    emb = rng.normal(size=(1, layout.members, layout.dim)) * 2.0
    packed = packing.pack_queries(emb, layout, norm_bound=1.5)
    out = _simulate(layout, packing.diagonals(matrix, layout), packed) + packing.bias_slots(bias, layout)
    return weights, biases, matrix, bias, np.float64(bound), emb, out


@pytest.mark.parametrize("compact", [False, True])
@pytest.mark.parametrize(("members", "dim", "classes"), [(8, 384, 10), (1, 10, 10), (3, 20, 5), (2, 7, 2), (1, 3, 3)])
def test_chunked_lane_meets_every_input_once_per_row_with_half_the_diagonals(members, dim, classes, compact):
    rng = np.random.default_rng(members * 1000 + dim + classes)
    n = packing.make_layout(members=members, dim=dim, classes=classes, slots=1 << 20, compact=compact).n
    classic = packing.make_layout(members=members, dim=dim, classes=classes, slots=2 * n, compact=compact)
    layout = packing.make_layout(members=members, dim=dim, classes=classes, slots=2 * n, compact=compact, chunked=True)
    assert classic.chunk == 0 and layout.chunk == layout.rows // 2 == layout.baby * layout.giant
    assert classic.baby * classic.giant == layout.rows
    assert layout.lane == layout.slots and layout.sum_strides[-1] == layout.slots // 2
    # Every input sits in exactly 2 slots (the chunks twice), and rows meet each input once:
    # the diagonals, summed over the slots of a row, are that row of the matrix.
    source = packing.chunk_sources(layout)
    assert sorted(np.bincount(source, minlength=n).tolist()) == [2] * n
    weights, biases, matrix, bias, bound, emb, out = _one_query(rng, layout)
    x = np.zeros(n)
    clipped = emb[0] * np.minimum(1.0, 1.5 / np.linalg.norm(emb[0], axis=1, keepdims=True))
    for member in range(members):
        x[member * layout.block : member * layout.block + dim] = clipped[member]
    # every slot holds its full row (period m), inside the sign polynomial's domain
    np.testing.assert_allclose(out, np.tile(matrix @ x + bias, layout.slots // layout.rows), atol=1e-12)
    assert np.max(np.abs(out)) <= 1.0 + 1e-9
    logits = clipped.reshape(-1) @ np.concatenate(list(weights), axis=1).T / members + biases.mean(axis=0)
    p = layout.stride
    got = out[: classes * p].reshape(classes, p)[:, :classes]
    np.testing.assert_allclose(got, (logits[:, None] - logits[None, :]) / bound, atol=1e-12)
    # the classic lane gives the same rows from twice the diagonals
    plain = _simulate(classic, packing.diagonals(matrix, classic), packing.pack_queries(emb, classic, norm_bound=1.5))
    np.testing.assert_allclose(plain[: layout.rows] + bias, out[: layout.rows], atol=1e-12)


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize(
    ("members", "dim", "classes"), [(8, 384, 10), (1, 1000, 10), (3, 20, 5), (2, 7, 2), (4, 512, 16)]
)
def test_pair_rows_give_each_class_its_win_count_in_its_own_block(members, dim, classes, chunked):
    """Each pair i < j is computed once; after the rotate-and-sum every block of m slots holds
    every row, block i weighs class i's pairs +-1 (pair_signs) and its window sum is
    sum_j (L_i - L_j) / bound, the win count's linear part (the circuit puts the sign
    polynomial, an odd function, between the two)."""
    rng = np.random.default_rng(members * 7 + dim + classes)
    pairs = classes * (classes - 1) // 2
    n = max(packing._pow2_at_least(members * packing._pow2_at_least(dim)), packing._pow2_at_least(pairs))
    slots = 2 * n if chunked else n
    if chunked and pairs == 1:  # one row: no chunks (K = m / 2), and x twice leaves block 1 unsummed
        with pytest.raises(packing.LayoutError, match="one query per ciphertext"):
            packing.make_layout(members=members, dim=dim, classes=classes, slots=slots, pairs=True, chunked=True)
        return
    layout = packing.make_layout(members=members, dim=dim, classes=classes, slots=slots, pairs=True, chunked=chunked)
    assert layout.pairs and layout.rows == packing._pow2_at_least(pairs) == layout.stride
    assert (layout.chunk > 0) == chunked and layout.lane == layout.slots
    rows = packing.pair_rows(classes)
    assert sorted(rows[np.triu_indices(classes, k=1)].tolist()) == list(range(pairs)) and (rows == rows.T).all()
    weights, biases, matrix, bias, bound, emb, out = _one_query(rng, layout)
    assert np.max(np.abs(out)) <= 1.0 + 1e-9
    np.testing.assert_allclose(out, np.tile(out[: layout.rows], layout.slots // layout.rows), atol=1e-12)
    clipped = emb[0] * np.minimum(1.0, 1.5 / np.linalg.norm(emb[0], axis=1, keepdims=True))
    logits = np.einsum("kd,kcd->c", clipped, weights) / members + biases.mean(axis=0)
    expected = (logits[:, None] - logits[None, :]) / bound
    np.testing.assert_allclose(packing.comparison_matrix(out, layout), expected, atol=1e-12)
    signs = packing.pair_signs(layout)
    assert np.abs(signs).sum() == classes * (classes - 1) and not signs[classes * layout.rows :].any()
    weighed = out * signs
    sums = [weighed[i * layout.rows : (i + 1) * layout.rows].sum() for i in range(classes)]
    np.testing.assert_allclose(sums, expected.sum(axis=1), atol=1e-10)
    assert set(layout.block_strides) == {1 << k for k in range(layout.rows.bit_length() - 1)}


def test_pair_rows_only_where_the_class_blocks_fit():
    with pytest.raises(packing.LayoutError, match="one query per ciphertext"):
        packing.make_layout(members=2, dim=8, classes=3, slots=4096, pairs=True)  # many lanes
    with pytest.raises(packing.LayoutError, match="class blocks"):
        packing.make_layout(members=8, dim=384, classes=20, slots=4096, pairs=True)  # 20 x 256 > 4096
    lay = packing.make_layout(members=8, dim=384, classes=16, slots=4096, pairs=True)
    assert (lay.rows, lay.baby, lay.giant) == (128, 8, 16)
    with pytest.raises(packing.LayoutError, match="win counts only"):
        packing.onehot_constants(lay)


def test_chunked_lane_only_where_one_query_fills_the_ciphertext():
    assert packing.make_layout(members=8, dim=384, classes=10, slots=4096, chunked=True).chunk == 0  # n == slots
    assert packing.make_layout(members=2, dim=8, classes=3, slots=4096, chunked=True).chunk == 0  # many lanes
    assert packing.make_layout(members=2, dim=8, classes=3, slots=4096, hidden=4, chunked=True).chunk == 0
    lay = packing.make_layout(members=8, dim=384, classes=10, slots=8192, compact=True, chunked=True)
    assert (lay.rows, lay.chunk, lay.baby, lay.giant) == (128, 64, 8, 8)
    assert packing.window_levels(10) == 4 and packing.window_levels(16) == 4 and packing.window_levels(7) == 4


def test_layout_refusals():
    with pytest.raises(packing.LayoutError):
        packing.make_layout(members=16, dim=384, classes=10, slots=4096)
    layout = packing.make_layout(members=2, dim=8, classes=3, slots=4096)
    with pytest.raises(packing.LayoutError):
        packing.pack_queries(np.zeros((1, 3, 8)), layout, norm_bound=1.0)
    with pytest.raises(packing.LayoutError):
        packing.pack_queries(np.full((1, 2, 8), np.nan), layout, norm_bound=1.0)
    with pytest.raises(packing.LayoutError):
        packing.pack_queries(np.zeros((layout.queries_per_ciphertext + 1, 2, 8)), layout, norm_bound=1.0)


@pytest.mark.parametrize(
    ("members", "dim", "classes", "hidden", "queries"),
    [
        (8, 384, 10, 16, 1),
        (8, 384, 10, 32, 1),
        (4, 32, 10, 8, 4),
        (3, 20, 5, 10, 16),
        (2, 7, 3, 5, 64),
        (1, 4, 2, 1, 8),
    ],
)
def test_hidden_circuit_computes_scaled_pairwise_differences(members, dim, classes, hidden, queries):
    rng = np.random.default_rng(members * 100 + hidden)
    layout = packing.make_layout(members=members, dim=dim, classes=classes, slots=4096, hidden=hidden)
    hw, hb = rng.normal(size=(members, hidden, dim)), rng.normal(size=(members, hidden))
    weights, biases = rng.normal(size=(members, classes, hidden)), rng.normal(size=(members, classes))
    activation = (0.3, 0.7, -0.2)
    m1, b1, m2, b2, bound = packing.hidden_matrices(hw, hb, weights, biases, activation, norm_bound=2.0, layout=layout)
    emb = rng.normal(size=(queries, members, dim)) * 3.0  # norms above the bound get clipped
    packed = packing.pack_queries(emb, layout, norm_bound=2.0)
    stage1 = dict(baby=layout.hidden_baby, giant=layout.hidden_giant, sum_strides=layout.hidden_sum_strides)
    s = _simulate(layout, packing.hidden_diagonals(m1, layout), packed, **stage1)
    s = s + packing.hidden_bias_slots(b1, layout)
    out = _simulate(layout, packing.diagonals(m2, layout), s * s) + packing.bias_slots(b2, layout)
    assert np.max(np.abs(out)) <= 1.0 + 1e-9  # every slot, used or not, stays in the domain
    clipped = emb * np.minimum(1.0, 2.0 / np.linalg.norm(emb, axis=2, keepdims=True))
    u = np.einsum("qkd,khd->qkh", clipped, hw) + hb
    h = activation[0] * u**2 + activation[1] * u + activation[2]
    logits = np.einsum("qkh,kch->qc", h, weights) / members + biases.mean(axis=0)
    p = layout.pad_classes
    for q in range(queries):
        got = out[q * layout.lane : q * layout.lane + p * p].reshape(p, p)[:classes, :classes]
        np.testing.assert_allclose(got, (logits[q][:, None] - logits[q][None, :]) / bound, atol=1e-12)
    assert layout.queries_per_ciphertext >= queries
    assert len(layout.galois_steps) <= 12


def test_hidden_layout_refusals():
    layout = packing.make_layout(members=2, dim=8, classes=3, slots=4096, hidden=4)
    zeros = (np.zeros((2, 4, 8)), np.zeros((2, 4)), np.zeros((2, 3, 4)), np.zeros((2, 3)))
    with pytest.raises(packing.LayoutError, match="c2"):
        packing.hidden_matrices(*zeros, (0.0, 1.0, 0.0), norm_bound=1.0, layout=layout)
    with pytest.raises(packing.LayoutError):
        packing.hidden_matrices(np.zeros((2, 5, 8)), *zeros[1:], (1.0, 0.0, 0.0), norm_bound=1.0, layout=layout)
    with pytest.raises(packing.LayoutError):
        packing.difference_matrix(np.zeros((2, 3, 8)), np.zeros((2, 3)), norm_bound=1.0, layout=layout)
    with pytest.raises(packing.LayoutError):
        packing.make_layout(members=8, dim=384, classes=10, slots=4096, hidden=1024)


@pytest.mark.parametrize("length", range(1, 34))
def test_window_plan_sums_consecutive_slots_with_power_of_two_rotations(length):
    top, extras = packing.window_plan(length)
    v = np.random.default_rng(length).normal(size=128)
    z, kept, width = v.copy(), {}, 1
    while width < top:
        if width in extras:
            kept[width] = z.copy()
        z = z + np.roll(z, -width)
        width *= 2
    for b in extras:
        z = np.roll(z, -b) + kept[b]
    np.testing.assert_allclose(z, sum(np.roll(v, -u) for u in range(length)), atol=1e-12)
    assert top + sum(extras) == length and all(b & (b - 1) == 0 and b < top for b in extras)
