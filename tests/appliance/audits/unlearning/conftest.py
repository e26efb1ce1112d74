"""The unlearning subjects wrapped for the audits: the session's shared set (tests/conftest.py),
trained once for every unlearning test folder."""

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


def load_audit_subjects(subjects: Any) -> AuditSubjects:
    """The JSONL splits, parsed as an upload would be, and the subjects as audit models."""
    splits = {split: parse_jsonl(subjects.dataset_path(split).read_bytes())
              for split in ("forget", "retain", "holdout")}
    assert all(record.group for records in splits.values() for record in records)
    models = {role: CausalLM.from_dir(subjects.model_dir(role), device="cpu")
              for role in ("full", "gold", "reference")}
    return AuditSubjects(**splits, **models, source=subjects)


@pytest.fixture(scope="session")
def audit_subjects(unlearning_subjects: Any) -> AuditSubjects:
    return load_audit_subjects(unlearning_subjects)

