"""The audit appliance service.

``appliance.create_app`` is the Flask app factory (imported on first use, so that the SDK and
the command line of a light install never import Flask)."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from appliance._internal.web.app import create_app

        return create_app
    raise AttributeError(f"module 'appliance' has no attribute {name!r}")
