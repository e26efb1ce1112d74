"""Tenants and API tokens: a token is shown once, stored as a SHA-256 hash, compared in
constant time.

>>> token = create_token(store, tenant="acme", role="auditor")
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from appliance._internal.store import Store, new_id, utcnow
from appliance.errors import Forbidden, Unauthorized, ValidationFailed

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
    expires_at: float | None = None

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
    expires_at: float | None = None


_DURATION = re.compile(r"^\s*(\d{1,9})\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
MAX_TOKEN_LIFETIME_SECONDS = 10 * 365 * 86400


def parse_duration(text: str) -> int:
    """``"30d"`` -> 2592000: a positive count of seconds (s), minutes (m), hours (h), days (d)
    or weeks (w), at most ten years."""
    match = _DURATION.match(text)
    if match is None:
        raise ValidationFailed(
            f"invalid duration {text[:40]!r}", hint="write a number and a unit: 90m, 12h, 30d, 2w")
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if not 0 < seconds <= MAX_TOKEN_LIFETIME_SECONDS:
        raise ValidationFailed("a token lifetime is between 1 second and 10 years")
    return seconds


def format_timestamp(epoch: float | None) -> str | None:
    """Seconds since the epoch as ISO 8601 UTC (``None`` stays ``None``)."""
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_token(store: Store, *, tenant: str, role: str, label: str | None = None,
                 expires_in: float | None = None) -> IssuedToken:
    """Create a tenant if needed and a new token for it; the plain token exists only here.
    With ``expires_in`` (seconds) the token is refused once that time has passed."""
    if role not in ROLES:
        raise ValidationFailed(f"role must be one of {', '.join(ROLES)}")
    if not tenant or len(tenant) > 64 or not all(c.isalnum() or c in "-_." for c in tenant):
        raise ValidationFailed("tenant names are 1-64 characters of letters, digits, '-', '_', '.'")
    if expires_in is not None and not 0 < expires_in <= MAX_TOKEN_LIFETIME_SECONDS:
        raise ValidationFailed("a token lifetime is between 1 second and 10 years")
    expires_at = None if expires_in is None else time.time() + expires_in
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with store.transaction():
        tenant_id = store.ensure_tenant(tenant)
        token_id = new_id("tok")
        store.conn.execute(
            "INSERT INTO tokens (id, tenant_id, role, token_hash, label, created_at, expires_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (token_id, tenant_id, role, hash_token(token), label, utcnow(), expires_at),
        )
    return IssuedToken(token_id=token_id, tenant_id=tenant_id, tenant=tenant, role=role,
                       token=token, expires_at=expires_at)


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
        "SELECT t.id, t.tenant_id, t.role, t.token_hash, t.revoked_at, t.expires_at, n.name "
        "FROM tokens t JOIN tenants n ON n.id = t.tenant_id WHERE t.token_hash = ?",
        (presented,),
    ).fetchone()
    # Compare against a dummy when absent so both paths do the same constant-time work.
    stored = row["token_hash"] if row else hash_token("dummy")
    if not hmac.compare_digest(stored, presented) or row is None or row["revoked_at"]:
        raise Unauthorized("unknown or revoked token")
    expires_at = row["expires_at"]
    if expires_at is not None and time.time() >= expires_at:
        raise Unauthorized(
            f"token expired at {format_timestamp(expires_at)}; ask the operator for a new one "
            "(appliance tokens create)")
    return Principal(
        tenant_id=row["tenant_id"], tenant_name=row["name"], role=row["role"], token_id=row["id"],
        expires_at=expires_at,
    )
