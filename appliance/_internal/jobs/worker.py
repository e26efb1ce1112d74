"""Queue wiring and the worker process (``appliance worker``)."""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from huey import Huey

from appliance._internal.config import Settings
from appliance._internal.jobs.blobs import BlobSource, HttpBlobs, LocalBlobs
from appliance._internal.jobs.events import EventSink, LocalSink, RedisSink, apply_event, redis_client
from appliance._internal.jobs.queue import JsonSerializer, make_huey
from appliance._internal.jobs.runner import execute_job
from appliance._internal.jobs.service import Enqueue, reap_stale_jobs
from appliance._internal.store import Store

logger = logging.getLogger("appliance._internal.jobs.worker")


@dataclass
class Queue:
    huey: Huey
    task: Any


_queues: dict[tuple[str, str | None, str], Queue] = {}


def queue_for(settings: Settings) -> Queue:
    """The Huey instance and the one task, per (home, queue url, prefix)."""
    key = (str(settings.home.resolve()), settings.queue_url, settings.queue_prefix)
    if key in _queues:
        return _queues[key]
    huey = make_huey(settings)
    state: dict[str, Any] = {}

    def run_job(message: dict[str, Any]) -> str:
        if "sink" not in state:
            state["sink"], state["blobs"] = worker_endpoints(settings)
        return execute_job(settings, message, sink=state["sink"], blobs=state["blobs"])

    task = huey.task()(run_job)
    serializer = huey.serializer
    assert isinstance(serializer, JsonSerializer)
    serializer.allowed_names = {huey._registry.task_to_string(task.task_class)}
    queue = Queue(huey=huey, task=task)
    _queues[key] = queue
    return queue


def worker_endpoints(settings: Settings) -> tuple[EventSink, BlobSource]:
    if settings.cluster:
        sink: EventSink = RedisSink(settings)
        blobs: BlobSource
        if settings.api_url:
            blobs = HttpBlobs(settings=settings)
        else:
            blobs = LocalBlobs(lambda: _thread_store(settings))
        return sink, blobs
    local = LocalSink(settings)
    return local, LocalBlobs(local.store)


_tls = threading.local()


def _thread_store(settings: Settings) -> Store:
    store = getattr(_tls, "store", None)
    if store is None:
        store = _tls.store = Store.open(settings)
    return store


def recover_on_start(settings: Settings) -> list[str]:
    """Embedded mode: jobs left running by a dead worker are re-queued or failed."""
    if settings.cluster:
        return []
    queue = queue_for(settings)
    store = Store.open(settings)
    try:
        touched = reap_stale_jobs(store, settings, enqueue=lambda m: queue.task(m))
    finally:
        store.close()
    for job_id in touched:
        logger.warning("recovered job %s left behind by a dead worker", job_id)
    return touched


def run_worker(settings: Settings, *, workers: int | None = None) -> None:
    """Start a Huey consumer (blocking) with crash recovery and a periodic reaper."""
    queue = queue_for(settings)
    recover_on_start(settings)
    stop = threading.Event()
    if not settings.cluster:
        def reaper() -> None:
            store = Store.open(settings)
            while not stop.wait(max(settings.job_lease_seconds / 3, 1.0)):
                try:
                    reap_stale_jobs(store, settings, enqueue=lambda m: queue.task(m))
                except Exception:
                    logger.exception("reaper pass failed")

        threading.Thread(target=reaper, name="reaper", daemon=True).start()
    consumer = queue.huey.create_consumer(
        workers=workers or settings.consumer_workers, worker_type="thread",
        check_worker_health=True, initial_delay=0.05, max_delay=0.5, backoff=1.15,
    )
    try:
        consumer.run()
    finally:
        stop.set()


def make_enqueuer(settings: Settings) -> Enqueue:
    task = queue_for(settings).task

    def enqueue(message: dict[str, Any]) -> None:
        task(message)

    return enqueue


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
