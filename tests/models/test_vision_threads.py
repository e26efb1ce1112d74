"""Same seed, same model, whatever runs beside it: two jobs training shadows at once in one
process must not share the global RNG (they got different shadows before)."""

from __future__ import annotations

import threading

import numpy as np
import torch

from models.vision import ENCODERS, build_model, digits_splits, train_contrastive


def _weights(model: torch.nn.Module) -> np.ndarray:
    return torch.cat([p.detach().flatten() for p in model.parameters()]).numpy().copy()


def _shadow(seed: int, images: np.ndarray) -> np.ndarray:
    encoder = build_model(ENCODERS["conv_encoder"], seed=seed, width=8, embed_dim=16)
    return _weights(train_contrastive(encoder, images, objective="simsiam", seed=seed, epochs=1,
                                      batch_size=32, projection_head=True))


def test_concurrent_builds_match_sequential_ones() -> None:
    seeds = list(range(40))
    expected = {s: _weights(build_model(ENCODERS["conv_encoder"], seed=s, width=8)) for s in seeds}
    got: dict[int, np.ndarray] = {}

    def worker(offset: int) -> None:
        for s in seeds[offset::2]:
            got[s] = _weights(build_model(ENCODERS["conv_encoder"], seed=s, width=8))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(np.array_equal(got[s], expected[s]) for s in seeds)


def test_concurrent_shadow_training_is_reproducible() -> None:
    images = digits_splits(seed=0).alternative[0][:96]
    alone = _shadow(3, images)
    results: list[np.ndarray] = []

    def worker() -> None:
        results.append(_shadow(3, images))

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(np.array_equal(r, alone) for r in results)
