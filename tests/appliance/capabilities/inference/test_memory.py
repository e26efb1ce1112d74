"""Closing a private-inference session frees its evaluator (keys, SEAL objects) at once."""

from __future__ import annotations

import weakref

import numpy as np

from appliance.capabilities.inference.service import EvaluatorCache, release_memory
from crypto.ensemble import EnsembleArtifact
from crypto.private_inference.client import PrivateClient


def test_dropped_sessions_are_collected_and_memory_released() -> None:
    rng = np.random.default_rng(5)
    art = EnsembleArtifact(
        templates=("a {}", "b {}"),
        weights=rng.normal(size=(2, 3, 8)),
        biases=np.zeros((2, 3)),
        classes=("x", "y", "z"),
    )
    cache = EvaluatorCache(capacity=4)
    refs = []
    for session in ("s1", "s2"):
        private = PrivateClient(spec=art.public_spec())
        evaluator = cache.build(art, "ens", private.evaluation_keys(), layout=private.layout_digest,
                                session_id=session)
        cache.put("ens", session, evaluator)
        refs.append(weakref.ref(evaluator))
        del evaluator
    assert all(r() is not None for r in refs) and len(cache) == 2
    cache.drop("ens", "s1")
    # The first session's evaluator is gone (its SEAL keys with it) while its sibling, which
    # shares its encoded weights, still serves.
    assert refs[0]() is None and refs[1]() is not None and ("ens", "s2") in cache
    cache.clear()
    assert refs[1]() is None and len(cache) == 0
    assert isinstance(release_memory(), bool)
