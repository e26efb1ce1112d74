"""The job queue: Huey with SQLite (embedded) or Redis (cluster), never pickle on the wire.

Messages carry only JSON: the job id, kind, tenant, parameters and resolved inputs.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from huey import Huey, RedisHuey
from huey.registry import Message
from huey.serializer import Serializer
from huey.storage import SqliteStorage

from appliance._internal.config import Settings


class JsonSerializer(Serializer):  # type: ignore[misc]  # huey is untyped
    """Huey serializer that speaks JSON only: a queue entry can never execute code on load."""

    allowed_names: set[str] = set()

    def _serialize(self, data: Any) -> bytes:
        if isinstance(data, Message):
            if any(getattr(data, f) is not None for f in ("on_complete", "on_error", "chord_config")):
                raise ValueError("pipelines are not supported on the appliance queue")
            payload = {
                "message": {
                    "id": data.id,
                    "name": data.name,
                    "eta": data.eta.isoformat() if isinstance(data.eta, datetime) else None,
                    "retries": data.retries,
                    "retry_delay": data.retry_delay,
                    "priority": data.priority,
                    "args": list(data.args or ()),
                    "kwargs": dict(data.kwargs or {}),
                    "timeout": data.timeout,
                    "retry_backoff": data.retry_backoff,
                }
            }
        else:
            payload = {"value": _jsonable(data)}
        return json.dumps(payload, separators=(",", ":")).encode("utf-8")

    def _deserialize(self, data: bytes) -> Any:
        obj = json.loads(data.decode("utf-8"))
        if not isinstance(obj, dict):
            raise ValueError("queue entry is not a JSON object")
        if "message" in obj:
            m = obj["message"]
            if m.get("name") not in self.allowed_names:
                raise ValueError("unknown task on the appliance queue")
            eta = datetime.fromisoformat(m["eta"]) if m.get("eta") else None
            return Message(
                m["id"], m["name"], eta, m.get("retries") or 0, m.get("retry_delay") or 0,
                m.get("priority"), tuple(m.get("args") or ()), dict(m.get("kwargs") or {}),
                None, None, None, None, m.get("timeout"), None, m.get("retry_backoff"),
            )
        return _from_jsonable(obj.get("value"))


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"__dt__": value.isoformat()}
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return value


def _from_jsonable(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"__dt__"}:
        return datetime.fromisoformat(value["__dt__"])
    if isinstance(value, list):
        return tuple(_from_jsonable(v) for v in value)
    return value


class _QueueStorage(SqliteStorage):  # type: ignore[misc]
    """Huey's SQLite storage in WAL with synchronous=NORMAL, like the store: safe against a
    crash of the process, without an fsync on every enqueue (Huey offers only FULL or OFF)."""

    def _create_connection(self) -> Any:
        conn = super()._create_connection()
        conn.execute("pragma synchronous=NORMAL")
        return conn


def make_huey(settings: Settings) -> Huey:
    """SQLite queue in the home folder, or Redis when ``APPLIANCE_QUEUE_URL`` is set."""
    serializer = JsonSerializer()
    if settings.queue_url:
        return RedisHuey(
            name=f"{settings.queue_prefix}-queue",
            url=settings.queue_url,
            results=False,
            serializer=serializer,
        )
    settings.ensure_dirs()
    return Huey(
        name=f"{settings.queue_prefix}-queue",
        storage_class=_QueueStorage,
        filename=str(settings.queue_path),
        results=False,
        serializer=serializer,
        timeout=30,
    )
