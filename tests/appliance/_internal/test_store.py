"""The store: versioned, idempotent migrations (also under concurrent first opens from several
processes), the SQLite settings every connection must have, and streamed blobs that leave no
orphan file behind when an upload fails."""

from __future__ import annotations

import hashlib
import io
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from support import ROOT


def test_migrations_are_versioned_and_idempotent(settings: Any) -> None:
    from appliance._internal.store import Store, all_migrations, connect, migrate

    first = Store.open(settings)
    second = Store.open(settings)
    try:
        expected = max(v for v, _ in all_migrations())
        rows = first.conn.execute("SELECT version FROM schema_migrations ORDER BY version")
        assert [r[0] for r in rows] == sorted(v for v, _ in all_migrations())
        # running them again, bypassing the per-process cache, changes nothing
        before = first.conn.execute("SELECT * FROM schema_migrations").fetchall()
        conn = connect(settings.db_path)
        assert migrate(conn) == expected and migrate(conn) == expected
        conn.close()
        after = second.conn.execute("SELECT * FROM schema_migrations").fetchall()
        assert [tuple(r) for r in after] == [tuple(r) for r in before]
    finally:
        first.close()
        second.close()


def test_failed_migration_rolls_back_and_trigger_bodies_split_right(tmp_path: Path) -> None:
    from appliance._internal.store import connect, migrate

    conn = connect(tmp_path / "m.db")
    good = [(1, "CREATE TABLE t (a TEXT DEFAULT 'x;y', n INTEGER DEFAULT 0);\n"
                "CREATE TABLE audit (msg TEXT);\n"
                "CREATE TRIGGER t_ins AFTER INSERT ON t BEGIN\n"
                "  INSERT INTO audit VALUES ('inserted; really');\n"
                "  UPDATE t SET n = n + 1 WHERE rowid = NEW.rowid;\n"
                "END;\n"
                "-- a comment; with a semicolon\n"
                "CREATE INDEX t_a ON t(a)")]
    assert migrate(conn, good) == 1
    conn.execute("INSERT INTO t (a) VALUES ('v')")
    assert tuple(conn.execute("SELECT a, n FROM t").fetchone()) == ("v", 1)
    assert conn.execute("SELECT msg FROM audit").fetchone()[0] == "inserted; really"
    bad = good + [(2, "CREATE TABLE u (a); INSERT INTO no_such_table VALUES (1)")]
    with pytest.raises(sqlite3.OperationalError):
        migrate(conn, bad)
    assert conn.execute("SELECT name FROM sqlite_master WHERE name='u'").fetchone() is None
    assert [r[0] for r in conn.execute("SELECT version FROM schema_migrations")] == [1]
    conn.close()


_CHILD = """
import sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
from appliance._internal.config import Settings
from appliance._internal.store import Store
from appliance._internal.auth import create_token
home, go = Path(sys.argv[1]), Path(sys.argv[2])
(go.parent / f"ready-{{sys.argv[3]}}").touch()
while not go.exists():
    time.sleep(0.005)
store = Store.open(Settings(home=home))
create_token(store, tenant="t" + sys.argv[3], role="admin")
create_token(store, tenant="shared", role="client")
store.close()
print("ok")
"""


def test_concurrent_first_open_from_several_processes(tmp_path: Path) -> None:
    from appliance._internal.config import Settings
    from appliance._internal.store import Store, all_migrations

    home, go = tmp_path / "fresh", tmp_path / "go"
    script = _CHILD.format(root=str(ROOT))
    procs = [subprocess.Popen([sys.executable, "-c", script, str(home), str(go), str(i)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for i in range(4)]
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("ready-*"))) < len(procs) and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()  # all four are at the line: their first opens race
    outputs = [p.communicate(timeout=60) for p in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0 and out.strip() == b"ok", err.decode()[-2000:]
    store = Store.open(Settings(home=home))
    try:
        versions = [r[0] for r in store.conn.execute("SELECT version FROM schema_migrations")]
        assert versions == sorted(v for v, _ in all_migrations())
        assert store.conn.execute("SELECT COUNT(*) FROM tokens").fetchone()[0] == 8
        # ensure_tenant raced four times on "shared": one tenant row
        assert store.conn.execute(
            "SELECT COUNT(*) FROM tenants WHERE name='shared'").fetchone()[0] == 1
        assert store.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        store.close()


def test_connection_settings_and_foreign_keys(settings: Any) -> None:
    from appliance._internal.store import Store

    store = Store.open(settings)
    try:
        conn = store.conn
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 5000
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute("INSERT INTO jobs (id, tenant_id, kind, params, inputs, state, "
                         "created_at) VALUES ('j', 'tnt_missing', 'k', '{}', '{}', 'queued', 'x')")
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute("INSERT INTO datasets (id, tenant_id, name, digest, size, n, shape, "
                         "has_labels, created_at) VALUES ('d', 'tnt_missing', 'n', 'nope', 1, 1, "
                         "'[]', 0, 'x')")
        tenant = store.ensure_tenant("fk")
        with pytest.raises(sqlite3.IntegrityError):  # state is constrained too
            conn.execute("INSERT INTO jobs (id, tenant_id, kind, params, inputs, state, "
                         "created_at) VALUES ('j', ?, 'k', '{}', '{}', 'exploded', 'x')",
                         (tenant,))
    finally:
        store.close()


_PATTERN = bytes(i % 251 for i in range(2 * 1024 * 1024 + 251))


class _ChunkedReader(io.RawIOBase):
    """A stream that refuses to be read whole and records each read size."""

    def __init__(self, size: int, *, fail_at: int | None = None) -> None:
        self.remaining = size
        self.position = 0
        self.fail_at = fail_at
        self.sizes: list[int] = []
        self.hasher = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:  # type: ignore[override]
        assert n is not None and n > 0, "the whole stream was requested at once"
        self.sizes.append(n)
        if self.fail_at is not None and self.position >= self.fail_at:
            raise OSError("client went away")
        take = min(n, self.remaining)
        start = self.position % 251
        data = _PATTERN[start:start + take]
        self.hasher.update(data)
        self.remaining -= take
        self.position += take
        return data


def test_blobs_are_streamed_and_failed_uploads_leave_nothing(settings: Any) -> None:
    from appliance._internal.store import CHUNK, Store
    from appliance.errors import PayloadTooLarge

    store = Store.open(settings)
    try:
        reader = _ChunkedReader(3 * CHUNK + 17)
        digest, size = store.blobs.put_stream(reader)
        assert size == 3 * CHUNK + 17 and max(reader.sizes) <= CHUNK
        assert digest == reader.hasher.hexdigest()
        path = store.blobs.path(digest)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
        assert path.stat().st_mode & 0o222 == 0  # content-addressed files are read-only
        again, _ = store.blobs.put_stream(_ChunkedReader(3 * CHUNK + 17))  # dedup
        assert again == digest
        before = sorted(p for p in settings.blob_dir.rglob("*") if p.is_file())
        with pytest.raises(PayloadTooLarge):
            store.blobs.put_stream(_ChunkedReader(5 * CHUNK), max_bytes=2 * CHUNK)
        with pytest.raises(OSError):
            store.blobs.put_stream(_ChunkedReader(5 * CHUNK, fail_at=2 * CHUNK))
        after = sorted(p for p in settings.blob_dir.rglob("*") if p.is_file())
        assert after == before and list(settings.tmp_dir.iterdir()) == []
        for bad in ("", "0" * 63, "g" * 64, "../" + "0" * 61, "A" * 64):
            with pytest.raises(Exception) as err:
                store.blobs.path(bad)
            assert type(err.value).__name__ == "NotFound"
    finally:
        store.close()


def test_oversized_http_upload_leaves_no_blob(tmp_path: Path) -> None:
    from support import auth, make_token

    from appliance._internal.config import Settings
    from appliance._internal.web.app import create_app

    settings = Settings(home=tmp_path / "h", max_upload_bytes=3 * 1024 * 1024,
                        log_level="WARNING")
    client = create_app(settings).test_client()
    token = make_token(settings, "t")
    # over the service's own limit but under Flask's request cap: the stream is cut off
    data = b"\1" * (3 * 1024 * 1024 + 10)
    resp = client.post("/v1/datasets", headers=auth(token), content_type="multipart/form-data",
                       data={"name": "d", "file": (io.BytesIO(data), "d.npz")})
    assert resp.status_code == 413 and resp.content_type == "application/problem+json"
    assert not [p for p in settings.blob_dir.rglob("*") if p.is_file()]
    assert list(settings.tmp_dir.iterdir()) == []
