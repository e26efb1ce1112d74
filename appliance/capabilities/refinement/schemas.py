"""Request and answer shapes of confidential refinement (pydantic and dataclasses only: the SDK
imports them without Flask)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from appliance.schemas import JobOut

SLOTS = 4096  # CKKS preset n8192: 4096 slots per ciphertext
MAX_MODEL_BYTES = 64 << 20
MAX_SECRET_BYTES = 16 << 20
MAX_CONTEXT_BYTES = 256 << 20
MAX_DATASET_BYTES = 1 << 31


class RefinementTerms(BaseModel):
    """Public terms the model owner sets: architecture, shapes and hyper-parameters."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["softmax", "mlp_last_layer"]
    input_dim: int = Field(ge=1, le=SLOTS, description="features per sample")
    num_classes: int = Field(ge=2, le=1024)
    epochs: int = Field(default=1, ge=1, le=100)
    lr: float = Field(default=0.5, gt=0, le=100, allow_inf_nan=False)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    batch_size: int = Field(default=64, ge=1, le=SLOTS,
                            description="samples per ciphertext; the data owner encrypts so")
    reduction: Literal["host", "enclave"] = "host"


class RefinementCreateForm(BaseModel):
    """multipart/form-data of ``POST /v1/refinements``: the terms as fields, the model (packed
    and wrapped to the attested enclave) as the ``model`` file part."""

    model: bytes = Field(json_schema_extra={"format": "binary"})
    kind: Literal["softmax", "mlp_last_layer"]
    input_dim: int = Field(ge=1, le=SLOTS)
    num_classes: int = Field(ge=2, le=1024)
    epochs: int = Field(default=1, ge=1, le=100)
    lr: float = Field(default=0.5, gt=0, le=100)
    seed: int = Field(default=0, ge=0)
    batch_size: int = Field(default=64, ge=1, le=SLOTS)
    reduction: Literal["host", "enclave"] = "host"
    name: str | None = Field(default=None, max_length=128)


class RefinementProvisionForm(BaseModel):
    """multipart/form-data of ``POST /v1/refinements/{id}/data`` (the data owner's part)."""

    invitation: str = Field(min_length=8, max_length=128)
    train: bytes = Field(json_schema_extra={"format": "binary"})
    validation: bytes = Field(json_schema_extra={"format": "binary"})
    public_context: bytes = Field(json_schema_extra={"format": "binary"})
    ckks_secret: bytes = Field(json_schema_extra={"format": "binary"})


class RefinementData(BaseModel):
    """Digests and sizes of the data owner's encrypted part (never contents)."""

    train_sha256: str
    validation_sha256: str
    public_context_sha256: str
    ckks_secret_sha256: str
    num_train: int
    num_validation: int
    train_batches: int
    provisioned_at: str


class RefinementCheckpoint(BaseModel):
    sha256: str
    epoch: int
    step: int
    saved_at: str


class RefinementOut(BaseModel):
    """A refinement as either party (or an invitee holding the code) sees it."""

    id: str
    name: str | None = None
    role: Literal["model_owner", "data_owner", "invitee"]
    state: Literal["awaiting_data", "provisioned", "queued", "running", "succeeded", "failed",
                   "cancelled"]
    terms: RefinementTerms
    model_sha256: str
    data: RefinementData | None = None
    job: JobOut | None = None
    checkpoint: RefinementCheckpoint | None = None
    report: dict[str, Any] | None = Field(
        default=None, description="the signed report bundle (with the report body) once done")
    created_at: str


class RefinementCreated(BaseModel):
    refinement: RefinementOut
    invitation: str = Field(description="one-time code for the data owner; shown only once")


class RefinementList(BaseModel):
    items: list[RefinementOut]


class RefinementResultOut(BaseModel):
    """The refined model (encrypted to the model owner) and the signed manifest of its blob."""

    refinement_id: str
    job_id: str
    report_id: str
    sha256: str
    size: int
    model: str = Field(description="base64 of the encrypted refined-model blob")
    manifest: dict[str, Any] = Field(description="{envelope: DSSE in-toto statement, public_key}")


class RefinementJobInputs(BaseModel):
    """What a refinement job runs on: the refinement's terms and its blobs, by digest."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    refinement_id: str
    terms: RefinementTerms
    model: str
    train: str
    val: str
    context: str
    secret: str
    checkpoint: str | None = None
    checkpoint_meta: dict[str, Any] | None = None


class RefinementJobParams(BaseModel):
    """Run (or re-run) a provisioned refinement; ``resume`` uses the last sealed checkpoint."""

    model_config = ConfigDict(extra="forbid")

    refinement_id: str = Field(min_length=1, max_length=64)
    resume: bool = True


@dataclass(frozen=True, kw_only=True)
class ModelOwnerRefinement:
    """What :meth:`appliance.client.Client.create_refinement` returns. ``result_key`` (32 bytes)
    never leaves the model owner: keep it to open the result; give ``invitation`` (once) and
    ``id`` to the data owner."""

    id: str
    invitation: str
    result_key: bytes = field(repr=False)
    refinement: RefinementOut


@dataclass(frozen=True, kw_only=True)
class RefinedModel:
    """The refined model, opened on the model owner's machine (arrays as numpy)."""

    refinement_id: str
    job_id: str
    report_id: str
    sha256: str
    meta: dict[str, Any]
    arrays: dict[str, Any] = field(repr=False)
    statement: dict[str, Any]
