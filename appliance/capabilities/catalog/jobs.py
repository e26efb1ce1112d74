"""Registered models as every capability's jobs load them: the local path a backend reads (the
blob, or the extracted transformers folder), the loaded model, and the digests a report binds."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from appliance._internal.jobs.runner import JobContext
from appliance.capabilities.catalog.schemas import ModelInput
from appliance.capabilities.catalog.service import extract_once
from models.engine import load_model


def _typed(model: ModelInput | Mapping[str, Any]) -> ModelInput:
    return model if isinstance(model, ModelInput) else ModelInput.model_validate(model)


def job_model_path(ctx: JobContext, model: ModelInput | Mapping[str, Any]) -> Path:
    """A local path a backend can load: the blob, or the extracted transformers folder."""
    model = _typed(model)
    blob = ctx.blob_path(model.blob)
    if model.format != "transformers":
        return blob
    # the API node extracted it at upload; embedded workers share that folder
    shared = ctx.settings.home / "modeldirs" / model.blob
    target = shared if shared.is_dir() else ctx.cache_dir("modeldirs") / model.blob
    return extract_once(blob, target, settings=ctx.settings)


def load_job_model(ctx: JobContext, model: ModelInput | Mapping[str, Any], device: str | None) -> Any:
    model = _typed(model)
    path = job_model_path(ctx, model)
    config = model.config
    if model.format == "onnx" and model.kind in ("classifier", "encoder"):
        # the registered kind decides how an ONNX graph's output is read
        config = {"kind": model.kind, **(config or {})}
    return load_model(
        path,
        format=model.format,
        architecture=model.architecture,
        config=config,
        device=None if device in (None, "auto") else device,
    )


def model_digests(model: ModelInput | Mapping[str, Any]) -> dict[str, Any]:
    model = _typed(model)
    return {"id": model.id, "name": model.name, "format": model.format,
            "files": model.files, "blob_sha256": model.blob, "signer": model.signer}
