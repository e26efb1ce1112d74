"""Unlearning audits and reference unlearning: did a language model forget a forget set?

Job kinds ``unlearning-audit`` (the audit battery of :mod:`appliance.audits.unlearning`) and
``unlearn`` (the reference algorithms of :mod:`models.unlearning.algorithms`, whose result is
registered as a new model), a route listing the audits, the SDK's ``client.unlearning`` and the
``appliance unlearning`` command group.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from appliance.capabilities import Capability

if TYPE_CHECKING:
    import click
    from flask import Flask
    from flask_limiter import Limiter

    from appliance._internal.web.http import Api

MIGRATIONS: tuple[tuple[int, str], ...] = (
    (200, """
        CREATE TABLE unlearned_models (
            job_id TEXT PRIMARY KEY REFERENCES jobs(id),
            tenant_id TEXT NOT NULL REFERENCES tenants(id),
            model_id TEXT NOT NULL REFERENCES models(id),
            created_at TEXT NOT NULL);
    """),
)


def _routes(app: Flask, api: Api, limiter: Limiter) -> None:
    from appliance.capabilities.unlearning.routes import register

    register(app, api, limiter)


def _jobs() -> None:
    from appliance.capabilities.unlearning import job  # noqa: F401  (registers the job kinds)


def _cli() -> click.Group:
    from appliance.capabilities.unlearning.cli import unlearning

    return unlearning


CAPABILITY: Any = Capability(name="unlearning", routes=_routes, jobs=_jobs, cli=_cli,
                             migrations=MIGRATIONS)
