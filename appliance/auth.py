"""Tenants and API tokens: a token is shown once, stored as a SHA-256 hash, compared in
constant time.

>>> token = create_token(store, tenant="acme", role="auditor")
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Literal

from .errors import Forbidden, Unauthorized, ValidationFailed
from .store import Store, new_id, utcnow

Role = Literal["admin", "auditor", "client"]
ROLES: tuple[str, ...] = ("admin", "auditor", "client")
TOKEN_PREFIX = "aat_"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the tenant every object they touch must belong to, and their role."""

    tenant_id: str
    tenant_name: str
    role: str
    token_id: str

    def require(self, *roles: str) -> None:
        if self.role not in roles:
            raise Forbidden(
                f"role {self.role!r} may not do this; needs one of {', '.join(roles)}"
            )


@dataclass(frozen=True)
class IssuedToken:
    token_id: str
    tenant_id: str
    tenant: str
    role: str
    token: str


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_token(store: Store, *, tenant: str, role: str, label: str | None = None) -> IssuedToken:
    """Create a tenant if needed and a new token for it; the plain token exists only here."""
    if role not in ROLES:
        raise ValidationFailed(f"role must be one of {', '.join(ROLES)}")
    if not tenant or len(tenant) > 64 or not all(c.isalnum() or c in "-_." for c in tenant):
        raise ValidationFailed("tenant names are 1-64 characters of letters, digits, '-', '_', '.'")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with store.transaction():
        tenant_id = store.ensure_tenant(tenant)
        token_id = new_id("tok")
        store.conn.execute(
            "INSERT INTO tokens (id, tenant_id, role, token_hash, label, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (token_id, tenant_id, role, hash_token(token), label, utcnow()),
        )
    return IssuedToken(token_id=token_id, tenant_id=tenant_id, tenant=tenant, role=role, token=token)


def revoke_token(store: Store, token_id: str) -> bool:
    cur = store.conn.execute(
        "UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (utcnow(), token_id)
    )
    return cur.rowcount == 1


def authenticate(store: Store, authorization: str | None) -> Principal:
    """Resolve an ``Authorization: Bearer`` header to a principal or raise 401."""
    if not authorization:
        raise Unauthorized("no Authorization header")
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token.startswith(TOKEN_PREFIX) or len(token) > 256:
        raise Unauthorized("expected 'Bearer aat_...'")
    presented = hash_token(token)
    row = store.conn.execute(
        "SELECT t.id, t.tenant_id, t.role, t.token_hash, t.revoked_at, n.name "
        "FROM tokens t JOIN tenants n ON n.id = t.tenant_id WHERE t.token_hash = ?",
        (presented,),
    ).fetchone()
    # Compare against a dummy when absent so both paths do the same constant-time work.
    stored = row["token_hash"] if row else hash_token("dummy")
    if not hmac.compare_digest(stored, presented) or row is None or row["revoked_at"]:
        raise Unauthorized("unknown or revoked token")
    return Principal(
        tenant_id=row["tenant_id"], tenant_name=row["name"], role=row["role"], token_id=row["id"]
    )
