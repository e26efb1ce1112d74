"""The packed layout's algebra, simulated in numpy (rotation = np.roll by -step)."""

from __future__ import annotations

import numpy as np
import pytest

from crypto import packing


def _simulate(layout: packing.EnsembleLayout, diags: list[np.ndarray], x: np.ndarray) -> np.ndarray:
    def rot(v: np.ndarray, k: int) -> np.ndarray:
        return np.roll(v, -k)

    babies = [x]
    for _ in range(1, layout.baby):
        babies.append(rot(babies[-1], 1))
    acc = None
    for b in reversed(range(layout.giant)):
        inner = sum(babies[a] * diags[a + layout.baby * b] for a in range(layout.baby))
        acc = inner if acc is None else rot(acc, layout.baby) + inner
    for stride in layout.sum_strides:
        acc = acc + rot(acc, stride)
    return acc


@pytest.mark.parametrize(
    ("members", "dim", "classes", "queries"),
    [(8, 384, 10, 1), (4, 32, 10, 8), (1, 10, 10, 8), (3, 20, 5, 2), (2, 7, 2, 3)],
)
def test_diagonal_circuit_computes_scaled_pairwise_differences(members, dim, classes, queries):
    rng = np.random.default_rng(members * 100 + dim)
    layout = packing.make_layout(members=members, dim=dim, classes=classes, slots=4096)
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
    p = layout.pad_classes
    for q in range(queries):
        got = out[q * layout.lane : q * layout.lane + p * p].reshape(p, p)[:classes, :classes]
        expected = (logits[q][:, None] - logits[q][None, :]) / bound
        np.testing.assert_allclose(got, expected, atol=1e-12)
    assert layout.queries_per_ciphertext >= queries
    assert len(layout.galois_steps) <= 12


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
