"""Job kinds ``unlearning-audit`` and ``unlearn``."""

from __future__ import annotations

from appliance._internal.jobs.kinds import JobKind, register_job_kind
from appliance.capabilities.unlearning.schemas import UnlearningAuditParams, UnlearnParams
from appliance.capabilities.unlearning.service import (
    AuditInputs,
    UnlearnInputs,
    resolve_audit,
    resolve_unlearn,
    run_audit,
    run_unlearn,
)

register_job_kind(JobKind(
    name="unlearning-audit", params_model=UnlearningAuditParams, resolve=resolve_audit,
    run=run_audit, inputs_model=AuditInputs,
    description="Did a causal LM forget the forget set? Extraction, knowledge QA, membership "
    "inference, truth ratio, adversarial prompting, relearning, activation perturbation and "
    "patching audits; one verdict each and an overall one (Holm-corrected)."))
register_job_kind(JobKind(
    name="unlearn", params_model=UnlearnParams, resolve=resolve_unlearn, run=run_unlearn,
    inputs_model=UnlearnInputs,
    description="Unlearn a forget set from a causal LM (GradAscent, GradDiff, KL, NPO, IdK, RMU); "
    "the result is registered as a new model with POST /v1/unlearning/jobs/{id}/model."))
