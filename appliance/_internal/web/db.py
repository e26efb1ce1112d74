"""The request's database handle, as in Flask's tutorial: ``get_store()`` in a view returns the
tenant-aware :class:`Store` for this request (one SQLite connection per server thread)."""

from __future__ import annotations

import os
import threading

from flask import current_app, g

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
