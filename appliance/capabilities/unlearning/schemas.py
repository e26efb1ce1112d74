"""Request and response shapes of the unlearning capability (pydantic only: the SDK imports it)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

AUDIT_NAMES = ("extraction", "knowledge_qa", "membership_inference", "truth_ratio",
               "adversarial_prompting", "relearning", "activation_perturbation", "patching_depth")
ALGORITHM_NAMES = ("grad_ascent", "grad_diff", "kl_min", "npo", "idk", "rmu")
DEFAULT_TEMPLATE = "Question: {question}\nAnswer:"
_ID = Field(min_length=1, max_length=64)


def _check_template(template: str) -> str:
    if "{question}" not in template:
        raise ValueError("template must contain {question}")
    try:
        template.format(question="")
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"template may use only the {{question}} placeholder: {exc}") from None
    return template


class UnlearningAuditParams(BaseModel):
    """Audit a causal LM's unlearning of a forget set against a holdout set (job kind
    ``unlearning-audit``)."""

    model_config = ConfigDict(extra="forbid")

    model_id: str = _ID
    forget_dataset_id: str = _ID
    holdout_dataset_id: str = _ID
    retain_dataset_id: str | None = Field(default=None, min_length=1, max_length=64)
    reference_model_id: str | None = Field(default=None, min_length=1, max_length=64)
    original_model_id: str | None = Field(default=None, min_length=1, max_length=64)
    audits: list[Literal[AUDIT_NAMES]] | None = Field(  # type: ignore[valid-type]
        default=None, min_length=1, max_length=len(AUDIT_NAMES),
        description="the audits to run; all that the inputs allow by default")
    audit_params: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per-audit parameters, e.g. {'relearning': {'steps': 5}}")
    template: str = Field(default=DEFAULT_TEMPLATE, min_length=10, max_length=512)
    alpha: float = Field(default=0.05, gt=0, lt=0.5)
    max_items: int = Field(default=200, ge=5, le=5000,
                           description="at most this many items per set are audited")
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    device: Literal["auto", "cpu", "cuda"] = "auto"

    _template = field_validator("template")(classmethod(lambda cls, v: _check_template(v)))

    @model_validator(mode="after")
    def _check(self) -> UnlearningAuditParams:
        unknown = sorted(set(self.audit_params) - set(AUDIT_NAMES))
        if unknown:
            raise ValueError(f"audit_params names unknown audits {unknown}")
        if self.audits and len(set(self.audits)) != len(self.audits):
            raise ValueError("audits are listed twice")
        if self.forget_dataset_id == self.holdout_dataset_id:
            raise ValueError("the forget and holdout datasets must differ")
        return self


class UnlearnParams(BaseModel):
    """Unlearn a forget set from a causal LM at matched utility (job kind ``unlearn``)."""

    model_config = ConfigDict(extra="forbid")

    model_id: str = _ID
    forget_dataset_id: str = _ID
    retain_dataset_id: str = _ID
    algorithm: Literal[ALGORITHM_NAMES]  # type: ignore[valid-type]
    steps: int = Field(default=60, ge=1, le=5000)
    lr: float = Field(default=5e-4, gt=0, le=1)
    options: dict[str, Any] = Field(default_factory=dict,
                                    description="further keyword arguments of the algorithm")
    name: str | None = Field(default=None, min_length=1, max_length=128,
                             pattern=r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,127}$")
    template: str = Field(default=DEFAULT_TEMPLATE, min_length=10, max_length=512)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    device: Literal["auto", "cpu", "cuda"] = "auto"

    _template = field_validator("template")(classmethod(lambda cls, v: _check_template(v)))


class AuditInfo(BaseModel):
    """One audit method: its name, parameters and defaults."""

    name: str
    method: str
    defaults: dict[str, Any]
    description: str


class AuditInfoList(BaseModel):
    items: list[AuditInfo]
    null_hypothesis: str
    correction: str


__all__ = ["ALGORITHM_NAMES", "AUDIT_NAMES", "AuditInfo", "AuditInfoList", "UnlearnParams",
           "UnlearningAuditParams"]
