"""Session fixtures: the unlearning subjects, trained once per test session in a temporary cache."""

from __future__ import annotations

import pytest

from models.unlearning.subjects import Subjects, make_subjects

#: Small enough to train the three subjects in well under a minute on two cores.
TEST_SIZES = {"n_forget": 20, "n_retain": 80, "n_holdout": 20}


@pytest.fixture(scope="session")
def subjects(tmp_path_factory: pytest.TempPathFactory) -> Subjects:
    return make_subjects(seed=0, cache_dir=tmp_path_factory.mktemp("unlearning-subjects"), **TEST_SIZES)
