"""Fixtures of the confidential-refinement tests (``confidential/`` and
``capabilities/refinement/``): the digits both parties slice, a simulated platform, and the data
owner's CKKS context."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support import shuffled_digits


@pytest.fixture(scope="session")
def digits_scaled() -> tuple[np.ndarray, np.ndarray]:
    """Digits shuffled with seed 0, features in [0, 1] (each module slices its parties' parts)."""
    import torch

    torch.set_num_threads(1)
    return shuffled_digits(0)


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A simulated enclave platform (attestation key, sealing root) in a fresh folder."""
    from enclave.platform import create_platform

    directory = tmp_path_factory.mktemp("platform")
    create_platform(directory)
    return directory


@pytest.fixture(scope="session")
def ckks() -> Any:
    """The data owner's CKKS context, secret key included (key generation is slow: once per
    session; no test changes it)."""
    from appliance.confidential import create_ckks_context

    return create_ckks_context()


@pytest.fixture(scope="session")
def ckks_public(ckks: Any) -> bytes:
    """The public part of ``ckks`` the host gets (Galois key generation is slow too)."""
    from appliance.confidential import public_context

    return public_context(ckks)
