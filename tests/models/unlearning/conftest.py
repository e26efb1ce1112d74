"""The unlearning subjects of these tests: the session's shared set (see tests/conftest.py)."""

from __future__ import annotations

from typing import Any

import pytest

from models.unlearning.subjects import Subjects


@pytest.fixture(scope="session")
def subjects(unlearning_subjects: Any) -> Subjects:
    return unlearning_subjects  # type: ignore[no-any-return]
