"""Cluster mode against a real Redis: the API node enqueues on Redis, a worker in a separate
process (its own home folder, no access to the store) runs the job, fetches inputs over HTTP,
and sends events back; the API node's collector applies them and signs the report."""

from __future__ import annotations

import io
import json
import os
import secrets
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
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

    from appliance._internal.config import Settings
    from appliance._internal.jobs.worker import collect_events
    from appliance._internal.web.app import create_app
    from appliance.client import verify_report

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
                    APPLIANCE_API_URL=f"http://127.0.0.1:{port}",
                    # the API node seals watermark keys; its worker unseals them with this file
                    APPLIANCE_KEK_FILE=str(tmp_path / "api" / "keys" / "secrets.kek")),
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
        state = _wait(client, token, job["id"], worker)
        assert state["state"] == "succeeded", state
        bundle = client.get(f"/v1/reports/{state['report_id']}", headers=auth(token)).get_json()
        assert bundle["report"]["statistics"]["accuracy"] > 0.9
        verify_report(bundle)
        # the worker had no store of its own: it never created a database or a signing key
        assert not (tmp_path / "worker-home" / "appliance.db").exists()
        assert not (tmp_path / "worker-home" / "keys" / "signing-key.pem").exists()
        # the internal blob route refuses callers without the cluster token
        assert client.get(f"/v1/internal/blobs/{dataset['sha256']}").status_code == 404
        _watermark_audit_on_worker(client, token, worker, tmp_path)
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=20)
        stop.set()
        collector.join(timeout=10)
        server.shutdown()


def _wait(client: Any, token: str, job_id: str, worker: subprocess.Popen) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        state: dict[str, Any] = client.get(f"/v1/jobs/{job_id}", headers=auth(token)).get_json()
        if state["state"] in ("succeeded", "failed", "cancelled"):
            return state
        assert worker.poll() is None, worker.stderr.read() if worker.stderr else ""
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish: {state}")


def _watermark_audit_on_worker(client: Any, token: str, worker: subprocess.Popen, tmp_path: Path) -> None:
    """The API node marks a dataset (sealing the key); the Redis worker unseals it and audits."""
    import torch
    from safetensors.torch import save_file

    from models.vision import ConvClassifier, build_model, digits_splits, train_classifier

    torch.set_num_threads(1)
    splits = digits_splits(seed=0, size=8, fractions=(0.6, 0.2))
    (x_pub, y_pub), (x_val, y_val) = splits.public, splits.private

    def upload(name: str, **arrays: Any) -> dict[str, Any]:
        resp = client.post("/v1/datasets", headers=auth(token), content_type="multipart/form-data",
                           data={"name": name, "file": (io.BytesIO(npz_bytes(**arrays)), "d.npz")})
        assert resp.status_code == 201, resp.get_json()
        return dict(resp.get_json())

    source = upload("public", x=x_pub, y=y_pub)
    mark = client.post(f"/v1/datasets/{source['id']}/watermark", headers=auth(token),
                       json={"fraction": 0.1, "target_class": 0, "strength": 0.3}).get_json()
    with np.load(io.BytesIO(client.get(f"/v1/datasets/{mark['marked_dataset']['id']}/download",
                                       headers=auth(token)).data), allow_pickle=False) as arrays:
        x_marked, y_marked = arrays["x"], arrays["y"]
    config = {"in_channels": 1, "image_size": 8, "num_classes": 10, "width": 16}
    model = train_classifier(build_model(lambda **c: ConvClassifier(**c), seed=1, **config),
                             x_marked, y_marked, seed=1, epochs=25)
    weights = tmp_path / "marked.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    suspect = client.post("/v1/models", headers=auth(token), content_type="multipart/form-data",
                          data={"name": "marked", "architecture": "conv_classifier", "config": json.dumps(config),
                                "file": (io.BytesIO(weights.read_bytes()), weights.name)}).get_json()
    benign = upload("held-out", x=x_val, y=y_val)
    job = client.post("/v1/jobs", headers=auth(token), json={"kind": "ownership", "params": {
        "method": "watermark_dvbw", "suspect_model_id": suspect["id"], "watermark_id": mark["id"],
        "benign_dataset_id": benign["id"], "seed": 3}}).get_json()
    state = _wait(client, token, job["id"], worker)
    assert state["state"] == "succeeded", state
    report = client.get(f"/v1/reports/{state['report_id']}", headers=auth(token)).get_json()["report"]
    assert report["verdict"] == "trained_on_dataset", report
    # the worker used the API node's key file and made no key of its own
    assert not (tmp_path / "worker-home" / "keys" / "secrets.kek").exists()
