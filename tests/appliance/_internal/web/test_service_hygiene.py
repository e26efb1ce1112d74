"""Service hygiene (security review, findings 7-11): form limits, role checks before bodies, rate-limit
keys and their shared store, bounded reports, token expiry, /metrics, session ownership,
gunicorn's control socket and safe blob deletion."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from support import auth, make_token, npz_bytes


class CountingStream(io.BytesIO):
    """A request body that remembers how many bytes the server read from it."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.bytes_read = 0

    def read(self, size: int | None = -1) -> bytes:
        chunk = super().read(size)
        self.bytes_read += len(chunk)
        return chunk

    def readinto(self, buffer: Any) -> int:
        count = super().readinto(buffer)
        self.bytes_read += count
        return count

    def readline(self, size: int | None = -1) -> bytes:
        line = super().readline(size)
        self.bytes_read += len(line)
        return line


def _multipart(fields: dict[str, str], file_bytes: bytes, filename: str) -> tuple[bytes, str]:
    boundary = "hygieneboundary7f3a"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n".encode() + file_bytes + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def _digits_npz(n: int) -> bytes:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return npz_bytes(x=x[:n].astype(np.float32), y=y[:n].astype(np.int64))


# -- finding 9: a small JSON limit must not cap uploads, and a 413 names its own limit --------

def test_small_json_limit_still_accepts_uploads_and_names_the_right_limit(tmp_path: Path) -> None:
    from appliance._internal.config import Settings
    from appliance._internal.web.app import create_app

    settings = Settings(home=tmp_path / "h", max_json_bytes=16 * 1024,
                        max_upload_bytes=1_000_000, log_level="WARNING")
    client = create_app(settings).test_client()
    token = make_token(settings, "t")
    dataset = _digits_npz(600)  # ~160 KB: far above the JSON limit, far below the upload limit
    assert len(dataset) > 100_000
    resp = client.post("/v1/datasets", headers=auth(token), content_type="multipart/form-data",
                       data={"name": "digits", "file": (io.BytesIO(dataset), "d.npz")})
    assert resp.status_code == 201, resp.get_json()
    assert resp.get_json()["n"] == 600

    # a text field over the JSON limit is refused, naming that limit (not the upload limit)
    resp = client.post("/v1/models", headers=auth(token), content_type="multipart/form-data",
                       data={"name": "m", "config": "{" + " " * 40_000 + "}",
                             "file": (io.BytesIO(b"x" * 100), "m.onnx")})
    assert resp.status_code == 413
    detail = resp.get_json()["detail"]
    assert "APPLIANCE_MAX_JSON_BYTES" in detail and str(settings.max_upload_bytes) not in detail

    # a body over the upload limit names the upload limit
    resp = client.post("/v1/datasets", headers=auth(token), content_type="multipart/form-data",
                       data={"name": "big", "file": (io.BytesIO(b"x" * 1_200_000), "d.npz")})
    assert resp.status_code == 413
    assert "APPLIANCE_MAX_UPLOAD_BYTES" in resp.get_json()["detail"]


# -- finding 10: the role check answers before the body is read ------------------------------

def test_upload_by_a_client_token_is_refused_before_the_body_is_read(
        client: Any, settings: Any) -> None:
    client_token = make_token(settings, "tenant-c", role="client")
    payload = b"\0" * (8 * 1024 * 1024)
    for path in ("/v1/models", "/v1/datasets"):
        body, content_type = _multipart({"name": "x"}, payload, "x.npz")
        stream = CountingStream(body)
        resp = client.post(path, headers=auth(client_token), input_stream=stream,
                           content_type=content_type, content_length=len(body))
        assert resp.status_code == 403, (path, resp.get_json())
        assert resp.content_type == "application/problem+json"
        assert stream.bytes_read < 64 * 1024, (path, stream.bytes_read)


# -- finding 11: tokens may expire ------------------------------------------------------------

def test_token_expiry_shown_in_whoami_and_refused_after(client: Any, settings: Any) -> None:
    import json
    import time
    from datetime import datetime

    from click.testing import CliRunner

    from appliance._internal.store import Store
    from appliance.cli import main

    runner = CliRunner(env={"APPLIANCE_HOME": str(settings.home)})
    result = runner.invoke(main, ["tokens", "create", "--tenant", "t", "--role", "auditor",
                                  "--expires-in", "30d", "--json"])
    assert result.exit_code == 0, result.output
    issued = json.loads(result.output)
    whoami = client.get("/v1/whoami", headers=auth(issued["token"]))
    assert whoami.status_code == 200
    assert whoami.get_json()["expires_at"] == issued["expires_at"]
    expires = datetime.fromisoformat(issued["expires_at"]).timestamp()
    assert abs(expires - (time.time() + 30 * 86400)) < 120

    # a token without expiry says so
    forever = make_token(settings, "t")
    assert client.get("/v1/whoami", headers=auth(forever)).get_json()["expires_at"] is None

    # time passes (the row's expiry moves into the past): 401 with a clear detail
    store = Store.open(settings)
    try:
        store.conn.execute("UPDATE tokens SET expires_at = ? WHERE id = ?",
                           (time.time() - 1, issued["token_id"]))
    finally:
        store.close()
    resp = client.get("/v1/whoami", headers=auth(issued["token"]))
    assert resp.status_code == 401 and resp.content_type == "application/problem+json"
    assert "expired" in resp.get_json()["detail"]

    for bad in ("30x", "0d", "-1d", "99999999w", "d"):
        result = runner.invoke(main, ["tokens", "create", "--tenant", "t", "--role", "client",
                                      "--expires-in", bad])
        assert result.exit_code != 0, bad


# -- finding 7: the rate limit counts tokens, not header spellings, across processes ----------

def test_rate_limit_keys_on_the_token_and_is_shared_by_processes(tmp_path: Path) -> None:
    from appliance._internal.config import Settings
    from appliance._internal.web.app import create_app

    settings = Settings(home=tmp_path / "h", rate_limit="5 per minute", log_level="WARNING")
    first = create_app(settings).test_client()
    token = make_token(settings, "t")
    # however the scheme is spelled, it is the same token and the same quota
    spellings = [f"Bearer {token}", f"bearer {token}", f"BEARER {token}", f"Bearer  {token}",
                 f"bEaReR {token} "]
    codes = [first.get("/v1/whoami", headers={"Authorization": h}).status_code
             for h in spellings]
    assert codes == [200] * 5
    assert first.get("/v1/whoami", headers={"Authorization": f"bearer  {token}"}).status_code \
        == 429

    # an anonymous caller gets one quota per address, whatever garbage it sends
    garbage = [f"Bearer aat_{i}" for i in range(5)] + ["x", "Basic Zm9vOmJhcg=="]
    codes = [first.get("/v1/whoami", headers={"Authorization": h}).status_code
             for h in garbage]
    assert codes[:5] == [401] * 5 and codes[5:] == [429, 429]

    # a second app over the same home, as each gunicorn worker builds its own (own limiter,
    # own connections), sees the same counts: the limit is not multiplied by the workers
    other = make_token(settings, "u")
    second = create_app(settings).test_client()
    assert second.get("/v1/whoami", headers=auth(token)).status_code == 429
    codes = [client.get("/v1/whoami", headers=auth(other)).status_code
             for client in (first, second, first, second, first, second)]
    assert codes == [200] * 5 + [429]


# -- finding 11: /metrics needs an admin token ------------------------------------------------

def test_metrics_require_an_admin_token(client: Any, settings: Any, token_a: str) -> None:
    assert client.get("/metrics").status_code == 401
    for role in ("auditor", "client"):
        resp = client.get("/metrics", headers=auth(make_token(settings, "tenant-a", role=role)))
        assert resp.status_code == 403 and resp.content_type == "application/problem+json"
    resp = client.get("/metrics", headers=auth(token_a))
    assert resp.status_code == 200 and "appliance_http_requests_total" in resp.get_data(as_text=True)


# -- finding 11: no gunicorn control socket shared between instances --------------------------

def test_gunicorn_control_socket_is_disabled(tmp_path: Path, monkeypatch: Any) -> None:
    import runpy

    from gunicorn.config import Config
    from support import ROOT

    from appliance._internal.web.server import gunicorn_options

    monkeypatch.setenv("APPLIANCE_HTTP_WORKERS", "2")
    deployed = runpy.run_path(str(ROOT / "deploy" / "gunicorn.conf.py"))
    for options in (gunicorn_options(host="127.0.0.1", port=8080, workers=None, threads=4),
                    {k: v for k, v in deployed.items() if not k.startswith("_")}):
        cfg = Config()
        for key, value in options.items():
            if key in cfg.settings and value is not None:
                cfg.set(key, value)
        assert cfg.control_socket_disable is True


def _linear_onnx_bytes() -> bytes:
    """A real (untrained) ONNX graph: logits = x @ w, four features, three classes."""
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["logits"])], "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 3])], [weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return bytes(model.SerializeToString())


# -- finding 11: a refused upload never deletes the blob of an identical accepted one ---------

def test_refused_upload_racing_an_identical_accepted_one_keeps_its_blob(
        app: Any, settings: Any, monkeypatch: Any) -> None:
    import hashlib
    import threading

    from appliance._internal.auth import authenticate
    from appliance._internal.store import Store
    from appliance.capabilities.catalog import service as registry
    from appliance.errors import ValidationFailed

    data = _linear_onnx_bytes()
    token = make_token(settings, "t")
    accepted_is_validating, release_accepted = threading.Event(), threading.Event()
    original_check = registry._check_onnx_options

    def held_check(config: Any, kind: str) -> None:
        if config is None:  # the accepted upload: hold it between its blob write and its row
            accepted_is_validating.set()
            assert release_accepted.wait(60)
        original_check(config, kind)

    monkeypatch.setattr(registry, "_check_onnx_options", held_check)
    outcome: dict[str, Any] = {}

    def accepted_upload() -> None:
        store = Store.open(settings)
        try:
            principal = authenticate(store, f"Bearer {token}")
            outcome["row"] = registry.register_model(
                store, principal, stream=io.BytesIO(data), filename="m.onnx", name="good",
                kind="classifier")
        except Exception as exc:  # reported below: the refusal broke the accepted upload
            outcome["error"] = exc
        finally:
            store.close()

    thread = threading.Thread(target=accepted_upload)
    thread.start()
    try:
        assert accepted_is_validating.wait(60)
        store = Store.open(settings)
        try:
            principal = authenticate(store, f"Bearer {token}")
            try:  # the same bytes, refused for contradictory options
                registry.register_model(store, principal, stream=io.BytesIO(data),
                                        filename="m.onnx", name="bad", kind="classifier",
                                        config={"kind": "encoder"})
            except ValidationFailed:
                pass
            else:
                raise AssertionError("the contradictory upload was accepted")
        finally:
            store.close()
    finally:
        release_accepted.set()
        thread.join(60)
    assert "error" not in outcome, f"the accepted upload failed: {outcome.get('error')!r}"
    digest = registry.loads(outcome["row"]["storage"])["blob"]
    assert (settings.blob_dir / digest[:2] / digest[2:]).is_file()

    # the accepted model still evaluates (its blob is there), and once nothing is in flight
    # a refused twin of unrecorded content does delete its own blob
    client = app.test_client()
    model = client.get(f"/v1/models/{outcome['row']['id']}", headers=auth(token)).get_json()
    assert model["size"] == len(data)
    lone = data + b"\0"
    resp = client.post("/v1/models", headers=auth(token), content_type="multipart/form-data",
                       data={"name": "lone", "file": (io.BytesIO(lone), "m.onnx"),
                             "kind": "classifier", "config": '{"kind": "encoder"}'})
    assert resp.status_code in (400, 422)
    lone_digest = hashlib.sha256(lone).hexdigest()
    assert not (settings.blob_dir / lone_digest[:2] / lone_digest[2:]).exists()


# -- finding 8: reports stay bounded in the class count ---------------------------------------

def _linear_onnx_classifier(weights: np.ndarray) -> bytes:
    """A real ONNX graph computing logits = x @ weights."""
    from onnx import TensorProto, helper, numpy_helper

    features, classes = weights.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["logits"])], "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", classes])],
        [numpy_helper.from_array(weights.astype(np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return bytes(model.SerializeToString())


def test_many_class_report_is_bounded_and_binds_the_matrix(
        client: Any, token_a: str) -> None:
    import hashlib
    import json
    import time

    from support import wait_job

    from appliance._internal.reports import render_html
    from appliance.client import verify_report

    classes, features, n = 300, 8, 600
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(features, classes)).astype(np.float32)
    x = rng.normal(size=(n, features)).astype(np.float32)
    logits = x @ weights
    # labels: the model's own argmax for 70% of rows, a random class otherwise
    y = np.where(rng.random(n) < 0.7, logits.argmax(axis=1), rng.integers(0, classes, n))
    expected = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(expected, (y, logits.argmax(axis=1)), 1)

    model = client.post("/v1/models", headers=auth(token_a), content_type="multipart/form-data",
                        data={"name": "wide", "kind": "classifier",
                              "file": (io.BytesIO(_linear_onnx_classifier(weights)), "w.onnx")})
    assert model.status_code == 201, model.get_json()
    dataset = client.post("/v1/datasets", headers=auth(token_a),
                          content_type="multipart/form-data",
                          data={"name": "wide", "file": (io.BytesIO(npz_bytes(x=x, y=y)), "d.npz")})
    assert dataset.status_code == 201, dataset.get_json()
    job = client.post("/v1/jobs", headers=auth(token_a), json={
        "kind": "evaluation",
        "params": {"model_id": model.get_json()["id"], "dataset_id": dataset.get_json()["id"]}})
    final = wait_job(client, token_a, job.get_json()["id"])
    assert final["state"] == "succeeded", final

    resp = client.get(f"/v1/reports/{final['report_id']}", headers=auth(token_a))
    bundle = resp.get_json()
    # 90,000 cells inline made this bundle ~0.5 MB (2000 classes: 22.7 MB); it stays small
    assert len(resp.get_data()) < 64 * 1024, len(resp.get_data())
    verify_report(bundle)
    stats = bundle["report"]["statistics"]
    assert "confusion_matrix" not in stats
    bound = stats["confusion_matrix_artifact"]
    assert bound["shape"] == [classes, classes] and "sign" in bound["note"]
    assert bound["correct"] == int(np.trace(expected))
    assert bound["nonzero_cells"] == int(np.count_nonzero(expected))
    off = expected.copy()
    np.fill_diagonal(off, 0)
    assert bound["top_confusions"][0]["count"] == int(off.max())
    assert abs(stats["accuracy"] - np.trace(expected) / n) < 1e-12

    # the matrix itself: downloadable by its tenant, its sha256 is the one the report signs
    url = f"/v1/reports/{final['report_id']}/artifacts/confusion_matrix.npz"
    artifact = client.get(url, headers=auth(token_a))
    assert artifact.status_code == 200
    assert hashlib.sha256(artifact.get_data()).hexdigest() == bound["sha256"]
    assert bundle["report"]["extra"]["artifacts"]["confusion_matrix.npz"] == bound["sha256"]
    with np.load(io.BytesIO(artifact.get_data()), allow_pickle=False) as archive:
        assert np.array_equal(archive["confusion_matrix"], expected)

    def render_seconds(report: dict[str, Any]) -> tuple[float, str]:
        started = time.perf_counter()
        page = render_html(report, log_index=0)
        return time.perf_counter() - started, page

    _, page = render_seconds(bundle["report"])  # the first figure also pays for imports
    assert bound["sha256"] in page
    baseline, _ = render_seconds(bundle["report"])
    # an old report with a 2000-class matrix inline (the finding's 8.7 s page) renders no
    # plot of it and a bounded preview: about as fast as the bounded report, same run
    legacy = json.loads(json.dumps(bundle["report"]))
    legacy["statistics"]["confusion_matrix"] = np.eye(2000, dtype=int).tolist()
    inline, _ = render_seconds(legacy)
    assert inline < 2 * baseline + 0.5, (inline, baseline)
