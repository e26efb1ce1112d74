"""Model signatures that interoperate with OpenSSF model-signing (Sigstore bundles).

In: tenants register signer public keys; an upload may carry the ``model.sig`` that
``model_signing sign`` wrote, verified before anything is stored, and the verified signer is
recorded on the model and carried by every report that uses it. Out: the appliance signs model
manifests as Sigstore bundles with its ECDSA P-256 key, which ``model_signing verify key``
accepts.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.capabilities import Capability

if TYPE_CHECKING:
    import click
    from flask import Flask
    from flask_limiter import Limiter

    from appliance._internal.auth import Principal
    from appliance._internal.store import Store
    from appliance._internal.web.http import Api


def _routes(app: Flask, api: Api, limiter: Limiter) -> None:
    from appliance.capabilities.signatures.routes import register

    register(app, api, limiter)


def _cli() -> click.Group:
    from appliance.capabilities.signatures.cli import signatures

    return signatures


def verify_model_signature(store: Store, principal: Principal, model_path: Path,
                           bundle_bytes: bytes) -> dict[str, Any]:
    """The upload hook: check ``model.sig`` against the tenant's signers and the model's
    files; return the signer record or raise a 422."""
    from appliance.capabilities.signatures.service import verify_upload

    return verify_upload(store, principal, model_path, bundle_bytes)


MIGRATIONS = (
    (
        400,
        """
        CREATE TABLE signer_keys (
            id TEXT PRIMARY KEY,
            tenant_id TEXT NOT NULL REFERENCES tenants(id),
            name TEXT NOT NULL, public_key TEXT NOT NULL, fingerprint TEXT NOT NULL,
            curve TEXT NOT NULL, created_at TEXT NOT NULL,
            UNIQUE (tenant_id, fingerprint));
        CREATE INDEX signer_keys_tenant ON signer_keys(tenant_id, created_at);
        ALTER TABLE models ADD COLUMN signer TEXT;
        """,
    ),
)

CAPABILITY = Capability(
    name="signatures",
    routes=_routes,
    cli=_cli,
    migrations=MIGRATIONS,
    extra={"verify_model_signature": verify_model_signature},
)
