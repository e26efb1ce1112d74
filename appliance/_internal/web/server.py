"""gunicorn in-process: ``appliance serve`` runs the app factory in each worker."""

from __future__ import annotations

import os
import tempfile
from typing import Any

from gunicorn.app.base import BaseApplication

from appliance._internal.config import Settings
from appliance._internal.identity import identity_for
from appliance._internal.store import Store
from appliance._internal.web.app import create_app


class _Gunicorn(BaseApplication):  # type: ignore[misc]
    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            if key in self.cfg.settings and value is not None:
                self.cfg.set(key, value)

    def load(self) -> Any:
        return create_app(Settings.from_env())


def run_server(settings: Settings, *, host: str, port: int, workers: int | None,
               threads: int) -> None:
    metrics_dir = settings.home / "metrics"
    metrics_dir.mkdir(parents=True, exist_ok=True)
    for stale in metrics_dir.glob("*.db"):
        stale.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    os.environ["APPLIANCE_HOME"] = str(settings.home)
    # initialise database and keys once, before forking
    Store.open(settings).close()
    identity_for(settings)
    _Gunicorn(gunicorn_options(host=host, port=port, workers=workers, threads=threads)).run()


def gunicorn_options(*, host: str, port: int, workers: int | None, threads: int) -> dict[str, Any]:
    """gunicorn's settings for ``appliance serve``."""
    return {
        "bind": f"{host}:{port}",
        "workers": workers or int(os.environ.get("APPLIANCE_HTTP_WORKERS", "2")),
        "threads": threads,
        "worker_class": "gthread",
        "timeout": 120,
        "graceful_timeout": 20,
        "keepalive": 5,
        "accesslog": None,
        "worker_tmp_dir": tempfile.gettempdir(),
        "preload_app": False,
        # gunicorn's control socket sits at one path per user ($XDG_RUNTIME_DIR/gunicorn.ctl):
        # two appliances on a host would share it, and it can stop or rescale either one.
        # Nothing here uses it.
        "control_socket_disable": True,
    }
