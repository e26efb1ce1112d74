"""Numerics shared by the plaintext engines and the enclave: numpy only, no framework.

    p = softmax(np.array([[1.0, 2.0, 3.0]]))        # rows sum to 1, dtype kept
"""

from __future__ import annotations

import numpy as np

__all__ = ["softmax"]


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax, numerically stable for large values, in the input's float dtype
    (float64 stays float64: the enclave's training and its plaintext baseline rely on it)."""
    z = np.asarray(z)
    if not np.issubdtype(z.dtype, np.floating):
        z = z.astype(np.float64)
    shifted = z - z.max(axis=1, keepdims=True)
    probabilities: np.ndarray = np.exp(shifted, out=shifted)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    return probabilities
