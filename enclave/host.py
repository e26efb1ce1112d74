"""Host side of the enclave: launch the enclave process and exchange framed messages.

    client = EnclaveClient.launch(platform_dir=instance / "platform")
    quote = client.get_quote(nonce)          # relay to the verifier
    client.close()

The host only relays bytes: it never sees the platform secrets (the enclave process reads
them) nor anything the enclave decrypts. ``tap`` receives every raw frame sent (``"out"``) and
received (``"in"``), for audit and for tests that look for plaintext on the channel.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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

__all__ = ["EnclaveClient", "Reply", "default_config"]

Tap = Callable[[str, bytes], None]


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
        stderr_path: Path,
        tap: Tap | None,
    ) -> None:
        self._process = process
        self.config = config
        self.expected_mrenclave = mrenclave
        self._stderr_path = stderr_path
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
    ) -> EnclaveClient:
        """Measure and sign the enclave package, start its process, and check it answers.

        ``package`` is the enclave package directory to run (default: the installed one);
        the process imports it from there, so a modified copy yields another MRENCLAVE.
        ``state_dir`` keeps the enclave's X25519 key sealed (MRENCLAVE policy) so that secrets
        provisioned before a restart of the same enclave build still open; without it the key
        lives only as long as the process.
        """
        platform_dir = Path(platform_dir).resolve()
        platform_public_key(platform_dir)  # fails early on a missing platform folder
        config = config or default_config(platform_dir)
        pkg = Path(package).resolve() if package is not None else package_dir()
        if not (pkg / "__main__.py").is_file():
            raise EnclaveLaunchError(f"{pkg} is not an enclave package")
        mrenclave = measure_enclave(pkg, config)
        sigstruct = sign_sigstruct(mrenclave, config, load_signer_key(platform_dir))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(pkg.parent), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env.setdefault("OMP_NUM_THREADS", "1")
        fd, stderr_name = tempfile.mkstemp(prefix="enclave-", suffix=".log")
        stderr_file = os.fdopen(fd, "wb")
        try:
            process = subprocess.Popen(
                [
                    python or sys.executable,
                    "-m",
                    "enclave",
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
                stderr=stderr_file,
                cwd=str(pkg.parent),
                env=env,
            )
        finally:
            stderr_file.close()
        client = cls(
            process=process,
            config=config,
            mrenclave=mrenclave,
            stderr_path=Path(stderr_name),
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

    def _stderr_tail(self) -> str:
        try:
            return self._stderr_path.read_text(errors="replace")[-2000:].strip()
        except OSError:
            return ""

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
        try:
            self._stderr_path.unlink()
        except OSError:
            pass

    def __enter__(self) -> EnclaveClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
