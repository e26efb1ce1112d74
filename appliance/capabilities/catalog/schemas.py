"""What a job carries to let any worker load a registered model or dataset (pydantic only:
the SDK and the worker import it without Flask)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


class ModelInput(BaseModel):
    """A registered model as a job message names it: enough to fetch and load its blob."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    id: str
    name: str
    format: Literal["onnx", "safetensors", "transformers"]
    kind: str | None = None
    architecture: str | None = None
    config: dict[str, Any] | None = None
    blob: str
    files: Any = None
    signer: dict[str, Any] | None = None
    origin: dict[str, Any] | None = None


class DatasetInput(BaseModel):
    """A registered dataset as a job message names it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    name: str
    sha256: str
    n: int | None = None
    shape: list[int] | None = None
    has_labels: bool = False
    format: str = "npz"
