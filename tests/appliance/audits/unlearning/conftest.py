"""The unlearning subjects wrapped for the audits. They are trained once per recipe and cached
on disk by models.unlearning.subjects (``$APPLIANCE_UNLEARNING_CACHE``), so the audit and the
service tests share one training."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from models.lm import CausalLM
from models.textdata import TextRecord, parse_jsonl

#: the default subjects (40 forget, 160 retain, 40 holdout items: 8 people per tested set, as
#: tests run by person, and 4 against 4 people could never reach p < 0.05 after Holm)
SUBJECT_SIZES = {"n_forget": 40, "n_retain": 160, "n_holdout": 40}


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

    subjects = make_subjects(seed=seed, **SUBJECT_SIZES)
    splits = {split: parse_jsonl(subjects.dataset_path(split).read_bytes())
              for split in ("forget", "retain", "holdout")}
    assert all(record.group for records in splits.values() for record in records)
    models = {role: CausalLM.from_dir(subjects.model_dir(role), device="cpu")
              for role in ("full", "gold", "reference")}
    return AuditSubjects(**splits, **models, source=subjects)


@pytest.fixture(scope="session")
def audit_subjects() -> AuditSubjects:
    return load_audit_subjects(0)

