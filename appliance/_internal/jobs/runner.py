"""Running a job: the context a job's code gets (progress, logs, cancellation, inputs), the
run itself, and the reason a tenant sees when it fails."""


from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
import traceback
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

from appliance._internal.config import Settings
from appliance._internal.jobs.blobs import BlobSource
from appliance._internal.jobs.events import EventSink
from appliance._internal.jobs.kinds import get_job_kind
from appliance.errors import (
    ApplianceError,
    Error,
    JobCancelled,
)

logger = logging.getLogger("appliance.jobs")


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
        outcome = kind.run(ctx, params, kind.load_inputs(message["inputs"]))
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
