"""The SDK's ``client.unlearning``: upload text datasets, audit, unlearn (httpx + schemas only).

    forget = client.unlearning.upload_items(records, name="forget")
    job = client.unlearning.audit(model_id=m, forget_dataset_id=forget.id, holdout_dataset_id=h)
    report = client.get_report(client.wait(job).report_id)
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from appliance.capabilities.unlearning.schemas import AuditInfoList, UnlearningAuditParams, UnlearnParams
from appliance.schemas import DatasetOut, JobOut, ModelOut

if TYPE_CHECKING:
    from appliance.client import Client


class UnlearningClient:
    """Unlearning audits and reference unlearning over the appliance's HTTP API."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def audits(self) -> AuditInfoList:
        """The audits on offer with their default parameters."""
        return AuditInfoList.model_validate(self._client._json("GET", "/v1/unlearning/audits"))

    def upload_items(self, items: Iterable[Mapping[str, Any] | Any], *, name: str) -> DatasetOut:
        """Upload question/answer items (mappings or objects with those attributes) as JSONL."""
        fields = ("question", "answer", "paraphrased_question", "paraphrased_answer",
                  "perturbed_answers", "text")
        lines = []
        for item in items:
            record = dict(item) if isinstance(item, Mapping) else {
                f: getattr(item, f) for f in fields if getattr(item, f, None)}
            if "perturbed_answers" in record:
                record["perturbed_answers"] = list(record["perturbed_answers"])
            lines.append(json.dumps({k: v for k, v in record.items() if v not in ("", None)}))
        handle = io.BytesIO(("\n".join(lines) + "\n").encode("utf-8"))
        body = self._client._json("POST", "/v1/datasets", data={"name": name},
                                  files={"file": (f"{name}.jsonl", handle)})
        return DatasetOut.model_validate(body)

    def audit(self, **params: Any) -> JobOut:
        """Start an ``unlearning-audit`` job (see :class:`UnlearningAuditParams`)."""
        checked = UnlearningAuditParams.model_validate(params)
        return self._client.create_job("unlearning-audit",
                                       checked.model_dump(mode="json", exclude_unset=True))

    def unlearn(self, **params: Any) -> JobOut:
        """Start an ``unlearn`` job (see :class:`UnlearnParams`)."""
        checked = UnlearnParams.model_validate(params)
        return self._client.create_job("unlearn", checked.model_dump(mode="json",
                                                                     exclude_unset=True))

    def register_model(self, job: str | JobOut) -> ModelOut:
        """Register the model a succeeded ``unlearn`` job produced (idempotent)."""
        job_id = job.id if isinstance(job, JobOut) else job
        return ModelOut.model_validate(
            self._client._json("POST", f"/v1/unlearning/jobs/{job_id}/model"))
