"""Dataset ownership: watermark-based and DOV4CL audits of a suspect model.

Job kind ``ownership`` (methods ``watermark`` and ``dov4cl`` statistics in :mod:`appliance.audits.ownership`),
watermark embedding routes, the SDK's ``client.ownership`` and ``appliance ownership``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from appliance.capabilities import Capability

if TYPE_CHECKING:
    import click
    from flask import Flask
    from flask_limiter import Limiter

    from appliance._internal.web.http import Api


def _routes(app: Flask, api: Api, limiter: Limiter) -> None:
    from appliance.capabilities.ownership.routes import register

    register(app, api, limiter)


def _jobs() -> None:
    from appliance.capabilities.ownership import job  # noqa: F401  (registers the job kinds)


def _cli() -> click.Group:
    from appliance.capabilities.ownership.cli import group

    return group()


CAPABILITY: Capability = Capability(name="ownership", routes=_routes, jobs=_jobs, cli=_cli)
