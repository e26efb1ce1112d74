"""The appliance store: SQLite (WAL, busy timeout, foreign keys, versioned migrations) plus a
content-addressed blob folder.

>>> store = Store.open(settings)        # one per thread / request
>>> digest, size = store.blobs.put_stream(fileobj)
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import sqlite3
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from appliance._internal.config import Settings
from appliance.capabilities import migrations as capability_migrations
from appliance.errors import NotFound, PayloadTooLarge
from crypto.translog import enable_wal

CHUNK = 1024 * 1024

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE tenants (
            id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, created_at TEXT NOT NULL);
        CREATE TABLE tokens (
            id TEXT PRIMARY KEY,
            tenant_id TEXT NOT NULL REFERENCES tenants(id),
            role TEXT NOT NULL CHECK (role IN ('admin', 'auditor', 'client')),
            token_hash TEXT NOT NULL UNIQUE,
            label TEXT, created_at TEXT NOT NULL, revoked_at TEXT);
        CREATE TABLE blobs (
            digest TEXT PRIMARY KEY, size INTEGER NOT NULL, created_at TEXT NOT NULL);
        CREATE TABLE models (
            id TEXT PRIMARY KEY,
            tenant_id TEXT NOT NULL REFERENCES tenants(id),
            name TEXT NOT NULL, format TEXT NOT NULL, kind TEXT NOT NULL,
            architecture TEXT, config TEXT, files TEXT NOT NULL, storage TEXT NOT NULL,
            manifest TEXT, created_at TEXT NOT NULL);
        CREATE INDEX models_tenant ON models(tenant_id, created_at);
        CREATE TABLE datasets (
            id TEXT PRIMARY KEY,
            tenant_id TEXT NOT NULL REFERENCES tenants(id),
            name TEXT NOT NULL, digest TEXT NOT NULL REFERENCES blobs(digest),
            size INTEGER NOT NULL, n INTEGER NOT NULL, shape TEXT NOT NULL,
            has_labels INTEGER NOT NULL, num_classes INTEGER, meta TEXT,
            created_at TEXT NOT NULL);
        CREATE INDEX datasets_tenant ON datasets(tenant_id, created_at);
        CREATE TABLE jobs (
            id TEXT PRIMARY KEY,
            tenant_id TEXT NOT NULL REFERENCES tenants(id),
            kind TEXT NOT NULL, params TEXT NOT NULL, inputs TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN
                ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
            progress REAL NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0,
            cancel_requested INTEGER NOT NULL DEFAULT 0,
            worker TEXT, error TEXT, report_id TEXT,
            created_at TEXT NOT NULL, started_at TEXT, finished_at TEXT, heartbeat_at REAL);
        CREATE INDEX jobs_tenant ON jobs(tenant_id, created_at);
        CREATE INDEX jobs_state ON jobs(state);
        CREATE TABLE job_logs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            job_id TEXT NOT NULL REFERENCES jobs(id),
            ts TEXT NOT NULL, level TEXT NOT NULL, message TEXT NOT NULL);
        CREATE INDEX job_logs_job ON job_logs(job_id, id);
        CREATE TABLE reports (
            id TEXT PRIMARY KEY,
            tenant_id TEXT NOT NULL REFERENCES tenants(id),
            job_id TEXT REFERENCES jobs(id),
            method TEXT NOT NULL, verdict TEXT, log_index INTEGER NOT NULL,
            envelope TEXT NOT NULL, created_at TEXT NOT NULL);
        CREATE INDEX reports_tenant ON reports(tenant_id, created_at);
        """,
    ),
    (
        2,
        # private ensemble inference: the owner's artifact files are blobs; a
        # session's evaluation keys (public keys only) are a blob until it expires.
        """
        CREATE TABLE ensembles (
            id TEXT PRIMARY KEY,
            tenant_id TEXT NOT NULL REFERENCES tenants(id),
            name TEXT NOT NULL, spec TEXT NOT NULL,
            json_digest TEXT NOT NULL REFERENCES blobs(digest),
            tensors_digest TEXT NOT NULL REFERENCES blobs(digest),
            size INTEGER NOT NULL, created_at TEXT NOT NULL);
        CREATE INDEX ensembles_tenant ON ensembles(tenant_id, created_at);
        CREATE TABLE inference_sessions (
            id TEXT PRIMARY KEY,
            tenant_id TEXT NOT NULL REFERENCES tenants(id),
            ensemble_id TEXT NOT NULL REFERENCES ensembles(id),
            keys_digest TEXT REFERENCES blobs(digest),
            keys_size INTEGER NOT NULL, token_id TEXT,
            queries INTEGER NOT NULL DEFAULT 0,
            created_at TEXT NOT NULL, expires_at REAL NOT NULL);
        CREATE INDEX inference_sessions_tenant ON inference_sessions(tenant_id, created_at);
        CREATE INDEX inference_sessions_expiry ON inference_sessions(expires_at);
        """,
    ),
    (
        3,
        # dataset-ownership verification: a watermark's secret key is sealed with
        # the appliance's key-encryption key (AES-GCM, ids as associated data), never returned.
        """
        CREATE TABLE watermarks (
            id TEXT PRIMARY KEY,
            tenant_id TEXT NOT NULL REFERENCES tenants(id),
            source_dataset_id TEXT NOT NULL REFERENCES datasets(id),
            marked_dataset_id TEXT NOT NULL REFERENCES datasets(id),
            sealed_key BLOB NOT NULL, params TEXT NOT NULL, n_marked INTEGER NOT NULL,
            created_at TEXT NOT NULL);
        CREATE INDEX watermarks_tenant ON watermarks(tenant_id, created_at);
        """,
    ),
    (
        4,
        # confidential refinement: owned by the model owner's tenant; the data
        # owner's tenant is bound when it redeems the one-time invitation (stored hashed).
        # Every *_digest is a content-addressed blob of ciphertext or wrapped/sealed bytes.
        """
        CREATE TABLE refinements (
            id TEXT PRIMARY KEY,
            tenant_id TEXT NOT NULL REFERENCES tenants(id),
            name TEXT, kind TEXT NOT NULL, terms TEXT NOT NULL,
            model_digest TEXT NOT NULL REFERENCES blobs(digest),
            invitation_hash TEXT NOT NULL UNIQUE, invitation_used_at TEXT,
            data_tenant_id TEXT REFERENCES tenants(id),
            train_digest TEXT REFERENCES blobs(digest),
            val_digest TEXT REFERENCES blobs(digest),
            context_digest TEXT REFERENCES blobs(digest),
            secret_digest TEXT REFERENCES blobs(digest),
            data_meta TEXT, provisioned_at TEXT,
            checkpoint_digest TEXT REFERENCES blobs(digest), checkpoint_meta TEXT,
            result_manifest TEXT,
            created_at TEXT NOT NULL);
        CREATE INDEX refinements_tenant ON refinements(tenant_id, created_at);
        CREATE INDEX refinements_data_tenant ON refinements(data_tenant_id, created_at);
        CREATE INDEX jobs_refinement ON jobs(json_extract(params, '$.refinement_id'))
            WHERE kind = 'refinement';
        """,
    ),
    (
        5,
        # optional token expiry: seconds since the epoch, NULL for a token that
        # lives until it is revoked
        """
        ALTER TABLE tokens ADD COLUMN expires_at REAL;
        """,
    ),
    (
        6,
        # uploads being validated pin their blob: a refused upload deletes the blob
        # only when no other upload of the same content holds a pin and no row records it
        """
        CREATE TABLE blob_pins (
            id TEXT PRIMARY KEY, digest TEXT NOT NULL, created_at TEXT NOT NULL);
        CREATE INDEX blob_pins_digest ON blob_pins(digest);
        """,
    ),
]


def utcnow() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


def connect(path: Path) -> sqlite3.Connection:
    """Open SQLite the way every process of the appliance must: WAL, busy timeout, FKs."""
    conn = sqlite3.connect(str(path), timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 30000")
    enable_wal(conn)
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.row_factory = sqlite3.Row
    return conn


def migrate(conn: sqlite3.Connection, migrations: list[tuple[int, str]] | None = None) -> int:
    """Apply pending migrations in order, each in its own transaction; returns the version."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT)"
    )
    done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
    for version, sql in sorted(migrations if migrations is not None else all_migrations()):
        if version in done:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            again = conn.execute(
                "SELECT 1 FROM schema_migrations WHERE version = ?", (version,)
            ).fetchone()
            if again is None:
                for statement in _split_sql(sql):
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_migrations VALUES (?, ?)", (version, utcnow())
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    row = conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
    return int(row[0] or 0)


def _split_sql(sql: str) -> list[str]:
    """Split a migration script into statements; a ';' inside a string literal, a comment
    or a trigger body (BEGIN ... END) does not end a statement."""
    statements: list[str] = []
    current = ""
    for piece in sql.split(";"):
        current += piece + ";"
        if sqlite3.complete_statement(current):
            statements.append(current)
            current = ""
    rest = current[:-1]  # the last piece got a ';' the script did not have
    if rest.strip():
        statements.append(rest)
    return [stmt.strip() for stmt in statements if stmt.strip(" \t\r\n;")]


def all_migrations() -> list[tuple[int, str]]:
    """The core's migrations and every capability's, checked for clashing versions."""
    combined = list(MIGRATIONS) + capability_migrations()
    versions = [version for version, _ in combined]
    if len(set(versions)) != len(versions):
        raise ValueError(f"migration versions registered twice: {sorted(versions)}")
    return combined


class BlobStore:
    """Content-addressed files (sha256) beside the database, written by streaming."""

    def __init__(self, *, root: Path, tmp_dir: Path) -> None:
        self.root = root
        self.tmp_dir = tmp_dir

    def path(self, digest: str) -> Path:
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise NotFound("no such blob")
        return self.root / digest[:2] / digest[2:]

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def put_stream(self, stream: IO[bytes], *, max_bytes: int | None = None) -> tuple[str, int]:
        """Copy a stream to a blob while hashing it; nothing held in memory beyond a chunk."""
        digest, size, staged = self.stage_stream(stream, max_bytes=max_bytes)
        try:
            self.place(staged, digest)
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        return digest, size

    def place(self, staged: Path, digest: str) -> None:
        """Move a staged file to its content address (or drop it if that blob exists)."""
        target = self.path(digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            staged.unlink()
        else:
            os.chmod(staged, 0o440)
            os.replace(staged, target)

    def stage_stream(self, stream: IO[bytes], *, max_bytes: int | None = None
                     ) -> tuple[str, int, Path]:
        """Copy a stream to a temporary file while hashing it: (digest, size, staged path)."""
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        hasher = hashlib.sha256()
        size = 0
        fd, tmp_name = tempfile.mkstemp(dir=self.tmp_dir, prefix="upload-")
        try:
            with os.fdopen(fd, "wb") as out:
                while True:
                    chunk = stream.read(CHUNK)
                    if not chunk:
                        break
                    size += len(chunk)
                    if max_bytes is not None and size > max_bytes:
                        raise PayloadTooLarge(f"upload exceeds {max_bytes} bytes")
                    hasher.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            return hasher.hexdigest(), size, Path(tmp_name)
        except BaseException:
            if os.path.exists(tmp_name):
                os.unlink(tmp_name)
            raise

    def put_bytes(self, data: bytes) -> tuple[str, int]:
        import io

        return self.put_stream(io.BytesIO(data))

    def put_file(self, path: Path) -> tuple[str, int]:
        with open(path, "rb") as handle:
            return self.put_stream(handle)


_MIGRATED: set[tuple[str, int]] = set()
_WRITE_LOCKS: dict[str, threading.Lock] = {}


class Store:
    """Domain access to the appliance tables; one instance per thread."""

    def __init__(self, *, settings: Settings, conn: sqlite3.Connection) -> None:
        self.settings = settings
        self.conn = conn
        self.blobs = BlobStore(root=settings.blob_dir, tmp_dir=settings.tmp_dir)

    @classmethod
    def open(cls, settings: Settings) -> Store:
        key = (str(settings.db_path), len(all_migrations()))
        if key not in _MIGRATED:
            settings.ensure_dirs()
        conn = connect(settings.db_path)
        if key not in _MIGRATED:
            migrate(conn)
            _MIGRATED.add(key)
        return cls(settings=settings, conn=conn)

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction. Threads of one process queue on a lock first: SQLite's own
        busy handler backs off in steps of up to 100 ms, which shows up as tail latency when
        many request threads write at once."""
        lock = _WRITE_LOCKS.setdefault(str(self.settings.db_path), threading.Lock())
        with lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
                self.conn.execute("COMMIT")
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise

    # -- generic tenant-scoped access ------------------------------------------------------
    def get_owned(self, table: str, tenant_id: str, obj_id: str, what: str) -> dict[str, Any]:
        if table not in {"models", "datasets", "jobs", "reports", "ensembles",
                         "inference_sessions", "refinements", "watermarks"}:
            raise ValueError(table)
        row = self.conn.execute(
            f"SELECT * FROM {table} WHERE id = ? AND tenant_id = ?", (obj_id, tenant_id)
        ).fetchone()
        if row is None:
            shown = obj_id if len(obj_id) <= 80 else obj_id[:80] + "…"
            raise NotFound(f"{what} {shown!r} not found")
        return dict(row)

    def list_owned(
        self, table: str, tenant_id: str, *, limit: int = 100, offset: int = 0
    ) -> list[dict[str, Any]]:
        if table not in {"models", "datasets", "jobs", "reports", "ensembles",
                         "inference_sessions", "refinements", "watermarks"}:
            raise ValueError(table)
        rows = self.conn.execute(
            f"SELECT * FROM {table} WHERE tenant_id = ? ORDER BY created_at DESC, id "
            "LIMIT ? OFFSET ?",
            (tenant_id, limit, offset),
        ).fetchall()
        return [dict(r) for r in rows]

    # -- uploads: pinned while validated, so a refusal never deletes a twin's blob ----------
    def put_upload(self, stream: IO[bytes], *, max_bytes: int | None = None
                   ) -> tuple[str, int, str]:
        """Store an upload's blob pinned: ``(digest, size, pin)``. The pin and the file's
        placement happen in one write transaction (a lock shared by every process), so a
        concurrent :meth:`drop_refused_upload` of the same content sees the pin."""
        digest, size, staged = self.blobs.stage_stream(stream, max_bytes=max_bytes)
        pin = new_id("pin")
        try:
            with self.transaction():
                self.conn.execute(
                    "INSERT INTO blob_pins (id, digest, created_at) VALUES (?, ?, ?)",
                    (pin, digest, utcnow()))
                self.blobs.place(staged, digest)
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        return digest, size, pin

    def unpin(self, pin: str) -> None:
        """Release an accepted upload's pin (inside the transaction that records its blob)."""
        self.conn.execute("DELETE FROM blob_pins WHERE id = ?", (pin,))

    def drop_refused_upload(self, pin: str, digest: str) -> None:
        """Release a refused upload's pin and delete its blob (and any folder extracted from
        it) unless a recorded object or another upload in flight still uses that content."""
        with self.transaction():
            self.unpin(pin)
            used = self.conn.execute(
                "SELECT 1 FROM blobs WHERE digest = ? UNION ALL "
                "SELECT 1 FROM blob_pins WHERE digest = ? LIMIT 1", (digest, digest)).fetchone()
            if used is None:
                self.blobs.path(digest).unlink(missing_ok=True)
                extracted = self.settings.home / "modeldirs" / digest
                if extracted.is_dir():
                    shutil.rmtree(extracted, ignore_errors=True)

    def record_blob(self, digest: str, size: int) -> None:
        self.conn.execute(
            "INSERT OR IGNORE INTO blobs (digest, size, created_at) VALUES (?, ?, ?)",
            (digest, size, utcnow()),
        )

    # -- tenants ----------------------------------------------------------------------------
    def ensure_tenant(self, name: str) -> str:
        row = self.conn.execute("SELECT id FROM tenants WHERE name = ?", (name,)).fetchone()
        if row:
            return str(row["id"])
        tenant_id = new_id("tnt")
        self.conn.execute(
            "INSERT OR IGNORE INTO tenants (id, name, created_at) VALUES (?, ?, ?)",
            (tenant_id, name, utcnow()),
        )
        row = self.conn.execute("SELECT id FROM tenants WHERE name = ?", (name,)).fetchone()
        return str(row["id"])

    # -- job logs ---------------------------------------------------------------------------
    def add_job_log(self, job_id: str, message: str, level: str = "info") -> None:
        self.conn.execute(
            "INSERT INTO job_logs (job_id, ts, level, message) VALUES (?, ?, ?, ?)",
            (job_id, utcnow(), level, message[:2000]),
        )

    def job_logs(self, job_id: str, *, after: int = 0, limit: int = 500) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT id, ts, level, message FROM job_logs WHERE job_id = ? AND id > ? "
            "ORDER BY id LIMIT ?",
            (job_id, after, limit),
        ).fetchall()
        return [dict(r) for r in rows]


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)
