"""The unlearning subjects wrapped for the audits. They are trained once per recipe and cached
on disk by models.unlearning.subjects (``$APPLIANCE_UNLEARNING_CACHE``), so the audit and the
service tests share one training."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

#: the sizes tests/models/unlearning trains with: 20 forget, 80 retain, 20 holdout items
SUBJECT_SIZES = {"n_forget": 20, "n_retain": 80, "n_holdout": 20}

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

    subjects = make_subjects(seed=seed, **SUBJECT_SIZES)
    splits = {split: parse_jsonl(subjects.dataset_path(split).read_bytes())
              for split in ("forget", "retain", "holdout")}
    models = {role: CausalLM.from_dir(subjects.model_dir(role), device="cpu")
              for role in ("full", "gold", "reference")}
    return AuditSubjects(**splits, **models, source=subjects)


@pytest.fixture(scope="session")
def audit_subjects() -> AuditSubjects:
    return load_audit_subjects(0)
