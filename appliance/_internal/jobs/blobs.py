"""Where workers read blobs: the local store (embedded mode) or the API node over HTTP
(cluster mode), each read verified against its digest."""


from __future__ import annotations

import logging
import os
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

import httpx

from appliance._internal.config import Settings
from appliance._internal.store import Store
from appliance.errors import (
    JobFailed,
    ValidationFailed,
)

logger = logging.getLogger("appliance.jobs")


# -- where workers read blobs ------------------------------------------------------------------
class BlobSource(ABC):
    @abstractmethod
    def path(self, digest: str) -> Path:
        """A local file holding the blob (fetched and verified if remote)."""

    @abstractmethod
    def put(self, data: bytes) -> str:
        """Store an artifact; returns its digest."""


class LocalBlobs(BlobSource):
    def __init__(self, store_factory: Callable[[], Store]) -> None:
        self._factory = store_factory

    def path(self, digest: str) -> Path:
        store = self._factory()
        path = store.blobs.path(digest)
        if not path.is_file():
            raise JobFailed(f"input blob {digest[:12]}… is missing from the store")
        return path

    def put(self, data: bytes) -> str:
        store = self._factory()
        digest, size = store.blobs.put_bytes(data)
        store.record_blob(digest, size)
        return digest


class HttpBlobs(BlobSource):
    """Cluster workers fetch blobs from the API node and verify them by digest."""

    def __init__(self, *, settings: Settings) -> None:
        if not settings.api_url or not settings.cluster_token:
            raise ValidationFailed(
                "cluster workers need APPLIANCE_API_URL and APPLIANCE_CLUSTER_TOKEN"
            )
        self.cache = settings.home / "cache" / "blobs"
        self.cache.mkdir(parents=True, exist_ok=True)
        self.client = httpx.Client(
            base_url=settings.api_url,
            headers={"X-Cluster-Token": settings.cluster_token},
            timeout=60.0,
        )

    def path(self, digest: str) -> Path:
        import hashlib

        target = self.cache / digest
        if target.is_file():
            return target
        tmp = self.cache / f".{digest}.{uuid.uuid4().hex}"
        hasher = hashlib.sha256()
        with self.client.stream("GET", f"/v1/internal/blobs/{digest}") as resp:
            if resp.status_code != 200:
                raise JobFailed(f"API node refused blob {digest[:12]}…: HTTP {resp.status_code}")
            with open(tmp, "wb") as out:
                for chunk in resp.iter_bytes(1 << 20):
                    hasher.update(chunk)
                    out.write(chunk)
        if hasher.hexdigest() != digest:
            tmp.unlink(missing_ok=True)
            raise JobFailed(f"blob {digest[:12]}… failed its digest check in transit")
        os.replace(tmp, target)
        return target

    def put(self, data: bytes) -> str:
        resp = self.client.post("/v1/internal/blobs", content=data)
        if resp.status_code != 201:
            raise JobFailed(f"API node refused an artifact: HTTP {resp.status_code}")
        return str(resp.json()["digest"])
