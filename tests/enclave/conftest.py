"""Fixtures for enclave tests: a temporary copy of the repository code the enclave runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from enclave.measurement import measured_modules, package_dir


@pytest.fixture
def repository_copy(tmp_path: Path) -> Path:
    """A copy (no bytecode) of every repository package the enclave imports; the real tree is
    never modified. Launch it with ``EnclaveClient.launch(package=copy / "enclave")``."""
    real_root = package_dir().parent
    root = tmp_path / "repo"
    for package in sorted({name.partition(".")[0] for name in measured_modules(real_root)}):
        shutil.copytree(real_root / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    return root
