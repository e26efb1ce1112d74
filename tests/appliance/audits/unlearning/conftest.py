"""The unlearning subjects (trained once per seed and cached on disk by
models.unlearning.subjects) wrapped for the audits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from models.lm import CausalLM
from models.textdata import TextRecord, parse_jsonl


@dataclass
class AuditSubjects:
    """The corpus splits as JSONL records and the three subjects as audit models."""

    forget: list[TextRecord]
    retain: list[TextRecord]
    holdout: list[TextRecord]
    full: CausalLM
    gold: CausalLM
    reference: CausalLM
    source: Any


def load_audit_subjects(seed: int) -> AuditSubjects:
    from models.unlearning.subjects import make_subjects

    subjects = make_subjects(seed=seed)
    splits = {split: parse_jsonl(subjects.dataset_path(split).read_bytes())
              for split in ("forget", "retain", "holdout")}
    models = {role: CausalLM.from_dir(subjects.model_dir(role), device="cpu")
              for role in ("full", "gold", "reference")}
    return AuditSubjects(**splits, **models, source=subjects)


@pytest.fixture(scope="session")
def audit_subjects() -> AuditSubjects:
    return load_audit_subjects(0)
