"""A persistent, append-only Merkle transparency log in SQLite with signed checkpoints.

    log = TransparencyLog(db_path=home / "appliance.db", origin="appliance.example/log",
                          signing_key=key)
    index = log.append(canonical_json(envelope))
    envelope = log.checkpoint()
    cp = verify_checkpoint(envelope, key.public_key(), origin="appliance.example/log")
    verify_inclusion(leaf_hash(log.entry(index)), index, cp.tree_size,
                     log.inclusion_proof(index, cp.tree_size), cp.root_hash)

Storage: table ``translog_leaves`` holds the entries and their RFC 9162 leaf hashes;
``translog_nodes`` caches the hash of every complete, aligned interior subtree (written
once, when its last leaf is appended), so roots and proofs cost O(log n) lookups at any
size. ``translog_meta`` pins the log's origin. The tables can share a database file with
other tables; appends take ``BEGIN IMMEDIATE`` so several processes may append at once.
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from crypto.dsse import canonical_json, parse_json_strict, sign_envelope, verify_envelope
from crypto.errors import LogError, LogRangeError, SignatureError
from crypto.merkle import (
    EMPTY_ROOT,
    SubtreeOracle,
    consistency_proof_from_oracle,
    inclusion_proof_from_oracle,
    leaf_hash,
    node_hash,
    range_hash_from_oracle,
)

__all__ = [
    "CHECKPOINT_PAYLOAD_TYPE",
    "Checkpoint",
    "TransparencyLog",
    "verify_checkpoint",
]

CHECKPOINT_PAYLOAD_TYPE = "application/vnd.audit-appliance.checkpoint+json"

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS translog_leaves (
        idx INTEGER PRIMARY KEY,
        leaf_hash BLOB NOT NULL,
        entry BLOB NOT NULL,
        created_at TEXT
    )""",
    """CREATE TABLE IF NOT EXISTS translog_nodes (
        level INTEGER NOT NULL,
        idx INTEGER NOT NULL,
        hash BLOB NOT NULL,
        PRIMARY KEY (level, idx)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS translog_meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )""",
)
_CHECKPOINT_KEYS = frozenset({"origin", "tree_size", "root_hash", "timestamp"})
_HEX_HASH = re.compile(r"[0-9a-f]{64}")
_TIMESTAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?Z")
_MAX_ORIGIN_CHARS = 512


def _utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _check_size_arg(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{what} must be an int, got {type(value).__name__}")
    return value


class TransparencyLog:
    """An append-only RFC 9162 Merkle log stored in SQLite, signing its checkpoints.

    Safe to share between threads of one process (calls are serialised) and between
    processes appending to the same file. A connection inherited across ``fork`` is
    never reused: the child reopens its own.
    """

    def __init__(self, *, db_path: Path, origin: str, signing_key: Ed25519PrivateKey) -> None:
        if not isinstance(origin, str) or not origin or len(origin) > _MAX_ORIGIN_CHARS:
            raise TypeError(f"origin must be a non-empty str of at most {_MAX_ORIGIN_CHARS} chars")
        if not isinstance(signing_key, Ed25519PrivateKey):
            raise TypeError("signing_key must be an Ed25519PrivateKey")
        self._db_path = Path(db_path)
        self._origin = origin
        self._signing_key = signing_key
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._pid = -1
        self._init_schema()

    # -- connection handling ---------------------------------------------------------

    @property
    def origin(self) -> str:
        """The log's origin string, bound into every checkpoint."""
        return self._origin

    @property
    def public_key(self) -> Ed25519PublicKey:
        """The public key that verifies this log's checkpoints."""
        return self._signing_key.public_key()

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():
            # After fork the inherited connection belongs to the parent: never touch it.
            conn = sqlite3.connect(
                self._db_path, timeout=5.0, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA busy_timeout = 5000")
            enable_wal(conn)
            self._conn = conn
            self._pid = os.getpid()
        return self._conn

    def close(self) -> None:
        """Close the database connection (it is reopened on next use)."""
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    def __enter__(self) -> TransparencyLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self, mode: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._connection()
            conn.execute(f"BEGIN {mode}")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _init_schema(self) -> None:
        with self._transaction("IMMEDIATE") as conn:
            for statement in _SCHEMA:
                conn.execute(statement)
            row = conn.execute("SELECT value FROM translog_meta WHERE key = 'origin'").fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO translog_meta (key, value) VALUES ('origin', ?)", (self._origin,)
                )
            elif row[0] != self._origin:
                raise LogError(
                    f"the log in {self._db_path} has origin {row[0]!r}, not {self._origin!r}",
                    hint="Open the log with the origin it was created with.",
                )

    # -- reading ---------------------------------------------------------------------

    @staticmethod
    def _size(conn: sqlite3.Connection) -> int:
        row = conn.execute("SELECT MAX(idx) FROM translog_leaves").fetchone()
        return 0 if row[0] is None else int(row[0]) + 1

    @staticmethod
    def _oracle(conn: sqlite3.Connection) -> SubtreeOracle:
        def oracle(level: int, index: int) -> bytes:
            if level == 0:
                row = conn.execute(
                    "SELECT leaf_hash FROM translog_leaves WHERE idx = ?", (index,)
                ).fetchone()
            else:
                row = conn.execute(
                    "SELECT hash FROM translog_nodes WHERE level = ? AND idx = ?", (level, index)
                ).fetchone()
            if row is None:
                raise LogError(f"log storage is missing the subtree hash ({level}, {index})")
            return bytes(row[0])

        return oracle

    def _resolve_size(self, conn: sqlite3.Connection, tree_size: int | None) -> int:
        current = self._size(conn)
        if tree_size is None:
            return current
        _check_size_arg(tree_size, "tree_size")
        if not 0 <= tree_size <= current:
            raise LogRangeError(f"tree size {tree_size} is outside 0..{current}")
        return tree_size

    def size(self) -> int:
        """Return the number of entries in the log."""
        with self._transaction("DEFERRED") as conn:
            return self._size(conn)

    def root(self, size: int | None = None) -> bytes:
        """Return the Merkle root of the first ``size`` entries (default: all)."""
        with self._transaction("DEFERRED") as conn:
            tree_size = self._resolve_size(conn, size)
            if tree_size == 0:
                return EMPTY_ROOT
            return range_hash_from_oracle(self._oracle(conn), 0, tree_size)

    def entry(self, index: int) -> bytes:
        """Return the entry at ``index``; raise :class:`LogRangeError` if there is none."""
        _check_size_arg(index, "index")
        with self._transaction("DEFERRED") as conn:
            row = conn.execute(
                "SELECT entry, leaf_hash FROM translog_leaves WHERE idx = ?", (index,)
            ).fetchone()
        if row is None:
            raise LogRangeError(f"no log entry at index {index}")
        data = bytes(row[0])
        if leaf_hash(data) != bytes(row[1]):
            raise LogError(f"log entry {index} does not match its stored leaf hash")
        return data

    def inclusion_proof(self, index: int, tree_size: int | None = None) -> list[bytes]:
        """Return the inclusion path of entry ``index`` in the tree of ``tree_size``."""
        _check_size_arg(index, "index")
        with self._transaction("DEFERRED") as conn:
            size = self._resolve_size(conn, tree_size)
            if not 0 <= index < size:
                raise LogRangeError(f"index {index} is outside a tree of size {size}")
            return inclusion_proof_from_oracle(self._oracle(conn), index, size)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """Return the proof that the tree of ``old_size`` is a prefix of ``new_size``."""
        _check_size_arg(old_size, "old_size")
        with self._transaction("DEFERRED") as conn:
            size = self._resolve_size(conn, new_size)
            if not 0 <= old_size <= size:
                raise LogRangeError(f"old size {old_size} is outside 0..{size}")
            return consistency_proof_from_oracle(self._oracle(conn), old_size, size)

    # -- writing ---------------------------------------------------------------------

    def append(self, entry: bytes) -> int:
        """Append ``entry`` and return its index (durable once this returns)."""
        return self.append_many([entry])[0]

    def append_many(self, entries: Iterable[bytes]) -> list[int]:
        """Append several entries in one transaction and return their indexes, in order."""
        items = []
        for item in entries:
            if not isinstance(item, bytes | bytearray | memoryview):
                raise TypeError(f"log entries must be bytes, got {type(item).__name__}")
            items.append(bytes(item))
        if not items:
            return []
        created_at = _utc_now()
        with self._transaction("IMMEDIATE") as conn:
            start = self._size(conn)
            oracle = self._oracle(conn)
            for offset, data in enumerate(items):
                index = start + offset
                conn.execute(
                    "INSERT INTO translog_leaves (idx, leaf_hash, entry, created_at) "
                    "VALUES (?, ?, ?, ?)",
                    (index, leaf_hash(data), data, created_at),
                )
                # Each appended leaf completes one aligned subtree per trailing 1 bit.
                level, position = 0, index
                while position & 1:
                    parent = node_hash(oracle(level, position - 1), oracle(level, position))
                    level += 1
                    position >>= 1
                    conn.execute(
                        "INSERT INTO translog_nodes (level, idx, hash) VALUES (?, ?, ?)",
                        (level, position, parent),
                    )
        return list(range(start, start + len(items)))

    # -- checkpoints -----------------------------------------------------------------

    def checkpoint(self, tree_size: int | None = None) -> dict[str, Any]:
        """Return a signed checkpoint (DSSE envelope) of the tree of ``tree_size``.

        The payload is canonical JSON ``{"origin", "tree_size", "root_hash" (hex),
        "timestamp" (RFC 3339 UTC)}`` with payload type :data:`CHECKPOINT_PAYLOAD_TYPE`.
        """
        with self._transaction("DEFERRED") as conn:
            size = self._resolve_size(conn, tree_size)
            root = EMPTY_ROOT if size == 0 else range_hash_from_oracle(self._oracle(conn), 0, size)
        body = {
            "origin": self._origin,
            "tree_size": size,
            "root_hash": root.hex(),
            "timestamp": _utc_now(),
        }
        return sign_envelope(canonical_json(body), CHECKPOINT_PAYLOAD_TYPE, self._signing_key)


def enable_wal(conn: sqlite3.Connection, *, deadline_s: float = 30.0) -> None:
    """Switch a database to WAL. SQLite answers "database is locked" at once, without its
    busy handler, when several processes switch a fresh file at the same moment (first start
    of serve + worker), so wait and retry; once in WAL the switch is a no-op."""
    give_up = time.monotonic() + deadline_s
    delay = 0.005
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > give_up:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


@dataclass(frozen=True)
class Checkpoint:
    """A verified tree head: the log ``origin`` had ``tree_size`` entries with ``root_hash``."""

    origin: str
    tree_size: int
    root_hash: bytes
    timestamp: str


def verify_checkpoint(
    envelope: dict[str, Any], trusted_key: Ed25519PublicKey, *, origin: str | None = None
) -> Checkpoint:
    """Verify a signed checkpoint and return its content.

    Raises:
        SignatureError: bad signature, wrong payload type, a payload that is not the
            canonical checkpoint JSON, or an origin other than ``origin``.
    """
    payload = verify_envelope(envelope, trusted_key, payload_type=CHECKPOINT_PAYLOAD_TYPE)
    try:
        body = parse_json_strict(payload)
    except ValueError as exc:
        raise SignatureError(f"checkpoint payload is not valid JSON: {exc}") from None
    if not isinstance(body, dict) or set(body) != _CHECKPOINT_KEYS:
        raise SignatureError(
            f"checkpoint payload must be an object with exactly the keys {sorted(_CHECKPOINT_KEYS)}"
        )
    if canonical_json(body) != payload:
        raise SignatureError("checkpoint payload is not in canonical JSON form")
    body_origin, size, root_hex, timestamp = (
        body["origin"],
        body["tree_size"],
        body["root_hash"],
        body["timestamp"],
    )
    if not isinstance(body_origin, str) or not body_origin:
        raise SignatureError("checkpoint origin must be a non-empty string")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise SignatureError("checkpoint tree_size must be a non-negative integer")
    if not isinstance(root_hex, str) or not _HEX_HASH.fullmatch(root_hex):
        raise SignatureError("checkpoint root_hash must be 64 lowercase hex digits")
    if not isinstance(timestamp, str) or not _TIMESTAMP.fullmatch(timestamp):
        raise SignatureError("checkpoint timestamp must be RFC 3339 UTC ending in Z")
    if size == 0 and root_hex != EMPTY_ROOT.hex():
        raise SignatureError("checkpoint of an empty log must carry the empty-tree root")
    if origin is not None and body_origin != origin:
        raise SignatureError(
            f"checkpoint is from log {body_origin!r}, expected {origin!r}",
            hint="The checkpoint belongs to another log; verify against the right origin.",
        )
    return Checkpoint(
        origin=body_origin, tree_size=size, root_hash=bytes.fromhex(root_hex), timestamp=timestamp
    )
