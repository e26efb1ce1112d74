"""Host side of the enclave: launch the enclave process and exchange framed messages.

    client = EnclaveClient.launch(platform_dir=instance / "platform")
    quote = client.get_quote(nonce)          # relay to the verifier
    client.close()

The host only relays bytes: it never sees the platform secrets (the enclave process reads
them) nor anything the enclave decrypts. ``tap`` receives every raw frame sent (``"out"``) and
received (``"in"``), for audit and for tests that look for plaintext on the channel.

The enclave runs as ``python -B -I <root>/enclave/__main__.py``: isolated from the
environment, repository code compiled from its measured sources only (see
:mod:`enclave.__main__`). Its stderr is drained by the host: the last lines go into error
messages, and with ``log_dir`` into a size-capped file there; the folder keeps the newest
:data:`LOG_FILES_KEPT` files. The enclave never prints exception messages, so no value it
holds reaches these files.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from cryptography.hazmat.primitives import serialization

from crypto.sealing import SealPolicy
from enclave.errors import EnclaveCrashedError, EnclaveLaunchError, EnclaveRemoteError
from enclave.measurement import (
    EnclaveConfig,
    measure_enclave,
    package_dir,
    sign_sigstruct,
)
from enclave.platform import load_signer_key, platform_public_key
from enclave.protocol import encode_frame, read_frame

__all__ = ["LOG_FILES_KEPT", "LOG_MAX_BYTES", "EnclaveClient", "Reply", "default_config"]

Tap = Callable[[str, bytes], None]

#: Enclave stderr files a log folder keeps (the newest; older ones are deleted at launch).
LOG_FILES_KEPT = 16
#: Bytes of one enclave's stderr written to its log file; the rest is counted, not kept.
LOG_MAX_BYTES = 1024 * 1024
#: Characters of stderr kept in memory for the reason given when the enclave dies.
_TAIL_CHARS = 2000


def default_config(platform_dir: Path | str, **overrides: Any) -> EnclaveConfig:
    """The appliance's enclave configuration (product 1, SVN 1, not debug), signed by the
    platform folder's enclave signing key; ``overrides`` change single fields."""
    signer = load_signer_key(platform_dir).public_key()
    raw = signer.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    values: dict[str, Any] = {
        "isv_prod_id": 1,
        "isv_svn": 1,
        "debug": False,
        "signer_public_key": raw.hex(),
    }
    values.update(overrides)
    return EnclaveConfig(**values)


def _rotate_logs(log_dir: Path, keep: int) -> None:
    """Delete the oldest ``enclave-*.log`` files so that ``keep`` remain."""

    def age(path: Path) -> tuple[float, str]:
        try:
            return (path.stat().st_mtime, path.name)
        except OSError:
            return (0.0, path.name)  # already gone; unlinking it again is harmless

    logs = sorted(log_dir.glob("enclave-*.log"), key=age)
    for old in logs[: max(0, len(logs) - keep)]:
        try:
            old.unlink()
        except OSError:
            pass  # another process of the same home rotated it first


class _StderrSink(threading.Thread):
    """Drains the enclave's stderr: the last characters stay in memory for error messages and,
    with a log file, the first ``max_bytes`` go to the file (then a count of what was dropped)."""

    def __init__(self, stream: IO[bytes], log: IO[bytes] | None, log_path: Path | None, max_bytes: int) -> None:
        super().__init__(name="enclave-stderr", daemon=True)
        self._stream = stream
        self._log = log
        self.log_path = log_path
        self._max_bytes = max_bytes
        self._tail = bytearray()
        self._tail_lock = threading.Lock()
        self.bytes_seen = 0

    def run(self) -> None:
        """Copy until the enclave closes its stderr."""
        log = self._log
        written = 0
        try:
            while chunk := os.read(self._stream.fileno(), 65536):
                self.bytes_seen += len(chunk)
                with self._tail_lock:
                    self._tail += chunk
                    del self._tail[: -4 * _TAIL_CHARS]
                if log is not None and written < self._max_bytes:
                    piece = chunk[: self._max_bytes - written]
                    log.write(piece)
                    written += len(piece)
            if log is not None and self.bytes_seen > written:
                log.write(f"\n[{self.bytes_seen - written} more bytes of stderr dropped]\n".encode())
        except OSError:
            pass  # a full disk must not take the channel down; the tail is still in memory
        finally:
            if log is not None:
                log.close()
            self._stream.close()

    def tail(self) -> str:
        """The last characters the enclave wrote to stderr."""
        with self._tail_lock:
            return self._tail.decode(errors="replace")[-_TAIL_CHARS:].strip()


@dataclass(frozen=True)
class Reply:
    """A successful reply: header fields and binary parts."""

    header: dict[str, Any]
    parts: list[bytes]


class EnclaveClient:
    """A running enclave process and its channel. Use :meth:`launch`."""

    def __init__(
        self,
        *,
        process: subprocess.Popen[bytes],
        config: EnclaveConfig,
        mrenclave: str,
        stderr: _StderrSink,
        tap: Tap | None,
    ) -> None:
        self._process = process
        self.config = config
        self.expected_mrenclave = mrenclave
        self._stderr = stderr
        self._tap = tap
        self.bytes_sent = 0
        self.bytes_received = 0
        self.enclave_seconds = 0.0
        self.identity: dict[str, Any] = {}
        self._lock = threading.Lock()  # one request at a time on the channel

    @classmethod
    def launch(
        cls,
        *,
        platform_dir: Path | str,
        config: EnclaveConfig | None = None,
        package: Path | str | None = None,
        python: str | None = None,
        tap: Tap | None = None,
        state_dir: Path | str | None = None,
        log_dir: Path | str | None = None,
    ) -> EnclaveClient:
        """Measure and sign the enclave package, start its process, and check it answers.

        ``package`` is the enclave package directory to run (default: the installed one); its
        parent is the repository root the process imports all its repository code from, so a
        modified copy of the repository yields another MRENCLAVE.
        ``state_dir`` keeps the enclave's X25519 key sealed (MRENCLAVE policy) so that secrets
        provisioned before a restart of the same enclave build still open; without it the key
        lives only as long as the process. ``log_dir`` keeps the enclave's stderr in a file
        (rotated); without it stderr is kept only in memory, for error messages.
        """
        platform_dir = Path(platform_dir).resolve()
        platform_public_key(platform_dir)  # fails early on a missing platform folder
        config = config or default_config(platform_dir)
        pkg = Path(package).resolve() if package is not None else package_dir()
        if not (pkg / "__main__.py").is_file():
            raise EnclaveLaunchError(f"{pkg} is not an enclave package")
        mrenclave = measure_enclave(pkg, config)
        sigstruct = sign_sigstruct(mrenclave, config, load_signer_key(platform_dir))
        env = {name: value for name, value in os.environ.items() if not name.startswith("PYTHON")}
        env.setdefault("OMP_NUM_THREADS", "1")
        log_path: Path | None = None
        log: IO[bytes] | None = None
        if log_dir is not None:
            folder = Path(log_dir).resolve()
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
            log_path = folder / f"enclave-{stamp}-{os.getpid()}-{os.urandom(4).hex()}.log"
            try:
                folder.mkdir(mode=0o700, parents=True, exist_ok=True)
                _rotate_logs(folder, LOG_FILES_KEPT - 1)
                log = os.fdopen(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb", buffering=0)
            except OSError as exc:
                raise EnclaveLaunchError(f"cannot write the enclave log folder: {exc.strerror}") from None
        try:
            process = subprocess.Popen(
                [
                    python or sys.executable,
                    "-B",  # write no bytecode
                    "-I",  # ignore PYTHON* variables, the user site and the working directory
                    str(pkg / "__main__.py"),
                    "--platform-dir",
                    str(platform_dir),
                    "--config-json",
                    config.to_json(),
                    "--sigstruct",
                    sigstruct.hex(),
                    *(["--state-dir", str(Path(state_dir).resolve())] if state_dir else []),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=str(pkg.parent),
                env=env,
            )
        except OSError as exc:
            if log is not None:
                log.close()
            raise EnclaveLaunchError(f"cannot start the enclave process: {exc.strerror}") from None
        assert process.stderr is not None
        sink = _StderrSink(process.stderr, log, log_path, LOG_MAX_BYTES)
        sink.start()
        client = cls(
            process=process,
            config=config,
            mrenclave=mrenclave,
            stderr=sink,
            tap=tap,
        )
        try:
            client.identity = client.call("identity").header
        except EnclaveCrashedError as exc:
            raise EnclaveLaunchError(f"enclave did not start: {exc.message}") from None
        if client.identity.get("mrenclave") != mrenclave:
            client.kill()
            raise EnclaveLaunchError("enclave reports another measurement than the one signed")
        return client

    # -- process ---------------------------------------------------------------------------
    @property
    def pid(self) -> int:
        """Process id of the enclave."""
        return self._process.pid

    def is_alive(self) -> bool:
        """Whether the enclave process is still running."""
        return self._process.poll() is None

    @property
    def log_path(self) -> Path | None:
        """The file this enclave's stderr goes to (``None`` without a log folder)."""
        return self._stderr.log_path

    def _stderr_tail(self) -> str:
        self._stderr.join(timeout=5)  # the process is gone: its stderr reaches EOF
        return self._stderr.tail()

    def _death_reason(self) -> str:
        try:
            code = self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return "channel broken while the process still runs"
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = str(-code)
            reason = f"enclave process {self.pid} was killed by {name}"
        else:
            reason = f"enclave process {self.pid} exited with status {code}"
        tail = self._stderr_tail()
        return f"{reason}; stderr: {tail}" if tail else reason

    # -- channel -----------------------------------------------------------------------------
    def call(self, op: str, header: dict[str, Any] | None = None, parts: Sequence[bytes] = ()) -> Reply:
        """Send one request and wait for its reply; raise on refusal or on enclave death.

        Thread-safe: concurrent callers are serialized on the channel.
        """
        limit = self.config.max_message_bytes
        frame = encode_frame({"op": op, **(header or {})}, list(parts), max_body=limit)
        if self._tap:
            self._tap("out", frame)
        stdin, stdout = self._process.stdin, self._process.stdout
        assert stdin is not None and stdout is not None
        with self._lock:
            try:
                stdin.write(frame)
                stdin.flush()
                self.bytes_sent += len(frame)
                reply, out, nbytes = read_frame(stdout, max_body=limit)
            except (
                BrokenPipeError,
                ConnectionResetError,
                EnclaveCrashedError,
                ValueError,
                OSError,
            ):
                raise EnclaveCrashedError(f"during {op!r}: {self._death_reason()}") from None
        self.bytes_received += nbytes
        if self._tap:
            self._tap("in", encode_frame(reply, out, max_body=limit))
        self.enclave_seconds += float(reply.get("enclave_s", 0.0))
        if not reply.get("ok"):
            raise EnclaveRemoteError(f"enclave refused {op!r}: {reply.get('message', '')}", code=str(reply.get("code")))
        clean = {k: v for k, v in reply.items() if k not in ("ok", "enclave_s")}
        return Reply(header=clean, parts=out)

    def get_quote(self, nonce: bytes) -> bytes:
        """A quote over ``sha256(enclave key || nonce)`` signed by the platform key."""
        return self.call("quote", {"nonce": nonce.hex()}).parts[0]

    def seal(self, data: bytes, *, policy: SealPolicy = SealPolicy.MRENCLAVE) -> bytes:
        """Ask the enclave to seal host-provided bytes (for non-secret state and tests)."""
        return self.call("seal", {"policy": SealPolicy(policy).value}, [data]).parts[0]

    def unseal_check(self, blob: bytes) -> dict[str, Any]:
        """Ask the enclave to unseal ``blob``; returns only its sha256 and length."""
        return self.call("unseal_check", {}, [blob]).header

    def close(self) -> None:
        """Ask the enclave to stop, then reap it."""
        if self.is_alive():
            try:
                self.call("shutdown")
            except Exception:
                pass
        self.kill()

    def kill(self) -> None:
        """Kill the enclave process (SIGKILL) and reap it."""
        if self.is_alive():
            self._process.kill()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        for stream in (self._process.stdin, self._process.stdout):
            if stream:
                try:
                    stream.close()
                except OSError:
                    pass
        self._stderr.join(timeout=5)
        if self._stderr.log_path is not None and self._stderr.bytes_seen == 0:
            try:  # nothing to keep; a crash's stderr stays (rotated at later launches)
                self._stderr.log_path.unlink()
            except OSError:
                pass

    def __enter__(self) -> EnclaveClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
