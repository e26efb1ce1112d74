"""Secret files written once: keys, root secrets, key-encryption keys.

    if write_secret_once(path, secrets.token_bytes(32)):
        log.info("created a new key at %s", path)     # never the key itself
    key = path.read_bytes()                          # whoever won the race, one key for all

The file is written to a private temporary file (``O_CREAT | O_EXCL``, mode 0600) next to
``path``, flushed and fsynced, then hard-linked into place: ``link`` fails if ``path`` exists,
so the first of concurrent writers (threads, processes, cluster nodes on one file system) wins
and the others keep its content; no reader ever sees a partial file, and an existing secret is
never replaced. The temporary file is removed in every case.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

__all__ = ["write_secret_once"]


def write_secret_once(path: Path | str, data: bytes) -> bool:
    """Create ``path`` (mode 0600) holding ``data`` unless it exists; True if this call created
    it. The parent directory must exist (create it with mode 0700)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        _fsync_directory(path.parent)
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _fsync_directory(directory: Path) -> None:
    """Make the new directory entry durable (best effort: not every file system allows it)."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
