"""Private inference: encrypted ensemble predictions the server cannot read (SecPE-style
ensembles over CKKS), with sessions holding a client's evaluation keys."""

from __future__ import annotations

from typing import TYPE_CHECKING

from appliance.capabilities import Capability

if TYPE_CHECKING:
    import click
    from flask import Flask
    from flask_limiter import Limiter

    from appliance._internal.web.http import Api


def _routes(app: Flask, api: Api, limiter: Limiter) -> None:
    from appliance.capabilities.inference.routes import register

    register(app, api, limiter)


def _cli() -> list[click.Command]:
    from appliance.capabilities.inference.cli import ensembles, predict

    return [ensembles, predict]


MIGRATIONS: tuple[tuple[int, str], ...] = (
    # the single layout a session's client packs queries in: its layout digest, or "legacy"
    # for a client that sent none; NULL for sessions opened before it was recorded (410)
    (500, """
        ALTER TABLE inference_sessions ADD COLUMN layout TEXT;
    """),
)

CAPABILITY: Capability = Capability(name="inference", routes=_routes, cli=_cli, migrations=MIGRATIONS)
