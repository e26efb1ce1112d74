"""The catalog: registered models (ONNX, safetensors, transformers) and datasets (npz, JSONL)
that every other capability reads."""

from __future__ import annotations

from typing import TYPE_CHECKING

from appliance.capabilities import Capability

if TYPE_CHECKING:
    from flask import Flask
    from flask_limiter import Limiter

    from appliance._internal.web.http import Api


def _routes(app: Flask, api: Api, limiter: Limiter) -> None:
    from appliance.capabilities.catalog.routes import register

    register(app, api, limiter)


MIGRATIONS: tuple[tuple[int, str], ...] = (
    # where a model came from when the appliance trained it (a job), as JSON: its tag (what
    # it is for, e.g. "dov4cl_shadow"), the job and the recipe; NULL for uploaded models
    (100, """
        ALTER TABLE models ADD COLUMN origin TEXT;
    """),
)

CAPABILITY: Capability = Capability(name="catalog", routes=_routes, migrations=MIGRATIONS)
