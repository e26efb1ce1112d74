"""The request's handles, as in Flask's tutorial: ``get_store()`` in a view returns the
:class:`Store` for this request (one SQLite connection per server thread), ``get_enqueue()``
the function that queues a job message (the worker's queue, or the one a test installed)."""

from __future__ import annotations

import os
import threading

from flask import current_app, g

from appliance._internal.jobs.service import Enqueue
from appliance._internal.jobs.worker import make_enqueuer
from appliance._internal.store import Store

_thread_stores = threading.local()


def get_store() -> Store:
    """The request's store: one SQLite connection per server thread, reused across requests
    (opening one costs more than a whole request)."""
    if "store" not in g:
        settings = current_app.config["APPLIANCE_SETTINGS"]
        cache = getattr(_thread_stores, "by_db", None)
        if cache is None:
            cache = _thread_stores.by_db = {}
        key = (str(settings.db_path), os.getpid())
        store = cache.get(key)
        if store is None:
            store = cache[key] = Store.open(settings)
        g.store = store
    result: Store = g.store
    return result


def get_enqueue() -> Enqueue:
    """How this app queues jobs: ``extensions["appliance.enqueue"]``, made on first use."""
    enqueue: Enqueue | None = current_app.extensions.get("appliance.enqueue")
    if enqueue is None:
        enqueue = current_app.extensions["appliance.enqueue"] = make_enqueuer(
            current_app.config["APPLIANCE_SETTINGS"])
    return enqueue
