"""The SDK's provenance sub-client (httpx and schemas only)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.capabilities.provenance.schemas import ProvenanceParams

if TYPE_CHECKING:
    from appliance.client import Client
    from appliance.schemas import JobOut, ModelOut


class ProvenanceClient:
    """``client.provenance``: register generators, run TrainProVe audits and attribution.

    >>> gen = client.provenance.register_generator("g.onnx", name="g", num_classes=10)  # doctest: +SKIP
    >>> arch, config = save_safetensors_generator(torch_generator, "g.safetensors")  # doctest: +SKIP
    >>> gen = client.provenance.register_generator("g.safetensors", name="g", num_classes=10,
    ...                                            architecture=arch, config=config)  # doctest: +SKIP
    >>> job = client.provenance.audit(generator_ids=[gen.id], suspect_model_id="mdl_...")  # doctest: +SKIP
    """

    def __init__(self, client: Client) -> None:
        self._client = client

    def register_generator(self, path: str | Path, *, name: str, num_classes: int,
                           class_names: Sequence[str] | None = None, architecture: str | None = None,
                           config: Mapping[str, Any] | None = None) -> ModelOut:
        """Upload a generator ``(noise [b, z], class [b]) -> samples [b, ...]``: an ONNX graph, or
        safetensors weights of a registered generator ``architecture`` (``conditional_mlp``,
        ``linear_gaussian``) with its ``config`` (``z_dim``, ``sample_shape``, ...; what
        :func:`models.generators.save_safetensors_generator` returns). The server checks the
        contract on a probe of every class before it stores anything."""
        from appliance.client import ClientError

        path = Path(path)
        safetensors = architecture is not None or path.suffix == ".safetensors"
        if safetensors and not architecture:
            raise ClientError(f"{path.name}: a safetensors generator needs its architecture and config",
                              hint="pass architecture= and config= (save_safetensors_generator returns "
                                   "both), or upload an ONNX graph")
        if config is not None and not safetensors:
            raise ClientError("config= describes a safetensors generator's architecture; an ONNX "
                              "graph carries its own", hint="leave config out for ONNX generators")
        merged: dict[str, Any] = {**(config or {}), "num_classes": num_classes}
        if class_names is not None:
            merged["class_names"] = list(class_names)
        return self._client.upload_model(path, name=name, format="safetensors" if safetensors else "onnx",
                                         kind="generator", architecture=architecture, config=merged)

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
