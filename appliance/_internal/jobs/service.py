"""Jobs: queued → running → succeeded | failed | cancelled, with progress, logs and timings.

The same task code runs in the embedded mode (Huey on SQLite, workers write the store) and in
the cluster mode (Huey on Redis; workers send events through Redis and the API node, the one
writer of the store, applies them and signs the reports). A job whose worker died is re-queued
or failed with a reason by the reaper; it is never left running and never lost.

This module submits, cancels, recovers and shows jobs; the queue wiring is in
:mod:`appliance._internal.jobs.worker`."""


from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from appliance._internal.auth import Principal
from appliance._internal.config import Settings
from appliance._internal.jobs.events import redis_client
from appliance._internal.jobs.kinds import get_job_kind, job_kinds
from appliance._internal.store import Store, dumps, loads, new_id, utcnow
from appliance.errors import (
    Conflict,
    ServiceUnavailable,
    ValidationFailed,
)

logger = logging.getLogger("appliance.jobs")
TERMINAL = ("succeeded", "failed", "cancelled")


# -- submission, cancellation, recovery -----------------------------------------------------------
Enqueue = Callable[[dict[str, Any]], None]


def job_message(job: dict[str, Any]) -> dict[str, Any]:
    return {"job_id": job["id"], "tenant_id": job["tenant_id"], "kind": job["kind"],
            "params": loads(job["params"]), "inputs": loads(job["inputs"])}


def submit_job(store: Store, principal: Principal, kind_name: str, raw_params: Any,
               enqueue: Enqueue) -> dict[str, Any]:
    kind = get_job_kind(kind_name)
    principal.require(*kind.roles)
    from pydantic import ValidationError

    try:
        params = kind.params_model.model_validate(raw_params if raw_params is not None else {})
    except ValidationError as exc:
        raise ValidationFailed(
            f"invalid parameters for {kind_name}",
            errors=json.loads(exc.json(include_url=False, include_input=False)),
        ) from None
    inputs = kind.dump_inputs(kind.resolve(store, principal, params))
    job_id = new_id("job")
    params_json = params.model_dump(mode="json")
    with store.transaction():
        store.conn.execute(
            "INSERT INTO jobs (id, tenant_id, kind, params, inputs, state, created_at) "
            "VALUES (?, ?, ?, ?, ?, 'queued', ?)",
            (job_id, principal.tenant_id, kind_name, dumps(params_json), dumps(inputs), utcnow()),
        )
        store.add_job_log(job_id, f"queued ({kind_name})")
    job = store.get_owned("jobs", principal.tenant_id, job_id, "job")
    try:
        enqueue(job_message(job))
    except Exception as exc:
        store.conn.execute(
            "UPDATE jobs SET state='failed', error=?, finished_at=? WHERE id=?",
            (f"could not enqueue: {type(exc).__name__}", utcnow(), job_id),
        )
        logger.error("could not enqueue job %s: %s", job_id, type(exc).__name__)
        raise ServiceUnavailable(
            "the job queue is unavailable; the job was recorded as failed",
            hint="retry shortly; check the queue (Redis or the home folder's queue.db)",
        ) from None
    return job


def cancel_job(store: Store, settings: Settings, principal: Principal, job_id: str) -> dict[str, Any]:
    job = store.get_owned("jobs", principal.tenant_id, job_id, "job")
    kind = job_kinds().get(job["kind"])
    # whoever may not start a kind of job may not stop one either
    principal.require(*(kind.roles if kind is not None else ("admin", "auditor")))
    with store.transaction():
        # re-read under the write lock: the job may have ended since it was fetched
        state = store.conn.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()[0]
        if state in TERMINAL:
            raise Conflict(f"job {job_id} already {state}")
        store.conn.execute("UPDATE jobs SET cancel_requested=1 WHERE id=?", (job_id,))
        store.conn.execute(
            "UPDATE jobs SET state='cancelled', finished_at=? WHERE id=? AND state='queued'",
            (utcnow(), job_id),
        )
        store.add_job_log(job_id, "cancel requested")
    if settings.cluster:
        redis_client(settings).set(f"{settings.queue_prefix}:cancel:{job_id}", "1", ex=86400)
    return store.get_owned("jobs", principal.tenant_id, job_id, "job")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_stale_jobs(store: Store, settings: Settings, *, enqueue: Enqueue | None,
                    assume_local_dead: bool = False) -> list[str]:
    """Re-queue or fail running jobs whose worker is gone (dead pid on this host, or no
    heartbeat for a lease). Returns the ids it touched."""
    touched: list[str] = []
    host = socket.gethostname()
    rows = store.conn.execute("SELECT * FROM jobs WHERE state='running'").fetchall()
    for row in rows:
        worker = row["worker"] or ""
        parts = worker.split(":")
        stale = (row["heartbeat_at"] or 0) < time.time() - settings.job_lease_seconds
        if len(parts) >= 3 and parts[0] == host and parts[1].isdigit():
            pid = int(parts[1])
            dead = not _pid_alive(pid) or (assume_local_dead and pid != os.getpid())
        else:
            dead = False
        if not (stale or dead):
            continue
        why = "its worker process died" if dead else "its worker stopped sending heartbeats"
        job = dict(row)
        requeue = job["attempts"] < settings.max_job_attempts and enqueue is not None \
            and not job["cancel_requested"]
        with store.transaction():
            if requeue:
                cur = store.conn.execute(
                    "UPDATE jobs SET state='queued', worker=NULL, progress=0 "
                    "WHERE id=? AND state='running' AND worker IS ?", (job["id"], row["worker"]))
                if cur.rowcount:
                    store.add_job_log(job["id"], f"re-queued: {why} (attempt {job['attempts']})",
                                      "warning")
            elif job["cancel_requested"]:
                cur = store.conn.execute(
                    "UPDATE jobs SET state='cancelled', finished_at=? "
                    "WHERE id=? AND state='running' AND worker IS ?",
                    (utcnow(), job["id"], row["worker"]))
                if cur.rowcount:
                    store.add_job_log(job["id"], f"cancelled: {why} after the cancel request",
                                      "warning")
            else:
                reason = (f"{why} during attempt {job['attempts']}; "
                          f"gave up after {job['attempts']} attempt(s)")
                cur = store.conn.execute(
                    "UPDATE jobs SET state='failed', error=?, finished_at=? "
                    "WHERE id=? AND state='running' AND worker IS ?",
                    (reason, utcnow(), job["id"], row["worker"]))
                if cur.rowcount:
                    store.add_job_log(job["id"], f"failed: {reason}", "error")
        if cur.rowcount:
            touched.append(job["id"])
            if requeue and enqueue is not None:
                enqueue(job_message({**job, "state": "queued"}))
    return touched


def job_view(job: dict[str, Any]) -> dict[str, Any]:
    """The public shape of a job row."""
    return {
        "id": job["id"], "kind": job["kind"], "state": job["state"],
        "progress": round(float(job["progress"]), 4), "attempts": job["attempts"],
        "params": loads(job["params"]), "error": job["error"], "report_id": job["report_id"],
        "created_at": job["created_at"], "started_at": job["started_at"],
        "finished_at": job["finished_at"], "cancel_requested": bool(job["cancel_requested"]),
    }
