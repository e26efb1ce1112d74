"""Jobs: queued → running → succeeded | failed | cancelled, with progress, logs and timings.

The same task code runs in the embedded mode (Huey on SQLite, workers write the store) and in
the cluster mode (Huey on Redis; workers send events through Redis and the API node, the one
writer of the store, applies them and signs the reports). A job whose worker died is re-queued
or failed with a reason by the reaper; it is never left running and never lost.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import socket
import threading
import time
import traceback
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel

from appliance._internal.auth import Principal
from appliance._internal.config import Settings
from appliance._internal.identity import identity_for
from appliance._internal.reports import build_report, new_report_id, publish_report, sign_and_log
from appliance._internal.store import Store, dumps, loads, new_id, utcnow
from appliance.errors import (
    ApplianceError,
    Conflict,
    Error,
    JobCancelled,
    JobFailed,
    ServiceUnavailable,
    ValidationFailed,
)

logger = logging.getLogger("appliance._internal.jobs.runner")
TERMINAL = ("succeeded", "failed", "cancelled")


# -- job kinds ---------------------------------------------------------------------------------
@dataclass
class JobOutcome:
    """What a job concludes; the API node turns it into a signed report."""

    method: str
    version: str
    parameters: dict[str, Any]
    inputs: dict[str, Any]
    statistics: dict[str, Any]
    p_value: float | None = None
    verdict: str | None = None
    alpha: float | None = None
    seed: int | None = None
    device: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] | None = None


ResolveFn = Callable[[Store, Principal, Any], dict[str, Any]]
RunFn = Callable[["JobContext", Any, dict[str, Any]], JobOutcome]


@dataclass(frozen=True)
class JobKind:
    name: str
    params_model: type[BaseModel]
    resolve: ResolveFn
    run: RunFn
    roles: tuple[str, ...] = ("admin", "auditor")
    description: str = ""


_KINDS: dict[str, JobKind] = {}


def register_job_kind(kind: JobKind) -> None:
    """Register a job kind (audit method, evaluation, refinement) by name."""
    if _KINDS.get(kind.name) == kind:  # the same kind again (a capability's hook re-run)
        return
    if kind.name in _KINDS:
        raise ValueError(f"job kind {kind.name!r} registered twice")
    _KINDS[kind.name] = kind


def get_job_kind(name: str) -> JobKind:
    load_builtin_kinds()
    try:
        return _KINDS[name]
    except KeyError:
        raise ValidationFailed(
            f"unknown job kind {name!r}; known kinds: {', '.join(sorted(_KINDS))}"
        ) from None


def job_kinds() -> dict[str, JobKind]:
    load_builtin_kinds()
    return dict(_KINDS)


_builtin_lock = threading.Lock()
_loaded_for: str | None = None  # the APPLIANCE_CAPABILITIES whose kinds are registered


def load_builtin_kinds() -> None:
    """Register every installed capability's job kinds (once per set of capabilities,
    thread-safe: worker threads may ask for a kind at the same moment)."""
    global _loaded_for
    wanted = os.environ.get("APPLIANCE_CAPABILITIES", "")
    if _loaded_for == wanted:
        return
    with _builtin_lock:
        if _loaded_for == wanted:
            return
        from appliance.capabilities import register_jobs

        register_jobs()
        _loaded_for = wanted


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


def collect_events(
    settings: Settings, *, stop: threading.Event, once: bool = False, timeout: float = 1.0
) -> int:
    """API-node loop of the cluster mode: apply events from Redis until ``stop`` is set."""
    client = redis_client(settings)
    key = f"{settings.queue_prefix}:events"
    store = Store.open(settings)
    applied = 0
    last_reap = 0.0
    try:
        while not stop.is_set():
            item = client.blpop([key], timeout=timeout)
            if item is not None:
                try:
                    event = json.loads(item[1])
                    if not isinstance(event, dict) or "job_id" not in event:
                        raise ValueError("malformed event")
                    apply_event(store, settings, event)
                    applied += 1
                except Exception:
                    logger.exception("dropping a job event that could not be applied")
            if time.time() - last_reap > settings.job_lease_seconds / 3:
                reap_stale_jobs(store, settings, enqueue=make_enqueuer(settings))
                last_reap = time.time()
            if once and item is None:
                break
    finally:
        store.close()
    return applied


# -- running a job -------------------------------------------------------------------------------
class JobContext:
    """What a running job may do: report progress, log, check cancellation, read inputs."""

    def __init__(
        self,
        *,
        job_id: str,
        tenant_id: str,
        run: str,
        settings: Settings,
        sink: EventSink,
        blobs: BlobSource,
    ) -> None:
        self.job_id = job_id
        self.tenant_id = tenant_id
        self.run = run
        self.settings = settings
        self.sink = sink
        self.blobs = blobs
        self._last_progress = 0.0
        self._last_check = 0.0

    def progress(self, fraction: float) -> None:
        """Record progress (0..1); throttled; raises JobCancelled if a cancel was requested."""
        now = time.monotonic()
        if fraction >= 1.0 or now - self._last_progress > 0.25:
            self._last_progress = now
            self.sink.emit({"event": "progress", "job_id": self.job_id, "run": self.run,
                            "value": float(fraction)})
        self.check_cancelled()

    def log(self, message: str, level: str = "info") -> None:
        self.sink.emit({"event": "log", "job_id": self.job_id, "run": self.run,
                        "message": message, "level": level})

    def check_cancelled(self) -> None:
        now = time.monotonic()
        if now - self._last_check < 0.2:
            return
        self._last_check = now
        if self.sink.is_cancelled(self.job_id):
            raise JobCancelled("cancel requested")

    def blob_path(self, digest: str) -> Path:
        return self.blobs.path(digest)

    def save_artifact(self, data: bytes) -> str:
        return self.blobs.put(data)

    def cache_dir(self, name: str) -> Path:
        path = self.settings.home / "cache" / name
        path.mkdir(parents=True, exist_ok=True)
        return path


def _worker_name(run_id: str) -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{run_id}"


def execute_job(settings: Settings, message: dict[str, Any], *, sink: EventSink,
                blobs: BlobSource) -> str:
    """Run one job message to its end; returns the final state as seen by this worker."""
    job_id = message["job_id"]
    run = _worker_name(uuid.uuid4().hex[:8])
    if sink.is_cancelled(job_id):
        return "cancelled"
    if not sink.emit({"event": "claim", "job_id": job_id, "run": run}):
        return "skipped"
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(settings.job_lease_seconds / 3):
            try:
                sink.emit({"event": "heartbeat", "job_id": job_id, "run": run})
            except Exception:
                logger.warning("heartbeat for job %s failed", job_id)

    beater = threading.Thread(target=beat, name=f"heartbeat-{job_id}", daemon=True)
    beater.start()
    started = time.perf_counter()
    ctx = JobContext(job_id=job_id, tenant_id=message["tenant_id"], run=run, settings=settings,
                     sink=sink, blobs=blobs)
    try:
        kind = get_job_kind(message["kind"])
        params = kind.params_model.model_validate(message["params"])
        outcome = kind.run(ctx, params, message["inputs"])
        sink.emit({"event": "succeeded", "job_id": job_id, "run": run,
                   "outcome": asdict(outcome), "elapsed": time.perf_counter() - started})
        return "succeeded"
    except JobCancelled:
        sink.emit({"event": "cancelled", "job_id": job_id, "run": run})
        return "cancelled"
    except Exception as exc:  # every failure ends the job with a reason, never a silent loss
        reason = failure_reason(exc, settings)
        logger.warning("job %s failed: %s", job_id, reason)
        logger.debug("job %s traceback:\n%s", job_id, traceback.format_exc())
        sink.emit({"event": "failed", "job_id": job_id, "run": run, "reason": reason})
        return "failed"
    finally:
        stop.set()


# An absolute POSIX path of at least two components, not glued to a word ("0/1" stays).
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~:/>])/(?:[^\s/'\"`:,;()\[\]{}<>]+/)+[^\s/'\"`:,;()\[\]{}<>]*")


def scrub_paths(text: str, settings: Settings) -> str:
    """``text`` with the appliance home shown as ``<home>`` and every other absolute path
    cut to ``<path>/name``: a tenant reads job errors, and server paths are not theirs."""
    homes = {str(settings.home), str(settings.home.resolve())}
    for home in sorted(homes, key=len, reverse=True):
        text = text.replace(home, "<home>")
    return _ABSOLUTE_PATH.sub(lambda m: "<path>/" + m.group().rstrip("/").rsplit("/", 1)[-1],
                              text)


def failure_reason(exc: Exception, settings: Settings) -> str:
    """The reason a tenant sees for a failed job: the error's own message for failures a
    caller can cause (server paths scrubbed), a generic line for anything else."""
    if isinstance(exc, Error):  # the project's own errors: the message and the hint
        head = exc.detail if isinstance(exc, ApplianceError) else f"{type(exc).__name__}: {exc.detail}"
        hint = f"\nHint: {exc.hint}" if exc.hint and exc.hint != Error.hint else ""
        return scrub_paths(head + hint, settings)
    if isinstance(exc, ValueError):  # a library's complaint about the data (numpy, torch)
        return scrub_paths(f"{type(exc).__name__}: {exc}", settings)
    return f"internal error ({type(exc).__name__}); see the appliance log"


# -- submission, cancellation, recovery -----------------------------------------------------------
Enqueue = Callable[[dict[str, Any]], None]


def make_enqueuer(settings: Settings) -> Enqueue:
    from appliance._internal.jobs.worker import queue_for

    task = queue_for(settings).task

    def enqueue(message: dict[str, Any]) -> None:
        task(message)

    return enqueue


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
    inputs = kind.resolve(store, principal, params)
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


def cancel_job(store: Store, settings: Settings, principal: Principal, job_id: str) -> dict:
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
