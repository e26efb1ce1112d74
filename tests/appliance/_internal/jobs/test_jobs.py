"""Job lifecycle under adversity: cancelling a running job, monotone progress, the reaper
leaving live workers alone, and events of a stale run being ignored."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from support import auth, npz_bytes


def _slow_onnx(path: Path) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    dims = [64, 1024, 1024, 10]
    nodes, inits, prev = [], [], "x"
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        inits.append(numpy_helper.from_array(
            (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32), f"w{i}"))
        out = f"h{i}" if i < len(dims) - 2 else "logits"
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [out]))
        prev = out
    graph = helper.make_graph(
        nodes, "slow", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 10])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def _get(client: Any, token: str, job_id: str) -> dict[str, Any]:
    return dict(client.get(f"/v1/jobs/{job_id}", headers=auth(token)).get_json())


def test_cancel_running_job_mid_way(app: Any, client: Any, settings: Any, token_a: str,
                                    tmp_path: Path) -> None:
    from appliance._internal.jobs.service import reap_stale_jobs
    from appliance._internal.store import Store

    model = client.post("/v1/models", headers=auth(token_a), content_type="multipart/form-data",
                        data={"name": "slow", "file": (io.BytesIO(_slow_onnx(tmp_path / "s")),
                                                       "slow.onnx")}).get_json()
    rng = np.random.default_rng(1)
    data = npz_bytes(x=rng.random((20_000, 64), dtype=np.float32),
                     y=rng.integers(0, 10, 20_000).astype(np.int64))
    dataset = client.post("/v1/datasets", headers=auth(token_a),
                          content_type="multipart/form-data",
                          data={"name": "d", "file": (io.BytesIO(data), "d.npz")}).get_json()
    job = client.post("/v1/jobs", headers=auth(token_a), json={"kind": "evaluation", "params": {
        "model_id": model["id"], "dataset_id": dataset["id"], "batch_size": 1}}).get_json()
    seen: list[float] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = _get(client, token_a, job["id"])
        seen.append(state["progress"])
        if state["state"] == "running" and state["progress"] > 0.03:
            break
        assert state["state"] in ("queued", "running"), state
        time.sleep(0.02)
    # a live worker (this process) with fresh heartbeats is left alone by the reaper
    store = Store.open(settings)
    try:
        assert reap_stale_jobs(store, settings, enqueue=lambda m: None) == []
    finally:
        store.close()
    cancel = client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth(token_a)).get_json()
    assert cancel["cancel_requested"] is True and cancel["state"] in ("running", "cancelled")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = _get(client, token_a, job["id"])
        seen.append(state["progress"])
        if state["state"] not in ("queued", "running"):
            break
        time.sleep(0.02)
    assert state["state"] == "cancelled", state
    assert state["report_id"] is None and state["progress"] < 1.0
    assert seen == sorted(seen), "progress went backwards"
    assert client.get("/v1/reports", headers=auth(token_a)).get_json()["items"] == []
    logs = [line["message"] for line in client.get(
        f"/v1/jobs/{job['id']}/logs", headers=auth(token_a)).get_json()["items"]]
    assert "cancel requested" in logs and logs[-1] == "cancelled", logs
    again = client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth(token_a))
    assert again.status_code == 409


def _store_with_job(settings: Any, job_id: str = "job_t1") -> tuple[Any, str]:
    from appliance._internal.store import Store, utcnow

    store = Store.open(settings)
    tenant = store.ensure_tenant("events")
    store.conn.execute(
        "INSERT INTO jobs (id, tenant_id, kind, params, inputs, state, created_at) "
        "VALUES (?, ?, 'evaluation', '{}', '{}', 'queued', ?)", (job_id, tenant, utcnow()))
    return store, tenant


def _outcome() -> dict[str, Any]:
    from appliance._internal.jobs.kinds import JobOutcome

    return asdict(JobOutcome(method="evaluation", version="1.0.0", parameters={},
                             inputs={"dataset": {"sha256": "0" * 64}},
                             statistics={"accuracy": 0.5}, device="cpu"))


def _row(store: Any, job_id: str = "job_t1") -> dict[str, Any]:
    return dict(store.conn.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone())


def test_stale_run_events_are_ignored_and_progress_is_monotone(settings: Any) -> None:
    from appliance._internal.jobs.events import apply_event
    from appliance._internal.jobs.service import reap_stale_jobs

    store, _ = _store_with_job(settings)
    host = socket.gethostname()
    old, new = f"{host}:{os.getpid()}:old", f"{host}:{os.getpid()}:new"
    try:
        assert apply_event(store, settings, {"event": "claim", "job_id": "job_t1", "run": old})
        assert not apply_event(store, settings, {"event": "claim", "job_id": "job_t1",
                                                 "run": new})  # already claimed
        for value, expected in ((0.4, 0.4), (0.2, 0.4), (float("nan"), 0.4), (7.0, 1.0)):
            apply_event(store, settings, {"event": "progress", "job_id": "job_t1", "run": old,
                                          "value": value})
            assert _row(store)["progress"] == expected
        # the old run stops sending heartbeats: the reaper re-queues the job
        store.conn.execute("UPDATE jobs SET heartbeat_at=? WHERE id='job_t1'",
                           (time.time() - 10 * settings.job_lease_seconds,))
        requeued: list[dict[str, Any]] = []
        assert reap_stale_jobs(store, settings, enqueue=requeued.append) == ["job_t1"]
        assert requeued and requeued[0]["job_id"] == "job_t1"
        assert _row(store)["state"] == "queued" and _row(store)["progress"] == 0
        assert apply_event(store, settings, {"event": "claim", "job_id": "job_t1", "run": new})
        # every event of the old run is now ignored
        for event in ({"event": "progress", "value": 0.9}, {"event": "heartbeat"},
                      {"event": "log", "message": "from the past"},
                      {"event": "failed", "reason": "old run failed"},
                      {"event": "cancelled"}, {"event": "succeeded", "outcome": _outcome()}):
            assert not apply_event(store, settings, {**event, "job_id": "job_t1", "run": old})
        row = _row(store)
        assert (row["state"], row["worker"], row["progress"], row["attempts"]) == \
            ("running", new, 0.0, 2)
        assert store.conn.execute("SELECT COUNT(*) FROM reports").fetchone()[0] == 0
        messages = [r["message"] for r in store.job_logs("job_t1")]
        assert "from the past" not in messages
        # the current run concludes: one report, whose log index matches the log entry
        assert apply_event(store, settings, {"event": "succeeded", "job_id": "job_t1",
                                             "run": new, "outcome": _outcome()})
        row = _row(store)
        assert row["state"] == "succeeded" and row["report_id"]
        report = dict(store.conn.execute("SELECT * FROM reports").fetchone())
        assert report["id"] == row["report_id"] and report["job_id"] == "job_t1"
        from appliance._internal.identity import identity_for
        from appliance._internal.store import loads
        from crypto.dsse import canonical_json

        entry = identity_for(settings).log.entry(report["log_index"])
        assert entry == canonical_json(loads(report["envelope"]))
        # a late duplicate "succeeded" from the same run publishes nothing more
        assert not apply_event(store, settings, {"event": "succeeded", "job_id": "job_t1",
                                                 "run": new, "outcome": _outcome()})
        assert store.conn.execute("SELECT COUNT(*) FROM reports").fetchone()[0] == 1
    finally:
        store.close()


def test_cancel_requested_before_success_publishes_no_report(settings: Any) -> None:
    from appliance._internal.auth import Principal
    from appliance._internal.jobs.events import apply_event
    from appliance._internal.jobs.service import cancel_job

    store, tenant = _store_with_job(settings)
    run = f"{socket.gethostname()}:{os.getpid()}:r"
    try:
        apply_event(store, settings, {"event": "claim", "job_id": "job_t1", "run": run})
        principal = Principal(tenant_id=tenant, tenant_name="events", role="auditor",
                              token_id="tok_x")
        view = cancel_job(store, settings, principal, "job_t1")
        assert view["state"] == "running" and view["cancel_requested"] == 1
        # the worker finished its last batch before it looked at the cancel flag
        apply_event(store, settings, {"event": "succeeded", "job_id": "job_t1", "run": run,
                                      "outcome": _outcome()})
        row = _row(store)
        assert row["state"] == "cancelled" and row["report_id"] is None
        assert store.conn.execute("SELECT COUNT(*) FROM reports").fetchone()[0] == 0
    finally:
        store.close()


def test_reaper_only_touches_dead_or_silent_workers(settings: Any) -> None:
    from appliance._internal.jobs.events import apply_event
    from appliance._internal.jobs.service import reap_stale_jobs

    host = socket.gethostname()
    dead = subprocess.Popen(["true"])
    dead.wait()
    store, _ = _store_with_job(settings, "job_alive")
    try:
        jobs = {
            "job_alive": f"{host}:{os.getpid()}:a",    # this process, fresh heartbeat
            "job_remote": "some-other-host:1:b",        # another host, fresh heartbeat
            "job_dead": f"{host}:{dead.pid}:c",         # process gone, heartbeat fresh
            "job_silent": f"{host}:{os.getpid()}:d",    # alive but no heartbeat for a lease
            "job_cancel": f"{host}:{dead.pid}:e",       # dead, after a cancel request
            "job_spent": f"{host}:{dead.pid}:f",        # dead, out of attempts
        }
        for job_id, run in jobs.items():
            if job_id != "job_alive":
                store.conn.execute(
                    "INSERT INTO jobs (id, tenant_id, kind, params, inputs, state, created_at) "
                    "SELECT ?, tenant_id, kind, params, inputs, 'queued', created_at FROM jobs "
                    "WHERE id='job_alive'", (job_id,))
            assert apply_event(store, settings, {"event": "claim", "job_id": job_id, "run": run})
        store.conn.execute("UPDATE jobs SET heartbeat_at=? WHERE id='job_silent'",
                           (time.time() - 2 * settings.job_lease_seconds,))
        store.conn.execute("UPDATE jobs SET cancel_requested=1 WHERE id='job_cancel'")
        store.conn.execute("UPDATE jobs SET attempts=? WHERE id='job_spent'",
                           (settings.max_job_attempts,))
        requeued: list[str] = []
        touched = reap_stale_jobs(store, settings, enqueue=lambda m: requeued.append(m["job_id"]))
        assert sorted(touched) == ["job_cancel", "job_dead", "job_silent", "job_spent"]
        assert sorted(requeued) == ["job_dead", "job_silent"]
        states = {r["id"]: (r["state"], r["error"]) for r in
                  store.conn.execute("SELECT id, state, error FROM jobs")}
        assert states["job_alive"] == ("running", None)
        assert states["job_remote"] == ("running", None)
        assert states["job_dead"][0] == states["job_silent"][0] == "queued"
        assert states["job_cancel"][0] == "cancelled"
        assert states["job_spent"][0] == "failed" and "died" in states["job_spent"][1]
        assert reap_stale_jobs(store, settings, enqueue=lambda m: None) == []  # idempotent
    finally:
        store.close()


def test_queue_down_is_503_and_the_job_is_failed_not_lost(app: Any, client: Any,
                                                          token_a: str) -> None:
    def broken(message: dict[str, Any]) -> None:
        raise ConnectionError("redis is down")

    app.extensions["appliance.enqueue"] = broken
    ds = client.post("/v1/datasets", headers=auth(token_a), content_type="multipart/form-data",
                     data={"name": "d", "file": (io.BytesIO(npz_bytes(
                         x=np.zeros((2, 64), np.float32), y=np.zeros(2, np.int64))), "d.npz")})
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["logits"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 10])],
        initializer=[numpy_helper.from_array(np.ones((64, 10), np.float32), "w")])
    model_bytes = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model_bytes.ir_version = 8
    model = client.post("/v1/models", headers=auth(token_a), content_type="multipart/form-data",
                        data={"name": "m", "file": (io.BytesIO(model_bytes.SerializeToString()),
                                                    "m.onnx")})
    resp = client.post("/v1/jobs", headers=auth(token_a), json={"kind": "evaluation", "params": {
        "model_id": model.get_json()["id"], "dataset_id": ds.get_json()["id"]}})
    assert resp.status_code == 503 and resp.content_type == "application/problem+json"
    jobs = client.get("/v1/jobs", headers=auth(token_a)).get_json()["items"]
    assert len(jobs) == 1 and jobs[0]["state"] == "failed"
    assert "could not enqueue" in jobs[0]["error"] and "redis" not in jobs[0]["error"]


def test_job_kinds_load_once_under_concurrent_first_use() -> None:
    """Worker threads asking for a kind at the same moment in a fresh process all find it
    (the built-in kinds used to be marked loaded before their modules were imported)."""
    import subprocess
    import sys

    code = """
import threading
from appliance._internal.jobs.kinds import get_job_kind
barrier = threading.Barrier(8)
errors = []
def ask():
    barrier.wait()
    try:
        get_job_kind("evaluation")
    except Exception as exc:
        errors.append(repr(exc))
threads = [threading.Thread(target=ask) for _ in range(8)]
[t.start() for t in threads]
[t.join() for t in threads]
print("ERRORS", errors)
assert not errors, errors
"""
    for _ in range(3):
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
