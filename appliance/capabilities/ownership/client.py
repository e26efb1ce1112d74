"""The SDK's ``client.ownership``: watermark a dataset before release, then audit a suspect
(httpx and schemas only).

    mark = client.ownership.watermark(dataset.id, fraction=0.1, target_class=0)
    client.ownership.download(mark.marked_dataset.id, "release.npz")    # release this copy
    job = client.ownership.audit("watermark_dvbw", suspect_model_id=suspect.id,
                                 watermark_id=mark.id, benign_dataset_id=held_out.id)
    result = client.ownership.wait(job, progress=True)
    result.verdict, result.p_value                   # 'trained_on_dataset', 0.0001
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.capabilities.ownership.schemas import (
    OwnershipMethod,
    OwnershipResult,
    WatermarkCreate,
    WatermarkList,
    WatermarkOut,
)
from appliance.schemas import DatasetOut, JobOut

if TYPE_CHECKING:
    from appliance.client import Client

JOB_KIND = "ownership"


def _id(item: str | DatasetOut | WatermarkOut | JobOut) -> str:
    return item if isinstance(item, str) else item.id


class OwnershipClient:
    """Dataset-ownership verification over the appliance's HTTP API."""

    def __init__(self, client: Client) -> None:
        self._client = client

    # -- before release: the keyed watermark ------------------------------------------------------
    def watermark(self, dataset: str | DatasetOut, *, fraction: float = 0.01,
                  target_class: int = 0, clean_label: bool = False, strength: float = 0.15,
                  decoy_fraction: float = 0.03, name: str | None = None) -> WatermarkOut:
        """Mark a copy of an image dataset (``x`` float ``[n, C, H, W]``, labels ``y``) with a
        trigger derived from a secret key that stays sealed in the appliance; release the
        marked copy (:meth:`download`)."""
        body = WatermarkCreate(fraction=fraction, target_class=target_class,
                               clean_label=clean_label, strength=strength,
                               decoy_fraction=decoy_fraction, name=name)
        return WatermarkOut.model_validate(self._client._json(
            "POST", f"/v1/datasets/{_id(dataset)}/watermark",
            json=body.model_dump(mode="json", exclude_none=True)))

    def watermarks(self) -> list[WatermarkOut]:
        """This tenant's watermarks (their keys never leave the appliance)."""
        return WatermarkList.model_validate(self._client._json("GET", "/v1/watermarks")).items

    def get_watermark(self, watermark: str | WatermarkOut) -> WatermarkOut:
        return WatermarkOut.model_validate(
            self._client._json("GET", f"/v1/watermarks/{_id(watermark)}"))

    def download(self, dataset: str | DatasetOut, path: str | Path) -> Path:
        """Save a dataset (e.g. a watermark's marked copy) as ``.npz`` at ``path``."""
        target = Path(path)
        target.write_bytes(self._client.request("GET", f"/v1/datasets/{_id(dataset)}/download").content)
        return target

    # -- later: the audit ---------------------------------------------------------------------------
    def audit(self, method: OwnershipMethod, *, suspect_model_id: str | None = None,
              suspect_endpoint: Mapping[str, Any] | None = None,
              watermark_id: str | None = None, benign_dataset_id: str | None = None,
              public_dataset_id: str | None = None, private_dataset_id: str | None = None,
              shadow_model_ids: Sequence[str] | None = None,
              shadow_training: Mapping[str, Any] | None = None,
              method_params: Mapping[str, Any] | None = None, seed: int = 0,
              device: str = "auto") -> JobOut:
        """Start an ``ownership`` job: ``watermark_dvbw`` (a classifier; ``watermark_id`` and a
        labelled ``benign_dataset_id``; ``method_params={"mode": "label"}`` for label-only
        suspects) or ``dov4cl`` (an encoder; the released and a private dataset, and
        ``shadow_model_ids`` or ``shadow_training``). The server checks the parameters: a bad
        combination is an :class:`appliance.client.ApiError` (422) naming it."""
        optional: dict[str, Any] = {
            "suspect_model_id": suspect_model_id,
            "suspect_endpoint": dict(suspect_endpoint) if suspect_endpoint is not None else None,
            "watermark_id": watermark_id, "benign_dataset_id": benign_dataset_id,
            "public_dataset_id": public_dataset_id, "private_dataset_id": private_dataset_id,
            "shadow_model_ids": list(shadow_model_ids) if shadow_model_ids is not None else None,
            "shadow_training": dict(shadow_training) if shadow_training is not None else None}
        params = {"method": method, "seed": seed, "device": device,
                  "method_params": dict(method_params or {}),
                  **{k: v for k, v in optional.items() if v is not None}}
        return self._client.create_job(JOB_KIND, params)

    def wait(self, job: str | JobOut, *, timeout: float = 3600.0,
             progress: bool = False) -> OwnershipResult:
        """Wait for an ownership job (with ``progress``, the bar of ``appliance jobs wait``) and
        read its signed report; a job that did not succeed raises
        :class:`appliance.client.JobNotSucceeded` with its reason."""
        finished = self._client.wait(job, timeout=timeout, progress=progress)
        return self.result(finished)

    def result(self, job: str | JobOut) -> OwnershipResult:
        """The result of a finished ownership job."""
        from appliance.client import JobNotSucceeded

        current = self._client.get_job(job) if isinstance(job, str) else job
        if current.kind != JOB_KIND:
            raise JobNotSucceeded(f"job {current.id} is a {current.kind!r} job, not an ownership audit")
        if current.state != "succeeded" or current.report_id is None:
            raise JobNotSucceeded(f"job {current.id} {current.state}: {current.error or 'no report yet'}")
        return OwnershipResult.from_bundle(current, self._client.get_report(current.report_id))


__all__ = ["OwnershipClient"]
