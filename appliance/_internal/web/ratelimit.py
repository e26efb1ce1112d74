"""Rate limiting shared by every process of one appliance: a ``limits`` storage on a SQLite
file in the home, and the key a request is counted under.

>>> Limiter(key_func=rate_key, storage_uri=sqlite_storage_uri(settings), ...)

gunicorn runs several worker processes; an in-memory counter per process would multiply the
configured limit by their number. The embedded default keeps the counters in
``<home>/ratelimit.db`` (its own file, so counting never waits on the store's writers); the
cluster uses Redis, which ``limits`` supports natively.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

from flask import g, request
from limits.storage import Storage

from appliance._internal.auth import Principal, authenticate
from appliance._internal.config import Settings
from appliance._internal.web.db import get_store
from appliance.errors import Unauthorized

SCHEME = "appliance-sqlite"
# expired windows are swept on one increment in this many, so the table stays small
_SWEEP_EVERY = 512


def sqlite_storage_uri(settings: Settings) -> str:
    """The storage URI of the embedded default: ``appliance-sqlite:///<home>/ratelimit.db``."""
    return f"{SCHEME}://{(settings.home / 'ratelimit.db').resolve()}"


class SqliteWindowStorage(Storage):
    """Fixed-window counters in a SQLite file: atomic across threads and processes
    (``BEGIN IMMEDIATE``), a row per key holding its count and the end of its window."""

    STORAGE_SCHEME = [SCHEME]

    def __init__(self, uri: str | None = None, wrap_exceptions: bool = False,
                 **options: float | str | bool) -> None:
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)
        path = unquote(urlsplit(uri or "").path)
        if not path or not os.path.isabs(path):
            raise ValueError(f"{SCHEME}:// needs an absolute file path, got {uri!r}")
        self.path = Path(path)
        self._local = threading.local()
        self._calls = 0

    @property
    def base_exceptions(self) -> type[Exception]:
        return sqlite3.Error

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            conn = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA busy_timeout = 30000")
            conn.execute("PRAGMA journal_mode = WAL")
            # counters lost in a power cut only reopen a window early: no fsync per request
            conn.execute("PRAGMA synchronous = OFF")
            conn.execute("CREATE TABLE IF NOT EXISTS rate_windows ("
                         "key TEXT PRIMARY KEY, count INTEGER NOT NULL, expires_at REAL NOT NULL)")
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        """Add ``amount`` to the key's window, opening a new window of ``expiry`` seconds if
        the last one ended; returns the count in the current window."""
        conn = self._conn()
        now = time.time()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "INSERT INTO rate_windows (key, count, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET "
                "count = CASE WHEN expires_at <= ? THEN excluded.count ELSE count + ? END, "
                "expires_at = CASE WHEN expires_at <= ? THEN excluded.expires_at "
                "ELSE expires_at END",
                (key, amount, now + expiry, now, amount, now),
            )
            count = conn.execute("SELECT count FROM rate_windows WHERE key = ?",
                                 (key,)).fetchone()[0]
            self._calls += 1
            if self._calls % _SWEEP_EVERY == 0:
                conn.execute("DELETE FROM rate_windows WHERE expires_at <= ?", (now,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return int(count)

    def get(self, key: str) -> int:
        row = self._conn().execute(
            "SELECT count FROM rate_windows WHERE key = ? AND expires_at > ?",
            (key, time.time())).fetchone()
        return int(row[0]) if row else 0

    def get_expiry(self, key: str) -> float:
        row = self._conn().execute(
            "SELECT expires_at FROM rate_windows WHERE key = ? AND expires_at > ?",
            (key, time.time())).fetchone()
        return float(row[0]) if row else time.time()

    def check(self) -> bool:
        try:
            self._conn().execute("SELECT 1").fetchone()
        except sqlite3.Error:
            return False
        return True

    def reset(self) -> int | None:
        return self._conn().execute("DELETE FROM rate_windows").rowcount

    def clear(self, key: str) -> None:
        self._conn().execute("DELETE FROM rate_windows WHERE key = ?", (key,))


def rate_key() -> str:
    """Count a request against its authenticated token (however the header is spelled), else
    against the client address: a malformed or unknown header earns no quota of its own."""
    header = request.headers.get("Authorization")
    if header:
        try:
            principal: Principal = authenticate(get_store(), header)
        except Unauthorized:
            pass
        else:
            g.principal = principal  # the request's own authentication reuses it
            return "tok:" + principal.token_id
    return "ip:" + (request.remote_addr or "unknown")
