"""The one softmax (plaintext engines and the enclave share it)."""

from __future__ import annotations

import numpy as np

from models.numerics import softmax


def test_softmax_rows_sum_to_one_and_keep_the_float_dtype() -> None:
    z = np.array([[1.0, 2.0, 3.0], [1000.0, 1000.0, -1000.0]])
    p = softmax(z)
    assert p.dtype == np.float64 and np.allclose(p.sum(axis=1), 1.0)
    assert np.allclose(p[0], np.exp([1, 2, 3]) / np.exp([1, 2, 3]).sum())
    assert np.allclose(p[1], [0.5, 0.5, 0.0]) and np.isfinite(p).all()
    assert softmax(z.astype(np.float32)).dtype == np.float32
    assert softmax(np.array([[0, 0]])).tolist() == [[0.5, 0.5]]  # integers become float64
    assert np.array_equal(z, [[1.0, 2.0, 3.0], [1000.0, 1000.0, -1000.0]])  # input untouched
