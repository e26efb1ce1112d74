"""The SQLite transparency log: proofs, persistence, concurrency, checkpoints."""

from __future__ import annotations

import base64
import hashlib
import json
import multiprocessing
import sqlite3
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from crypto.dsse import canonical_json, sign_envelope
from crypto.errors import LogError, LogRangeError, ProofError, SignatureError
from crypto.keys import load_or_create_ed25519
from crypto.merkle import (
    EMPTY_ROOT,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root_from_leaf_hashes,
    verify_consistency,
    verify_inclusion,
)
from crypto.translog import CHECKPOINT_PAYLOAD_TYPE, TransparencyLog, verify_checkpoint

ORIGIN = "test.appliance/log"


def _key(seed: int = 0) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"log%d" % seed).digest())


def _open(path: Path, key: Ed25519PrivateKey | None = None) -> TransparencyLog:
    return TransparencyLog(db_path=path, origin=ORIGIN, signing_key=key or _key())


def test_log_matches_in_memory_merkle(tmp_path: Path) -> None:
    log = _open(tmp_path / "a.db")
    assert log.size() == 0
    assert log.root() == EMPTY_ROOT
    entries = [b"entry-%d" % i for i in range(37)]
    for i, entry in enumerate(entries):
        assert log.append(entry) == i
    hashes = [leaf_hash(e) for e in entries]
    assert log.size() == 37
    for size in range(0, 38):
        assert log.root(size) == root_from_leaf_hashes(hashes[:size])
    for size in (1, 2, 5, 16, 17, 36, 37):
        for index in range(size):
            proof = log.inclusion_proof(index, size)
            assert proof == inclusion_proof(index, hashes[:size])
            verify_inclusion(hashes[index], index, size, proof, log.root(size))
        for old in range(0, size + 1):
            proof = log.consistency_proof(old, size)
            assert proof == consistency_proof(old, hashes[:size])
            verify_consistency(old, size, log.root(old), log.root(size), proof)
    assert [log.entry(i) for i in range(37)] == entries
    assert log.inclusion_proof(3) == inclusion_proof(3, hashes)
    assert log.consistency_proof(20) == consistency_proof(20, hashes)


def test_range_errors(tmp_path: Path) -> None:
    log = _open(tmp_path / "a.db")
    log.append_many([b"a", b"b", b"c"])
    with pytest.raises(LogRangeError):
        log.entry(3)
    with pytest.raises(LogRangeError):
        log.entry(-1)
    with pytest.raises(LogRangeError):
        log.root(4)
    with pytest.raises(LogRangeError):
        log.inclusion_proof(3)
    with pytest.raises(LogRangeError):
        log.inclusion_proof(2, 2)
    with pytest.raises(LogRangeError):
        log.consistency_proof(2, 4)
    with pytest.raises(LogRangeError):
        log.consistency_proof(3, 2)
    with pytest.raises(TypeError):
        log.append("text")  # type: ignore[arg-type]
    assert isinstance(LogRangeError("x"), IndexError)


def test_persistence_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "persist.db"
    log = _open(path)
    log.append_many([b"x%d" % i for i in range(10)])
    root10 = log.root()
    log.close()

    reopened = _open(path)
    assert reopened.size() == 10
    assert reopened.root() == root10
    assert reopened.append(b"x10") == 10
    hashes = [leaf_hash(b"x%d" % i) for i in range(11)]
    assert reopened.root() == root_from_leaf_hashes(hashes)
    verify_consistency(10, 11, root10, reopened.root(), reopened.consistency_proof(10))
    reopened.close()

    with pytest.raises(LogError, match="origin"):
        TransparencyLog(db_path=path, origin="other.origin", signing_key=_key())


def test_shares_a_database_with_other_tables(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    other = sqlite3.connect(path)
    other.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY, state TEXT)")
    other.execute("INSERT INTO jobs (state) VALUES ('queued')")
    other.commit()
    log = _open(path)
    log.append(b"report")
    assert other.execute("SELECT state FROM jobs").fetchall() == [("queued",)]
    assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert other.execute("SELECT idx, entry FROM translog_leaves").fetchall() == [(0, b"report")]
    other.close()


def test_storage_tampering_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "tamper.db"
    log = _open(path)
    log.append_many([b"a", b"b", b"c", b"d"])
    checkpoint = verify_checkpoint(log.checkpoint(), log.public_key)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE translog_leaves SET entry = ? WHERE idx = 1", (b"B",))
    conn.commit()
    with pytest.raises(LogError, match="leaf hash"):
        log.entry(1)
    # Rewriting the leaf hash too gives proofs that no longer reach the signed root.
    conn.execute("UPDATE translog_leaves SET leaf_hash = ? WHERE idx = 1", (leaf_hash(b"B"),))
    conn.commit()
    conn.close()
    with pytest.raises(ProofError):
        verify_inclusion(
            leaf_hash(log.entry(1)), 1, 4, log.inclusion_proof(1, 4), checkpoint.root_hash
        )


# --- checkpoints -----------------------------------------------------------------------


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    key = _key(1)
    log = _open(tmp_path / "cp.db", key)
    empty = verify_checkpoint(log.checkpoint(), key.public_key(), origin=ORIGIN)
    assert (empty.tree_size, empty.root_hash) == (0, EMPTY_ROOT)
    log.append_many([b"one", b"two", b"three"])
    envelope = log.checkpoint()
    assert envelope["payloadType"] == CHECKPOINT_PAYLOAD_TYPE
    cp = verify_checkpoint(envelope, key.public_key(), origin=ORIGIN)
    assert cp.origin == ORIGIN
    assert cp.tree_size == 3
    assert cp.root_hash == log.root(3)
    assert cp.timestamp.endswith("Z")
    older = verify_checkpoint(log.checkpoint(2), key.public_key())
    assert (older.tree_size, older.root_hash) == (2, log.root(2))
    with pytest.raises(LogRangeError):
        log.checkpoint(4)


def test_checkpoint_verification_failures(tmp_path: Path) -> None:
    key = _key(2)
    log = _open(tmp_path / "cp.db", key)
    log.append(b"only")
    envelope = log.checkpoint()
    with pytest.raises(SignatureError, match="unknown keyid"):
        verify_checkpoint(envelope, _key(3).public_key())
    with pytest.raises(SignatureError, match="from log"):
        verify_checkpoint(envelope, key.public_key(), origin="elsewhere")
    body = json.loads(base64.b64decode(envelope["payload"]))

    def resigned(payload: bytes, payload_type: str = CHECKPOINT_PAYLOAD_TYPE) -> dict:
        return sign_envelope(payload, payload_type, key)

    bad_payloads = [
        json.dumps(body).encode(),  # valid JSON, signed, but not canonical
        canonical_json(dict(body, tree_size=-1)),
        canonical_json(dict(body, tree_size=True)),
        canonical_json(dict(body, root_hash=body["root_hash"].upper())),
        canonical_json(dict(body, root_hash=body["root_hash"][:-2])),
        canonical_json(dict(body, timestamp="yesterday")),
        canonical_json(dict(body, extra=1)),
        canonical_json({k: v for k, v in body.items() if k != "origin"}),
        canonical_json(dict(body, tree_size=0)),  # empty tree with a non-empty root
        b'{"origin":"a","origin":"b"}',
        b"[1,2]",
        b"\xff",
    ]
    for payload in bad_payloads:
        with pytest.raises(SignatureError):
            verify_checkpoint(resigned(payload), key.public_key())
    report_typed = resigned(canonical_json(body), "application/vnd.audit-appliance.report+json")
    with pytest.raises(SignatureError, match="wrong payload type"):
        verify_checkpoint(report_typed, key.public_key())
    # The control: re-signing the unchanged canonical body verifies.
    assert verify_checkpoint(resigned(canonical_json(body)), key.public_key()).tree_size == 1


# --- concurrency and speed ---------------------------------------------------------------


def _append_worker(args: tuple[str, str, int, int]) -> list[int]:
    db_path, key_path, worker, count = args
    key = load_or_create_ed25519(Path(key_path))
    log = TransparencyLog(db_path=Path(db_path), origin=ORIGIN, signing_key=key)
    conn = sqlite3.connect(db_path, timeout=5.0)
    # A file barrier, so that both processes really append at the same time.
    Path(f"{db_path}.ready{worker}").touch()
    deadline = time.monotonic() + 30
    while not all(Path(f"{db_path}.ready{w}").exists() for w in range(2)):
        assert time.monotonic() < deadline, "the other worker never started"
        time.sleep(0.005)
    indexes = []
    for i in range(count):
        indexes.append(log.append(b"worker-%d-entry-%d" % (worker, i)))
        time.sleep(0.003)
        # Unrelated writes to another table of the same file, as the appliance store does.
        with conn:
            conn.execute("INSERT INTO jobs (worker, n) VALUES (?, ?)", (worker, i))
    conn.close()
    log.close()
    return indexes


def test_two_processes_append_concurrently(tmp_path: Path) -> None:
    db_path = tmp_path / "concurrent.db"
    key_path = tmp_path / "keys" / "log.pem"
    with sqlite3.connect(db_path) as conn:
        conn.execute("CREATE TABLE jobs (worker INTEGER, n INTEGER)")
    count = 25
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = pool.map(
            _append_worker, [(str(db_path), str(key_path), w, count) for w in range(2)]
        )
    all_indexes = sorted(results[0] + results[1])
    assert all_indexes == list(range(2 * count))
    for indexes in results:
        assert indexes == sorted(indexes)  # each process sees its own appends in order
    # The appends interleaved: neither process ran entirely before the other.
    assert max(results[0]) > min(results[1]) and max(results[1]) > min(results[0])

    key = load_or_create_ed25519(key_path)
    log = TransparencyLog(db_path=db_path, origin=ORIGIN, signing_key=key)
    entries = [log.entry(i) for i in range(log.size())]
    assert sorted(entries) == sorted(
        b"worker-%d-entry-%d" % (w, i) for w in range(2) for i in range(count)
    )
    expected = [b"worker-%d-entry-%d" % (w, i) for w in range(2) for i in range(count)]
    for index, entry in zip(results[0] + results[1], expected, strict=True):
        assert log.entry(index) == entry
    hashes = [leaf_hash(e) for e in entries]
    cp = verify_checkpoint(log.checkpoint(), key.public_key(), origin=ORIGIN)
    assert cp.root_hash == root_from_leaf_hashes(hashes)
    for index in range(len(entries)):
        proof = log.inclusion_proof(index)
        verify_inclusion(hashes[index], index, cp.tree_size, proof, cp.root_hash)
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 2 * count
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_proofs_stay_fast_at_ten_thousand_leaves(tmp_path: Path) -> None:
    log = _open(tmp_path / "big.db")
    log.append_many([b"%d" % i for i in range(10_000)])
    started = time.perf_counter()
    for index in range(0, 10_000, 500):
        log.inclusion_proof(index)
    log.consistency_proof(6_789)
    log.root()
    per_proof = (time.perf_counter() - started) / 22
    assert per_proof < 0.05, f"{per_proof * 1000:.1f} ms per proof"
    hashes = [leaf_hash(b"%d" % i) for i in range(10_000)]
    assert log.root() == root_from_leaf_hashes(hashes)
    assert log.inclusion_proof(9_999) == inclusion_proof(9_999, hashes)
