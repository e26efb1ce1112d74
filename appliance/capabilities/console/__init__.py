"""The web console: sign-in, overview, models, datasets, audit forms, live jobs, readable and
browser-verified reports, the transparency log and the API reference at ``/docs``.

It adds pages, not operations: every page calls the service functions the API routes call."""

from __future__ import annotations

from typing import TYPE_CHECKING

from appliance.capabilities import Capability

if TYPE_CHECKING:
    from flask import Flask
    from flask_limiter import Limiter

    from appliance._internal.web.http import Api

# the migration text lives here, not in service.py, so listing capabilities imports nothing heavy
MIGRATIONS: tuple[tuple[int, str], ...] = (
    (300, """
        CREATE TABLE console_sessions (
            id_hash TEXT PRIMARY KEY,
            token_id TEXT NOT NULL REFERENCES tokens(id),
            csrf TEXT NOT NULL,
            created_at TEXT NOT NULL,
            expires_at REAL NOT NULL);
        CREATE INDEX console_sessions_token ON console_sessions(token_id);
    """),
)


def _routes(app: Flask, api: Api, limiter: Limiter) -> None:
    from appliance.capabilities.console.routes import register

    register(app, api, limiter)


CAPABILITY = Capability(name="console", routes=_routes, migrations=MIGRATIONS)
