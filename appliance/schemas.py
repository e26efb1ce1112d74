"""Request and response models of the HTTP API (pydantic v2); the OpenAPI document is
generated from these."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    hint: str | None = None


class Health(BaseModel):
    status: Literal["ok"]
    version: str
    queue: Literal["sqlite", "redis"]


class WhoAmI(BaseModel):
    tenant: str
    role: str
    token_id: str
    expires_at: str | None = Field(
        default=None, description="When this token stops working (ISO 8601 UTC); null: never")


class TokenCreate(BaseModel):
    """A token a tenant admin mints for its own tenant."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["client", "auditor"]
    label: str | None = Field(default=None, min_length=1, max_length=128)
    expires_in: str | None = Field(
        default=None, max_length=16,
        description="lifetime: 90m, 12h, 30d, 2w (default 30d, at most 365d; never past the "
                    "minting token's own expiry)")


class TokenOut(BaseModel):
    id: str
    role: str
    label: str | None = None
    created_at: str
    expires_at: str | None = None
    revoked_at: str | None = None


class TokenIssued(TokenOut):
    token: str = Field(description="the bearer token, shown only in this answer")


class TokenList(BaseModel):
    items: list[TokenOut]


class ModelFile(BaseModel):
    name: str
    sha256: str


class ModelOut(BaseModel):
    id: str
    name: str
    format: Literal["onnx", "safetensors", "transformers"]
    kind: Literal["classifier", "encoder", "causal_lm", "generator"]
    architecture: str | None = None
    config: dict[str, Any] | None = None
    files: list[ModelFile]
    size: int | None = None
    signer: dict[str, Any] | None = Field(
        default=None, description="who signed the uploaded model.sig, when one was verified")
    origin: dict[str, Any] | None = Field(
        default=None, description="for a model the appliance trained: its tag (what it is for, "
        "e.g. 'dov4cl_shadow'), the job that trained it and its recipe; null for uploads")
    created_at: str


class ModelList(BaseModel):
    items: list[ModelOut]


class ModelUpload(BaseModel):
    """multipart/form-data fields of a model upload."""

    file: bytes = Field(json_schema_extra={"format": "binary"})
    name: str = Field(min_length=1, max_length=128)
    format: Literal["onnx", "safetensors", "transformers"] | None = None
    kind: Literal["classifier", "encoder", "causal_lm", "generator"] | None = None
    architecture: str | None = None
    config: str | None = Field(default=None, description="JSON object: architecture config")
    signature: bytes | None = Field(
        default=None, json_schema_extra={"format": "binary"},
        description="model.sig: a Sigstore bundle from model_signing, verified before storing")


class DatasetUpload(BaseModel):
    """multipart/form-data fields of a dataset upload (.npz with 'x' and optional 'y', or
    .jsonl text items)."""

    file: bytes = Field(json_schema_extra={"format": "binary"})
    name: str = Field(min_length=1, max_length=128)


class DatasetOut(BaseModel):
    id: str
    name: str
    sha256: str
    size: int
    n: int
    shape: list[int]
    has_labels: bool
    num_classes: int | None = None
    format: str = "npz"
    created_at: str


class DatasetList(BaseModel):
    items: list[DatasetOut]


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: str = Field(min_length=1, max_length=64, description="a job kind from /v1/job-kinds")
    params: dict[str, Any] = Field(default_factory=dict)


class JobOut(BaseModel):
    id: str
    kind: str
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    progress: float
    attempts: int
    params: dict[str, Any]
    error: str | None = None
    report_id: str | None = None
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    cancel_requested: bool = False


class JobList(BaseModel):
    items: list[JobOut]


class JobLogLine(BaseModel):
    id: int
    ts: str
    level: str
    message: str


class JobLogs(BaseModel):
    items: list[JobLogLine]


class JobKindOut(BaseModel):
    name: str
    description: str
    roles: list[str]
    params_schema: dict[str, Any]


class JobKindList(BaseModel):
    items: list[JobKindOut]


class ReportSummary(BaseModel):
    id: str
    job_id: str | None = None
    method: str
    verdict: str | None = None
    log_index: int
    created_at: str


class ReportList(BaseModel):
    items: list[ReportSummary]


class ReportBundle(BaseModel):
    """Everything needed to verify a report offline."""

    envelope: dict[str, Any]
    log: dict[str, Any]
    public_key: str
    report: dict[str, Any]


class Checkpoint(BaseModel):
    envelope: dict[str, Any]
    tree_size: int
    root_hash: str


class ConsistencyProof(BaseModel):
    first: int
    second: int
    proof: list[str]


class PublicKey(BaseModel):
    public_key: str
    key_id: str
    log_origin: str


class ListQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: int = Field(default=100, ge=1, le=1000)
    offset: int = Field(default=0, ge=0, le=10_000_000)


class LogsQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    after: int = Field(default=0, ge=0, le=2**62)
    limit: int = Field(default=500, ge=1, le=5000)


class ReportQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tree_size: int | None = Field(default=None, ge=1)


class ConsistencyQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    first: int = Field(ge=1)
    second: int | None = Field(default=None, ge=1)


class ArchitectureList(BaseModel):
    items: dict[str, str]


class SuspectEndpoint(BaseModel):
    """A suspect behind an HTTP URL answering ``{"inputs": [...]}`` with ``{"outputs": [...]}``."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=8, max_length=2048)
    timeout_s: float = Field(default=10.0, gt=0, le=120)
    retries: int = Field(default=2, ge=0, le=10)
    query_budget: int | None = Field(default=None, ge=1, le=10_000_000)
    max_batch: int = Field(default=256, ge=1, le=4096)


class ReportMethod(BaseModel):
    name: str
    version: str


class ReportBody(BaseModel):
    """The signed body of a report (``report`` of a bundle): the same fields for every job kind;
    ``statistics`` and ``inputs`` are the method's own."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    schema_uri: str = Field(alias="schema")
    id: str
    job_id: str | None = None
    tenant: str
    method: ReportMethod
    parameters: dict[str, Any]
    seed: int | None = None
    inputs: dict[str, Any]
    statistics: dict[str, Any]
    p_value: float | None = None
    alpha: float | None = None
    verdict: str | None = None
    device: str | None = None
    timings: dict[str, float]
    created_at: str
