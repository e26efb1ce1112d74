"""Runtime settings, read from the environment (``APPLIANCE_*``) with safe embedded defaults.

>>> settings = Settings.from_env({"APPLIANCE_HOME": "/tmp/appliance"})
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

DEFAULT_HOME = Path.home() / ".audit-appliance"


class Settings(BaseModel):
    """Everything the appliance needs to know; one home folder holds all state."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    home: Path = Field(default=DEFAULT_HOME, description="Folder holding database, blobs, keys, queue")
    max_upload_bytes: int = Field(default=512 * 1024 * 1024, gt=0)
    max_json_bytes: int = Field(default=1024 * 1024, gt=0)
    max_extracted_bytes: int = Field(
        default=2 * 1024 * 1024 * 1024, gt=0,
        description="Bytes a model tar may decompress to (the sniffing path included)")
    max_archive_entries: int = Field(
        default=1000, gt=0, description="Entries (folders included) of a model tar or a .npz")
    max_dataset_bytes: int = Field(
        default=512 * 1024 * 1024, gt=0,
        description="Bytes the arrays x and y of a dataset may decompress to, together")
    queue_url: str | None = Field(default=None, description="redis://... selects the cluster queue")
    queue_prefix: str = "appliance"
    rate_limit: str = "600 per minute"
    rate_limit_storage: str | None = None
    log_level: str = "INFO"
    job_lease_seconds: float = Field(default=30.0, gt=0)
    max_job_attempts: int = Field(default=2, ge=1)
    consumer_workers: int = Field(default=2, ge=1)
    inference_session_ttl_seconds: int = Field(default=3600, gt=0)
    inference_evaluators: Literal["process", "inline"] = Field(
        default="process",
        description="Where sessions' HE evaluators live: 'process', a child process that exits a "
        "few seconds after the last session closes (its memory goes back to the system); "
        "'inline', this process (SEAL keeps what it freed for reuse, never returns it)")
    inference_idle_seconds: float = Field(
        default=5.0, ge=0, description="How long the evaluator process stays after its last session closes")
    device: str | None = None
    cluster_token: str | None = None
    api_url: str | None = Field(default=None, description="API node URL for cluster workers")
    signing_ca_bundle: Path | None = Field(
        default=None,
        description="PEM file of CA roots trusted for certificate-based model.sig uploads "
        "(checked offline; unset: only registered signer keys are trusted)",
    )
    kek_file: Path | None = Field(
        default=None,
        description="32-byte key-encryption key for sealed secrets (watermark keys); default "
        "<home>/keys/secrets.kek. Cluster workers need the API node's file mounted here.",
    )

    @field_validator("queue_url")
    @classmethod
    def _check_queue_url(cls, value: str | None) -> str | None:
        if value is not None and value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("APPLIANCE_QUEUE_URL must be a redis:// URL (or unset for SQLite)")
        return value or None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Build settings from ``APPLIANCE_*`` variables; keyword overrides win."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for name in cls.model_fields:
            key = f"APPLIANCE_{name.upper()}"
            if key in env and env[key] != "":
                values[name] = env[key]
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.model_validate(values)

    @property
    def cluster(self) -> bool:
        return self.queue_url is not None

    @property
    def db_path(self) -> Path:
        return self.home / "appliance.db"

    @property
    def blob_dir(self) -> Path:
        return self.home / "blobs"

    @property
    def key_dir(self) -> Path:
        return self.home / "keys"

    @property
    def queue_path(self) -> Path:
        return self.home / "queue.db"

    @property
    def log_db_path(self) -> Path:
        return self.home / "translog.db"

    @property
    def tmp_dir(self) -> Path:
        return self.home / "tmp"

    def ensure_dirs(self) -> None:
        for folder in (self.home, self.blob_dir, self.key_dir, self.tmp_dir):
            folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.key_dir, 0o700)
