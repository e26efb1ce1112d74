"""The one write-a-secret-file-once helper: mode 0600, first writer wins, never a partial or
replaced file, no temporary file left behind."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from crypto.secret_files import write_secret_once


def test_creates_private_file_once_and_never_replaces_it(tmp_path: Path) -> None:
    path = tmp_path / "root_secret.bin"
    assert write_secret_once(path, b"first") is True
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert write_secret_once(path, b"second") is False
    assert path.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["root_secret.bin"]


def test_concurrent_writers_agree_on_one_secret(tmp_path: Path) -> None:
    path = tmp_path / "secrets.kek"
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def write(i: int) -> None:
        barrier.wait()
        results.append(write_secret_once(path, bytes([i]) * 32))

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]
    data = path.read_bytes()
    assert len(data) == 32 and len(set(data)) == 1
    assert os.listdir(tmp_path) == ["secrets.kek"]


def test_missing_directory_is_an_error_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_secret_once(tmp_path / "absent" / "key.pem", b"x")
    assert list(tmp_path.iterdir()) == []
