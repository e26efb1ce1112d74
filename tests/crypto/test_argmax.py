"""Properties of the composite sign polynomial and the win-count argmax (plaintext)."""

from __future__ import annotations

import numpy as np

from crypto import argmax


def test_sign_composite_is_odd_monotone_and_sharpens():
    x = np.linspace(-1.0, 1.0, 2001)
    for rounds in (1, 2, 4):
        y = argmax.sign_composite(x, rounds)
        assert np.all(np.diff(y) >= -1e-12) and np.all(np.diff(y[200:-200]) > 0)
        assert np.allclose(y, -y[::-1]) and np.max(np.abs(y)) <= 1.0
    assert np.all(np.abs(argmax.sign_composite(np.array([0.3, -0.3]), 8)) > 0.999)
    assert argmax.compositions_for_depth(3) == 1 and argmax.compositions_for_depth(8) == 3


def test_soft_win_counts_preserve_argmax_and_hard_counts_rank():
    rng = np.random.default_rng(0)
    logits = rng.uniform(-1, 1, size=(2000, 10))
    for rounds in (1, 2):
        counts = argmax.reference_win_counts(logits, bound=2.0, rounds=rounds)
        assert np.array_equal(argmax.winner(counts), logits.argmax(axis=1))
    sharp = argmax.reference_win_counts(np.array([[0.9, -0.9, 0.0]]), bound=2.0, rounds=12)
    np.testing.assert_allclose(sharp[0], [2.0, 0.0, 1.0], atol=1e-6)
