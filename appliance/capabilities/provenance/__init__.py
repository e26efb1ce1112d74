"""Training-data provenance (TrainProVe): generators registered as models of kind
``generator``, the ``provenance`` job kind, ``/v1/provenance/...``, ``client.provenance`` and
``appliance provenance``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from appliance.capabilities import Capability

if TYPE_CHECKING:
    import click
    from flask import Flask
    from flask_limiter import Limiter

    from appliance._internal.web.http import Api


def _routes(app: Flask, api: Api, limiter: Limiter) -> None:
    from appliance.capabilities.provenance.plots import register_plots
    from appliance.capabilities.provenance.routes import register

    register(app, api, limiter)
    register_plots()


def _jobs() -> None:
    from appliance.capabilities.provenance.job import register

    register()


def _cli() -> click.Group:
    from appliance.capabilities.provenance.cli import group

    return group()


CAPABILITY: Capability = Capability(name="provenance", routes=_routes, jobs=_jobs, cli=_cli)
