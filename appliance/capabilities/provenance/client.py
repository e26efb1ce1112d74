"""The SDK's provenance sub-client (httpx and schemas only)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.capabilities.provenance.schemas import ProvenanceParams

if TYPE_CHECKING:
    from appliance.client import Client
    from appliance.schemas import JobOut, ModelOut


class ProvenanceClient:
    """``client.provenance``: register generators, run TrainProVe audits and attribution.

    >>> gen = client.provenance.register_generator("g.onnx", name="g", num_classes=10)  # doctest: +SKIP
    >>> job = client.provenance.audit(generator_ids=[gen.id], suspect_model_id="mdl_...")  # doctest: +SKIP
    """

    def __init__(self, client: Client) -> None:
        self._client = client

    def register_generator(self, path: str | Path, *, name: str, num_classes: int,
                           class_names: Sequence[str] | None = None) -> ModelOut:
        """Upload an ONNX generator (noise [b, z], class [b]) -> samples [b, ...]."""
        config: dict[str, Any] = {"num_classes": num_classes}
        if class_names is not None:
            config["class_names"] = list(class_names)
        return self._client.upload_model(path, name=name, format="onnx", kind="generator", config=config)

    def list_generators(self) -> list[ModelOut]:
        """This tenant's generators."""
        from appliance.schemas import ModelList

        return ModelList.model_validate(self._client._json("GET", "/v1/provenance/generators")).items

    def audit(self, *, generator_ids: Sequence[str] | None = None, generator_endpoint: dict[str, Any] | None = None,
              suspect_model_id: str | None = None, suspect_endpoint: dict[str, Any] | None = None,
              **params: Any) -> JobOut:
        """Start a provenance audit; several ``generator_ids`` ask for attribution."""
        from appliance.schemas import JobOut

        body = ProvenanceParams.model_validate({
            "generator_model_ids": list(generator_ids) if generator_ids else None,
            "generator_endpoint": generator_endpoint, "suspect_model_id": suspect_model_id,
            "suspect_endpoint": suspect_endpoint, **params})
        return JobOut.model_validate(self._client._json(
            "POST", "/v1/provenance/audits", json=body.model_dump(mode="json", exclude_none=True)))


__all__ = ["ProvenanceClient"]
