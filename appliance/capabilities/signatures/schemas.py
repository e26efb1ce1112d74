"""Request and response models of model signatures (pydantic only: the SDK imports them)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class SignerKeyCreate(BaseModel):
    """Register a signer's ECDSA P-256/P-384 public key (PEM), as ``model_signing`` uses."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128)
    public_key: str = Field(min_length=1, max_length=16384,
                            description="PEM SubjectPublicKeyInfo, ECDSA P-256 or P-384")


class SignerKeyOut(BaseModel):
    id: str
    name: str
    fingerprint: str = Field(description="sha256 of the PEM: model-signing's key hint")
    curve: str
    public_key: str
    created_at: str


class SignerKeyList(BaseModel):
    items: list[SignerKeyOut]


class ModelSigner(BaseModel):
    """The verified signer recorded on a model at upload."""

    kind: Literal["key", "certificate"]
    fingerprint: str
    curve: str
    signer_key_id: str | None = None
    signer_name: str | None = None
    subject: str | None = None
    issuer: str | None = None
    certificate_sha256: str | None = None
    bundle_sha256: str


class SigningPublicKey(BaseModel):
    public_key: str = Field(description="PEM, ECDSA P-256: pass to model_signing --public_key")
    fingerprint: str


SigstoreBundle = dict[str, Any]
