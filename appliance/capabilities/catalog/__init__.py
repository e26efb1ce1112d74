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


CAPABILITY = Capability(name="catalog", routes=_routes)
