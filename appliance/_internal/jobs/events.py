"""Events: the one path by which job state changes. Workers emit them (into the store in
the embedded mode, through Redis in the cluster mode); applying one is idempotent."""


from __future__ import annotations

import json
import logging
import math
import threading
import time
from abc import ABC, abstractmethod
from typing import Any

from appliance._internal.config import Settings
from appliance._internal.identity import identity_for
from appliance._internal.jobs.kinds import JobOutcome, get_job_kind
from appliance._internal.reports import build_report, new_report_id, publish_report, sign_and_log
from appliance._internal.store import Store, utcnow
from appliance.errors import ValidationFailed

logger = logging.getLogger("appliance.jobs")


# -- events: the one path by which job state changes -------------------------------------------
def apply_event(store: Store, settings: Settings, event: dict[str, Any]) -> bool:
    """Apply a worker event to the store. Events of a stale run (a re-queued attempt) are
    ignored. Returns whether the event changed anything."""
    job_id, run, kind = event["job_id"], event.get("run"), event["event"]
    now = time.time()
    if kind == "claim":
        with store.transaction():
            cur = store.conn.execute(
                "UPDATE jobs SET state='running', attempts=attempts+1, worker=?, started_at=?, "
                "heartbeat_at=?, progress=0 WHERE id=? AND state='queued' AND cancel_requested=0",
                (run, utcnow(), now, job_id),
            )
            if cur.rowcount == 1:
                store.add_job_log(job_id, f"started on {str(run).rsplit(':', 1)[0]}")
        return cur.rowcount == 1
    row = store.conn.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
    if row is None or row["state"] != "running" or row["worker"] != run:
        return False
    if kind == "heartbeat":
        store.conn.execute("UPDATE jobs SET heartbeat_at=? WHERE id=? AND worker=?", (now, job_id, run))
    elif kind == "progress":
        value = float(event["value"])
        if not math.isfinite(value):
            return False
        value = min(max(value, 0.0), 1.0)
        store.conn.execute(
            "UPDATE jobs SET progress=MAX(progress, ?), heartbeat_at=? WHERE id=? AND worker=?",
            (value, now, job_id, run),
        )
    elif kind == "log":
        store.add_job_log(job_id, str(event["message"]), str(event.get("level", "info")))
    elif kind == "failed":
        with store.transaction():
            cur = store.conn.execute(
                "UPDATE jobs SET state='failed', error=?, finished_at=? "
                "WHERE id=? AND worker=? AND state='running'",
                (str(event["reason"])[:2000], utcnow(), job_id, run),
            )
            if cur.rowcount == 1:
                store.add_job_log(job_id, f"failed: {event['reason']}", "error")
        return cur.rowcount == 1
    elif kind == "cancelled":
        with store.transaction():
            cur = store.conn.execute(
                "UPDATE jobs SET state='cancelled', finished_at=? "
                "WHERE id=? AND worker=? AND state='running'",
                (utcnow(), job_id, run),
            )
            if cur.rowcount == 1:
                store.add_job_log(job_id, "cancelled")
        return cur.rowcount == 1
    elif kind == "succeeded":
        return _finish(store, settings, dict(row), event)
    else:
        raise ValueError(f"unknown job event {kind!r}")
    return True


def _finish(store: Store, settings: Settings, job: dict[str, Any], event: dict[str, Any]) -> bool:
    """Publish the report of a run that is still the job's current one. A run re-queued
    meanwhile publishes nothing; a job whose cancel was requested ends cancelled, unreported."""
    outcome = JobOutcome(**event["outcome"])
    tenant = store.conn.execute(
        "SELECT name FROM tenants WHERE id=?", (job["tenant_id"],)
    ).fetchone()["name"]
    timings = dict(outcome.timings)
    timings["job_seconds"] = float(event.get("elapsed", 0.0))
    body = build_report(
        report_id=new_report_id(),
        job_id=job["id"],
        tenant=tenant,
        method=outcome.method,
        version=outcome.version,
        parameters=outcome.parameters,
        inputs=outcome.inputs,
        statistics=outcome.statistics,
        p_value=outcome.p_value,
        verdict=outcome.verdict,
        alpha=outcome.alpha,
        seed=outcome.seed,
        device=outcome.device,
        timings=timings,
        extra=outcome.extra,
    )
    identity = identity_for(settings)
    before = store.conn.execute("SELECT state, worker, cancel_requested FROM jobs WHERE id=?",
                                (job["id"],)).fetchone()
    signed = None
    if before is not None and before["state"] == "running" and before["worker"] == event["run"] \
            and not before["cancel_requested"]:
        # sign and log before taking the store's write lock; if a cancel lands in between,
        # the log keeps a true but unpublished entry (as after a crash at this point)
        signed = sign_and_log(identity, body)
        # before the job shows as succeeded, so whoever sees it succeeded sees what it made
        _before_success(store, job, outcome)
    with store.transaction():
        current = store.conn.execute(
            "SELECT state, worker, cancel_requested FROM jobs WHERE id=?", (job["id"],)
        ).fetchone()
        if current is None or current["state"] != "running" or current["worker"] != event["run"]:
            return False
        if current["cancel_requested"]:
            store.conn.execute(
                "UPDATE jobs SET state='cancelled', finished_at=? WHERE id=?",
                (utcnow(), job["id"]),
            )
            store.add_job_log(job["id"], "cancelled before its report was published")
            return True
        report_id = publish_report(
            store, identity, tenant_id=job["tenant_id"], job_id=job["id"], body=body,
            signed=signed,
        )
        store.conn.execute(
            "UPDATE jobs SET state='succeeded', progress=1, report_id=?, finished_at=? "
            "WHERE id=? AND worker=?",
            (report_id, utcnow(), job["id"], event["run"]),
        )
        store.add_job_log(job["id"], f"succeeded; report {report_id}")
    return True


def _before_success(store: Store, job: dict[str, Any], outcome: JobOutcome) -> None:
    """The job kind's ``on_succeeded``, run once the report is signed and before it is
    published (it writes the store in its own transactions); a failure there is logged on the
    job and the report is published all the same."""
    try:
        hook = get_job_kind(job["kind"]).on_succeeded
    except ValidationFailed:  # a kind no longer installed here
        return
    if hook is None:
        return
    try:
        hook(store, job, outcome)
    except Exception as exc:  # noqa: BLE001 (the report stands; say what did not follow it)
        logger.exception("after-success step of job %s failed", job["id"])
        store.add_job_log(job["id"], f"after the report: {type(exc).__name__}: {exc}"[:2000], "error")


class EventSink(ABC):
    @abstractmethod
    def emit(self, event: dict[str, Any]) -> bool: ...

    @abstractmethod
    def is_cancelled(self, job_id: str) -> bool: ...


class LocalSink(EventSink):
    """Embedded mode: the worker applies its own events to the store on this machine."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._local = threading.local()

    def store(self) -> Store:
        store = getattr(self._local, "store", None)
        if store is None:
            store = self._local.store = Store.open(self.settings)
        return store

    def emit(self, event: dict[str, Any]) -> bool:
        return apply_event(self.store(), self.settings, event)

    def is_cancelled(self, job_id: str) -> bool:
        row = self.store().conn.execute(
            "SELECT cancel_requested, state FROM jobs WHERE id=?", (job_id,)
        ).fetchone()
        return row is None or bool(row["cancel_requested"]) or row["state"] == "cancelled"


def redis_client(settings: Settings) -> Any:
    import redis

    return redis.Redis.from_url(settings.queue_url or "", socket_timeout=10)


class RedisSink(EventSink):
    """Cluster mode: events go through Redis to the API node's collector."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.redis = redis_client(settings)
        self.key = f"{settings.queue_prefix}:events"

    def emit(self, event: dict[str, Any]) -> bool:
        self.redis.rpush(self.key, json.dumps(event))
        return True

    def is_cancelled(self, job_id: str) -> bool:
        return bool(self.redis.exists(f"{self.settings.queue_prefix}:cancel:{job_id}"))
