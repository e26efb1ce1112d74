"""torch's process-wide random generator, shared safely between threads.

torch's layer initialisers draw from the process-wide generator. Seeding it is reproducible
only if nothing else draws between the seed and the last initialiser, and any module built
anywhere in the process draws from it, including modules built only to load weights into.
So every construction holds :data:`GLOBAL_RNG_LOCK`: seeded ones through
:func:`seeded_global_rng`, the rest through :func:`isolated_global_rng`, which also leaves the
global state as it found it. (Two ownership jobs at once got different shadows for the same
seed when one loaded its suspect while the other initialised a shadow.)
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

GLOBAL_RNG_LOCK = threading.RLock()


@contextmanager
def seeded_global_rng(seed: int) -> Iterator[None]:
    """Run a block that draws from torch's global RNG as if it were alone, seeded with ``seed``;
    the global state is restored afterwards and other threads' constructions wait meanwhile."""
    with GLOBAL_RNG_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield


@contextmanager
def isolated_global_rng() -> Iterator[None]:
    """Run a block whose draws from the global RNG do not matter (a module built to receive
    loaded weights) without disturbing a seeded construction in another thread."""
    with GLOBAL_RNG_LOCK, torch.random.fork_rng(devices=[]):
        yield
