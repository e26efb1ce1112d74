"""A worker killed with SIGKILL mid-job: on restart the job is re-queued and finished, or failed
with a reason; the database stays intact."""

from __future__ import annotations

import io
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support import appliance_cmd, auth, env_for, make_token, npz_bytes


def _slow_onnx(path: Path) -> Path:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    dims = [64, 768, 768, 768, 10]
    nodes, inits = [], []
    prev = "x"
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        w = (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        out = f"h{i}" if i < len(dims) - 2 else "logits"
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [out]))
        prev = out
    graph = helper.make_graph(nodes, "slow", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["n", 64])], [helper.make_tensor_value_info(
            "logits", TensorProto.FLOAT, ["n", 10])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


def _job(conn: sqlite3.Connection, job_id: str) -> dict[str, Any]:
    conn.row_factory = sqlite3.Row
    return dict(conn.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone())


def _start_worker(home: Path, **env: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(appliance_cmd("worker", "--workers", "1"), env=env_for(home, **env),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


@pytest.mark.parametrize("attempts,expected", [(2, "succeeded"), (1, "failed")])
def test_worker_killed_mid_job(tmp_path: Path, attempts: int, expected: str) -> None:
    from appliance._internal.config import Settings
    from appliance._internal.web.app import create_app

    home = tmp_path / "home"
    settings = Settings(home=home, log_level="WARNING", max_job_attempts=attempts)
    app = create_app(settings)  # real Huey SQLite enqueuer, no inline queue
    client = app.test_client()
    token = make_token(settings, "acme")
    model = client.post("/v1/models", headers=auth(token), content_type="multipart/form-data",
                        data={"name": "slow", "file": (io.BytesIO(
                            _slow_onnx(tmp_path / "slow.onnx").read_bytes()), "slow.onnx")})
    rng = np.random.default_rng(1)
    # One row per batch: long enough (seconds, not a fraction of one) that the poll below
    # sees the job under way before it ends, even on a quiet, fast machine.
    rows = 30000
    data = npz_bytes(x=rng.random((rows, 64), dtype=np.float32),
                     y=rng.integers(0, 10, rows).astype(np.int64))
    dataset = client.post("/v1/datasets", headers=auth(token), content_type="multipart/form-data",
                          data={"name": "d", "file": (io.BytesIO(data), "d.npz")})
    job = client.post("/v1/jobs", headers=auth(token), json={"kind": "evaluation", "params": {
        "model_id": model.get_json()["id"], "dataset_id": dataset.get_json()["id"],
        "batch_size": 1}}).get_json()
    extra = {"APPLIANCE_MAX_JOB_ATTEMPTS": str(attempts)}
    worker = _start_worker(home, **extra)
    conn = sqlite3.connect(settings.db_path)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            row = _job(conn, job["id"])
            if row["state"] == "running" and row["progress"] > 0.05:
                break
            assert row["state"] in ("queued", "running"), row
            time.sleep(0.05)
        else:
            pytest.fail("job never got under way")
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
        assert _job(conn, job["id"])["state"] == "running"  # left behind by the dead worker
        worker = _start_worker(home, **extra)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            row = _job(conn, job["id"])
            if row["state"] in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(0.1)
        assert row["state"] == expected, row
        if expected == "failed":
            assert "died" in row["error"]
        else:
            assert row["attempts"] == 2 and row["report_id"]
        logs = [r[0] for r in conn.execute(
            "SELECT message FROM job_logs WHERE job_id=? ORDER BY id", (job["id"],))]
        assert any("died" in m for m in logs), logs
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=20)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
