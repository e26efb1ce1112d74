"""Cluster mode against a real Redis: the API node enqueues on Redis, a worker in a separate
process (its own home folder, no access to the store) runs the job, fetches inputs over HTTP,
and sends events back; the API node's collector applies them and signs the report."""

from __future__ import annotations

import io
import os
import secrets
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from support import (
    appliance_cmd,
    auth,
    env_for,
    free_port,
    make_token,
    npz_bytes,
    trained_linear_onnx,
)

REDIS_URL = os.environ.get("APPLIANCE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _redis() -> Any:
    try:
        import redis

        client = redis.Redis.from_url(REDIS_URL, socket_timeout=2)
        client.ping()
        return client
    except Exception as exc:  # pragma: no cover - depends on the machine
        pytest.skip(f"no Redis answers at {REDIS_URL} ({type(exc).__name__}); the cluster "
                    "path needs one (start redis-server on 127.0.0.1:6379)")


@pytest.fixture
def redis_prefix() -> Any:
    client = _redis()
    prefix = f"appliance-test-{secrets.token_hex(4)}"
    yield prefix
    for key in client.scan_iter(match=f"*{prefix}*"):
        client.delete(key)
    assert not list(client.scan_iter(match=f"*{prefix}*"))


def test_redis_queue_end_to_end(tmp_path: Path, redis_prefix: str) -> None:
    from werkzeug.serving import make_server

    from appliance.app import create_app
    from appliance.client import verify_report
    from appliance.config import Settings
    from appliance.jobs import collect_events

    cluster_token = secrets.token_urlsafe(16)
    port = free_port()
    settings = Settings(home=tmp_path / "api", queue_url=REDIS_URL, queue_prefix=redis_prefix,
                        cluster_token=cluster_token, log_level="WARNING")
    app = create_app(settings)
    server = make_server("127.0.0.1", port, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    stop = threading.Event()
    collector = threading.Thread(target=collect_events, args=(settings,),
                                 kwargs={"stop": stop, "timeout": 0.2}, daemon=True)
    collector.start()
    worker = subprocess.Popen(
        appliance_cmd("worker", "--workers", "1"),
        env=env_for(tmp_path / "worker-home", APPLIANCE_QUEUE_URL=REDIS_URL,
                    APPLIANCE_QUEUE_PREFIX=redis_prefix, APPLIANCE_CLUSTER_TOKEN=cluster_token,
                    APPLIANCE_API_URL=f"http://127.0.0.1:{port}"),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        client = app.test_client()
        token = make_token(settings, "acme")
        onnx_path, x, y = trained_linear_onnx(tmp_path / "m.onnx")
        model = client.post("/v1/models", headers=auth(token), content_type="multipart/form-data",
                            data={"name": "m", "file": (io.BytesIO(onnx_path.read_bytes()),
                                                        "m.onnx")}).get_json()
        dataset = client.post("/v1/datasets", headers=auth(token),
                              content_type="multipart/form-data",
                              data={"name": "d", "file": (io.BytesIO(npz_bytes(x=x, y=y)),
                                                          "d.npz")}).get_json()
        job = client.post("/v1/jobs", headers=auth(token), json={
            "kind": "evaluation",
            "params": {"model_id": model["id"], "dataset_id": dataset["id"]}}).get_json()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            state = client.get(f"/v1/jobs/{job['id']}", headers=auth(token)).get_json()
            if state["state"] in ("succeeded", "failed", "cancelled"):
                break
            assert worker.poll() is None, worker.stderr.read() if worker.stderr else ""
            time.sleep(0.1)
        assert state["state"] == "succeeded", state
        bundle = client.get(f"/v1/reports/{state['report_id']}", headers=auth(token)).get_json()
        assert bundle["report"]["statistics"]["accuracy"] > 0.9
        verify_report(bundle)
        # the worker had no store of its own: it never created a database or a signing key
        assert not (tmp_path / "worker-home" / "appliance.db").exists()
        assert not (tmp_path / "worker-home" / "keys" / "signing-key.pem").exists()
        # the internal blob route refuses callers without the cluster token
        assert client.get(f"/v1/internal/blobs/{dataset['sha256']}").status_code == 404
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=20)
        stop.set()
        collector.join(timeout=10)
        server.shutdown()
