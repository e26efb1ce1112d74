"""Request and answer shapes of the ownership capability (pydantic only: the SDK imports it)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from appliance.schemas import DatasetOut, JobOut, ReportBody

#: The verdicts of every ownership method: the suspect was trained on the dataset, or not shown.
OwnershipVerdict = Literal["trained_on_dataset", "not_detected"]
#: The ownership methods (``method`` of an ``ownership`` job).
OwnershipMethod = Literal["dov4cl", "watermark_dvbw"]


class WatermarkCreate(BaseModel):
    """Mark a dataset of float images ``x [n, C, H, W]`` with labels ``y``."""

    model_config = ConfigDict(extra="forbid")

    fraction: float = Field(default=0.01, gt=0, lt=1)
    target_class: int = Field(default=0, ge=0, le=100_000)
    clean_label: bool = False
    strength: float = Field(default=0.15, gt=0, le=1)
    decoy_fraction: float = Field(
        default=0.03, ge=0, lt=1,
        description="share of unmarked images given other keyed noise with their labels kept, "
        "so that only this key's trigger points to the target class")
    name: str | None = Field(default=None, min_length=1, max_length=128)


class WatermarkOut(BaseModel):
    id: str
    source_dataset_id: str
    marked_dataset: DatasetOut
    n_marked: int
    params: dict[str, Any]
    created_at: str


class WatermarkList(BaseModel):
    items: list[WatermarkOut]


class OwnershipResult(BaseModel):
    """A finished ownership audit: its verdict at alpha, the signed report's body, and the
    bundle to verify offline (``appliance verify`` or :func:`appliance.client.verify_report`)."""

    job: JobOut
    report_id: str
    method: str = Field(description="e.g. ownership/watermark_dvbw")
    verdict: OwnershipVerdict
    p_value: float = Field(ge=0, le=1)
    alpha: float
    queries: int = Field(ge=0, description="queries spent on the suspect")
    report: ReportBody
    bundle: dict[str, Any] = Field(repr=False, description="the signed bundle, as served")

    @classmethod
    def from_bundle(cls, job: JobOut, bundle: dict[str, Any]) -> OwnershipResult:
        """Read the result of a succeeded ``ownership`` job from its report bundle."""
        report = ReportBody.model_validate(bundle["report"])
        return cls.model_validate({
            "job": job, "report_id": report.id, "method": report.method.name,
            "verdict": report.verdict, "p_value": report.p_value, "alpha": report.alpha,
            "queries": report.statistics.get("queries", 0), "report": report, "bundle": bundle})


__all__ = ["OwnershipMethod", "OwnershipResult", "OwnershipVerdict", "WatermarkCreate",
           "WatermarkList", "WatermarkOut"]
