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
from appliance.errors import Forbidden, NotFound, Unauthorized, ValidationFailed

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


#: Roles a tenant admin may mint over the API; admin tokens come from the host operator only,
#: so a leaked tenant-admin token cannot mint further admins that outlive its revocation.
MINTABLE_ROLES: tuple[str, ...] = ("client", "auditor")
#: Longest lifetime of a token minted over the API (and the default when none is asked).
MAX_MINTED_LIFETIME_SECONDS = 365 * 86400
DEFAULT_MINTED_LIFETIME_SECONDS = 30 * 86400


def mint_tenant_token(store: Store, principal: Principal, *, role: str, label: str | None = None,
                      expires_in: float | None = None) -> IssuedToken:
    """A tenant admin mints a ``client`` or ``auditor`` token for its own tenant.

    Every minted token expires: ``expires_in`` seconds (default 30 days, at most a year), and
    never after the minting token itself. Raises 403 for other roles or for ``role="admin"``.
    """
    principal.require("admin")
    if role not in MINTABLE_ROLES:
        raise Forbidden(f"a tenant admin may mint {' or '.join(MINTABLE_ROLES)} tokens, not {role!r}",
                        hint="admin tokens are created on the appliance host: "
                             "appliance tokens create --role admin")
    lifetime = DEFAULT_MINTED_LIFETIME_SECONDS if expires_in is None else expires_in
    if not 0 < lifetime <= MAX_MINTED_LIFETIME_SECONDS:
        raise ValidationFailed("a minted token lives between 1 second and 365 days")
    if principal.expires_at is not None:
        lifetime = min(lifetime, principal.expires_at - time.time())
        if lifetime <= 0:
            raise Unauthorized("the minting token has expired")
    return create_token(store, tenant=principal.tenant_name, role=role, label=label,
                        expires_in=lifetime)


def token_view(row: dict[str, object]) -> dict[str, object]:
    """What a tenant admin sees of a token: never the token or its hash."""
    expires = row.get("expires_at")
    return {"id": row["id"], "role": row["role"], "label": row.get("label"),
            "created_at": row["created_at"],
            "expires_at": format_timestamp(float(expires)) if expires is not None else None,  # type: ignore[arg-type]
            "revoked_at": row.get("revoked_at")}


def list_tenant_tokens(store: Store, principal: Principal) -> list[dict[str, object]]:
    """The caller's tenant's tokens, newest first (admins only)."""
    principal.require("admin")
    rows = store.conn.execute(
        "SELECT id, role, label, created_at, expires_at, revoked_at FROM tokens "
        "WHERE tenant_id = ? ORDER BY created_at DESC, id", (principal.tenant_id,)).fetchall()
    return [token_view(dict(r)) for r in rows]


def revoke_tenant_token(store: Store, principal: Principal, token_id: str) -> None:
    """Revoke a token of the caller's own tenant (404 for any other); revoking twice is a no-op."""
    principal.require("admin")
    row = store.conn.execute("SELECT id FROM tokens WHERE id = ? AND tenant_id = ?",
                             (token_id, principal.tenant_id)).fetchone()
    if row is None:
        shown = token_id if len(token_id) <= 80 else token_id[:80] + "…"
        raise NotFound(f"token {shown!r} not found")
    revoke_token(store, token_id)


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
