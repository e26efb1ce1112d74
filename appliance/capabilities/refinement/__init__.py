"""Confidential refinement: a model owner and a data owner refine a model inside the
enclave on data neither of them, nor the host, may see."""

from __future__ import annotations

from typing import TYPE_CHECKING

from appliance.capabilities import Capability

if TYPE_CHECKING:
    import click
    from flask import Flask
    from flask_limiter import Limiter

    from appliance._internal.web.http import Api


def _routes(app: Flask, api: Api, limiter: Limiter) -> None:
    from appliance.capabilities.refinement.routes import register

    register(app, api, limiter)


def _jobs() -> None:
    from appliance.capabilities.refinement import job  # noqa: F401  (registers the job kinds)


def _cli() -> click.Group:
    from appliance.capabilities.refinement.cli import group

    return group()


CAPABILITY: Capability = Capability(name="refinement", routes=_routes, jobs=_jobs, cli=_cli)
