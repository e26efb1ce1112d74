"""The appliance's enclave: one lazily started enclave process per appliance process.

    service = enclave_service(settings)        # per (home, pid)
    client = service.client()                  # launched on first use, relaunched if it died
    att = service.attestation(nonce)           # quote + platform key + measurement

All processes of one home (gunicorn workers answering attestation, job workers running
refinements) use the same simulated platform folder (``home/platform``) and the same enclave
state folder (``home/enclave-state``), where the enclave keeps its X25519 key sealed to its
MRENCLAVE. A party that verified a quote from any of these processes therefore wraps its
secrets to the key every enclave of this build holds. Each enclave's stderr goes to
``home/enclave/logs`` (rotated, size-capped). First creation of the platform and of
the sealed key is serialized across processes with an ``fcntl`` lock on ``home/platform.lock``.
"""

from __future__ import annotations

import atexit
import base64
import fcntl
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance._internal.config import Settings
from appliance.errors import ServiceUnavailable
from enclave.errors import EnclaveError
from enclave.host import EnclaveClient
from enclave.platform import create_platform, platform_public_key

__all__ = ["Attestation", "EnclaveService", "enclave_service", "shutdown_enclaves"]

log = logging.getLogger("appliance.enclave")


@dataclass(frozen=True, kw_only=True)
class Attestation:
    """What ``GET /v1/enclave/attestation`` returns (all public)."""

    quote: bytes
    platform_public_key: bytes
    identity: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """JSON shape of the attestation answer."""
        return {
            "quote": base64.b64encode(self.quote).decode("ascii"),
            "platform_public_key": self.platform_public_key.hex(),
            "measurement": {
                k: self.identity[k]
                for k in ("mrenclave", "mrsigner", "isv_prod_id", "isv_svn", "debug", "simulated")
            },
            "enclave_public_key": str(self.identity["enclave_public_key"]),
        }


class EnclaveService:
    """Owns this process's enclave process for one appliance home."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.platform_dir = settings.home / "platform"
        self.state_dir = settings.home / "enclave-state"
        self.log_dir = settings.home / "enclave" / "logs"
        self.lock_path = settings.home / "platform.lock"
        self._client: EnclaveClient | None = None
        self._lock = threading.Lock()
        self.launches = 0

    @contextmanager
    def _file_lock(self) -> Iterator[None]:
        self.settings.home.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def ensure_platform(self) -> bytes:
        """Create the platform folder once (locked); return its attestation public key."""
        if not (self.platform_dir / "root_secret.bin").exists():
            with self._file_lock():
                create_platform(self.platform_dir)
        return platform_public_key(self.platform_dir)

    def client(self) -> EnclaveClient:
        """The running enclave; launched on first use and relaunched if its process died."""
        with self._lock:
            current = self._client
            if current is not None and current.is_alive():
                return current
            if current is not None:
                log.warning("enclave process %d is gone; launching a new one", current.pid)
                current.kill()
                self._client = None
            self.ensure_platform()
            try:
                # the first launch of a build creates its sealed key: one process at a time
                with self._file_lock():
                    self._client = EnclaveClient.launch(
                        platform_dir=self.platform_dir, state_dir=self.state_dir, log_dir=self.log_dir
                    )
            except EnclaveError as exc:
                log.error("enclave launch failed: %s", exc.message)
                raise ServiceUnavailable(
                    "the enclave could not be started",
                    hint="See the appliance log; check the platform folder under the home.",
                ) from None
            self.launches += 1
            log.info("enclave started (pid %d, MRENCLAVE %s)", self._client.pid,
                     self._client.expected_mrenclave)
            return self._client

    def attestation(self, nonce: bytes) -> Attestation:
        """A fresh quote over ``nonce`` from this process's enclave (relaunched if needed)."""
        for attempt in (1, 2):
            client = self.client()
            try:
                quote = client.get_quote(nonce)
                break
            except EnclaveError:
                if attempt == 2 or client.is_alive():
                    raise
        return Attestation(
            quote=quote,
            platform_public_key=platform_public_key(self.platform_dir),
            identity=dict(client.identity),
        )

    def close(self) -> None:
        """Stop the enclave process (if running)."""
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


_services: dict[tuple[str, int], EnclaveService] = {}
_services_lock = threading.Lock()


def enclave_service(settings: Settings) -> EnclaveService:
    """This process's enclave service for ``settings.home``."""
    key = (str(settings.home.resolve()), os.getpid())
    with _services_lock:
        service = _services.get(key)
        if service is None:
            service = _services[key] = EnclaveService(settings)
        return service


def shutdown_enclaves(home: Path | None = None) -> None:
    """Stop this process's enclaves (of one home, or all)."""
    with _services_lock:
        items = list(_services.items())
    for (path, pid), service in items:
        if pid == os.getpid() and (home is None or path == str(Path(home).resolve())):
            service.close()
            with _services_lock:
                _services.pop((path, pid), None)


atexit.register(shutdown_enclaves)
