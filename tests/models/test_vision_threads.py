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


def test_loading_a_model_beside_a_seeded_build_does_not_change_it() -> None:
    """A job loading its suspect (a module built only to receive weights) while another job
    seeds a shadow's construction: the shadow is the same as alone (CI saw two audits at once get
    different first shadows before loaders took the RNG lock)."""
    from models.architectures import create_architecture

    seeds = list(range(60))
    expected = {s: _weights(build_model(ENCODERS["conv_encoder"], seed=s, width=16)) for s in seeds}
    state = torch.random.get_rng_state()
    stop = threading.Event()

    def loader() -> None:
        while not stop.is_set():
            create_architecture("conv_encoder", {"width": 16})

    thread = threading.Thread(target=loader)
    thread.start()
    try:
        got = {s: _weights(build_model(ENCODERS["conv_encoder"], seed=s, width=16)) for s in seeds}
    finally:
        stop.set()
        thread.join()
    assert [s for s in seeds if not np.array_equal(got[s], expected[s])] == []
    assert torch.equal(torch.random.get_rng_state(), state)  # loading leaves the global state alone


def test_concurrent_shadow_training_is_reproducible() -> None:
    images = digits_splits(seed=0).alternative[0][:64]
    alone = _shadow(3, images)
    results: list[np.ndarray] = []

    def worker() -> None:
        results.append(_shadow(3, images))

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(np.array_equal(r, alone) for r in results)


def test_momentum_recipes_train_and_are_seeded() -> None:
    # BYOL, MoCo v3 and DINO: a few steps move the weights, the same seed gives the same ones,
    # and the encoder embeds at another input resolution when wrapped.
    from models.vision import OBJECTIVES, Resized

    images = digits_splits(seed=0).alternative[0][:64]
    for objective in ("byol", "mocov3", "dino"):
        assert objective in OBJECTIVES
        start = _weights(build_model(ENCODERS["conv_encoder"], seed=1, width=8, embed_dim=16))
        runs = [_weights(train_contrastive(build_model(ENCODERS["conv_encoder"], seed=1, width=8, embed_dim=16),
                                           images, objective=objective, seed=2, epochs=2, batch_size=32))
                for _ in range(2)]
        assert np.array_equal(runs[0], runs[1]) and not np.allclose(runs[0], start), objective
    wrapped = Resized(build_model(ENCODERS["pool_encoder"], seed=0, image_size=24, width=8), 24)
    trained = train_contrastive(wrapped, images, objective="byol", seed=0, epochs=1, batch_size=32)
    with torch.no_grad():
        assert trained(torch.from_numpy(images[:5])).shape == (5, 64)
