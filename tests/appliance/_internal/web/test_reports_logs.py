"""Reports carry the true digests of what was uploaded, their log indexes match the
transparency log, consistency proofs between two checkpoints verify, and the service's own
log lines are JSON with request ids that never hold a token or uploaded content."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
from typing import Any

import pytest
from support import auth, npz_bytes, trained_linear_onnx, wait_job


def _run_evaluation(client: Any, token: str, model_bytes: bytes,
                    data_bytes: bytes) -> dict[str, Any]:
    model = client.post("/v1/models", headers=auth(token), content_type="multipart/form-data",
                        data={"name": "m", "file": (io.BytesIO(model_bytes), "clf.onnx")})
    dataset = client.post("/v1/datasets", headers=auth(token), content_type="multipart/form-data",
                          data={"name": "d", "file": (io.BytesIO(data_bytes), "d.npz")})
    job = client.post("/v1/jobs", headers=auth(token), json={"kind": "evaluation", "params": {
        "model_id": model.get_json()["id"], "dataset_id": dataset.get_json()["id"]}})
    final = wait_job(client, token, job.get_json()["id"])
    assert final["state"] == "succeeded", final
    return final


def _publish_more(settings: Any, tenant: str, count: int) -> list[str]:
    from appliance._internal.identity import identity_for
    from appliance._internal.reports import build_report, new_report_id, publish_report
    from appliance._internal.store import Store

    store = Store.open(settings)
    ids = []
    try:
        tenant_id = store.ensure_tenant(tenant)
        for i in range(count):
            body = build_report(report_id=new_report_id(), job_id=None, tenant=tenant,
                                method="evaluation", version="1", parameters={"i": i},
                                inputs={}, statistics={"i": i}, p_value=None, verdict=None,
                                alpha=None, seed=i, device="cpu", timings={})
            with store.transaction():
                ids.append(publish_report(store, identity_for(settings), tenant_id=tenant_id,
                                          job_id=None, body=body))
    finally:
        store.close()
    return ids


def _checkpoint(client: Any) -> tuple[dict[str, Any], int, bytes]:
    body = client.get("/v1/log/checkpoint").get_json()
    payload = json.loads(base64.b64decode(body["envelope"]["payload"]))
    assert payload["tree_size"] == body["tree_size"] and payload["root_hash"] == body["root_hash"]
    return body["envelope"], body["tree_size"], bytes.fromhex(body["root_hash"])


def test_report_digests_log_index_consistency_and_tree_size(
        client: Any, settings: Any, token_a: str, token_b: str, tmp_path: Any) -> None:
    from appliance._internal.identity import identity_for
    from appliance.client import verify_report
    from crypto.bundle import verify_consistency_between
    from crypto.dsse import canonical_json
    from crypto.errors import CryptoError
    from crypto.keys import load_public_key_pem
    from crypto.merkle import verify_consistency

    path, x, y = trained_linear_onnx(tmp_path / "clf.onnx")
    model_bytes, data_bytes = path.read_bytes(), npz_bytes(x=x, y=y)
    final = _run_evaluation(client, token_a, model_bytes, data_bytes)
    bundle = client.get(f"/v1/reports/{final['report_id']}", headers=auth(token_a)).get_json()
    report = bundle["report"]
    # the digests in the signed report are those of the bytes that were uploaded
    assert report["inputs"]["model"]["blob_sha256"] == hashlib.sha256(model_bytes).hexdigest()
    assert [f["sha256"] for f in report["inputs"]["model"]["files"]] == \
        [hashlib.sha256(model_bytes).hexdigest()]
    assert report["inputs"]["dataset"]["sha256"] == hashlib.sha256(data_bytes).hexdigest()
    assert report["id"] == final["report_id"] and report["job_id"] == final["id"]
    # the listed log index is the index of this very envelope in the log
    listed = client.get("/v1/reports", headers=auth(token_a)).get_json()["items"]
    index = listed[0]["log_index"]
    assert bundle["log"]["index"] == index
    log = identity_for(settings).log
    assert log.entry(index) == canonical_json(bundle["envelope"])
    verify_report(bundle)

    old_envelope, old_size, old_root = _checkpoint(client)
    more = _publish_more(settings, "tenant-b", 5)
    new_envelope, new_size, new_root = _checkpoint(client)
    assert new_size == old_size + 5
    proof_body = client.get(f"/v1/log/consistency?first={old_size}&second={new_size}").get_json()
    proof = [bytes.fromhex(h) for h in proof_body["proof"]]
    verify_consistency(old_size, new_size, old_root, new_root, proof)
    key = load_public_key_pem(client.get("/v1/log/public-key").get_json()["public_key"])
    verify_consistency_between(old_envelope, new_envelope, proof_body["proof"], key)
    default = client.get(f"/v1/log/consistency?first={old_size}").get_json()
    assert default["second"] == new_size and default["proof"] == proof_body["proof"]
    with pytest.raises(CryptoError):
        verify_consistency(old_size, new_size, old_root, new_root, proof[::-1] + [b"\0" * 32])
    # each of B's reports sits at its own index; indexes are unique across tenants
    rows = client.get("/v1/reports?limit=1000", headers=auth(token_b)).get_json()["items"]
    assert sorted(r["id"] for r in rows) == sorted(more)
    assert sorted(r["log_index"] for r in rows) == list(range(old_size, new_size))
    for row in rows:
        b = client.get(f"/v1/reports/{row['id']}", headers=auth(token_b)).get_json()
        assert json.loads(log.entry(row["log_index"]))["payload"] == b["envelope"]["payload"]

    # a bundle pinned to any tree size from index+1 to the current size verifies
    for size in (index + 1, old_size, new_size):
        pinned = client.get(f"/v1/reports/{final['report_id']}?tree_size={size}",
                            headers=auth(token_a)).get_json()
        assert pinned["log"]["tree_size"] == size
        assert verify_report(pinned).tree_size == size
    for bad in (0, -1, index, new_size + 1, 10**30, "abc", "", "1.5"):
        resp = client.get(f"/v1/reports/{final['report_id']}?tree_size={bad}",
                          headers=auth(token_a))
        assert resp.status_code == 422 and resp.content_type == "application/problem+json", bad
    for url in (f"/v1/log/consistency?first={new_size}&second={old_size}",
                f"/v1/log/consistency?first=1&second={new_size + 1}"):
        assert client.get(url).status_code == 422


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        from appliance._internal.web.app import JsonLogFormatter

        self.setFormatter(JsonLogFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def test_logs_are_json_with_request_ids_and_no_secrets(tmp_path: Any) -> None:
    from support import make_token

    from appliance._internal.config import Settings
    from appliance._internal.web.app import create_app

    settings = Settings(home=tmp_path / "h", log_level="DEBUG", rate_limit="100000 per minute")
    app = create_app(settings)
    client = app.test_client()
    token = make_token(settings, "logs")
    collector = _Collect()
    root = logging.getLogger()
    root.addHandler(collector)
    marker = b"FILE-CONTENT-MARKER-7f3a9c"
    try:
        r1 = client.get("/v1/whoami", headers={**auth(token), "X-Request-Id": "req-42"})
        assert r1.status_code == 200
        client.get("/v1/models", headers=auth("aat_" + "s3cr3t" * 8))
        client.get("/v1/models", headers={"Authorization": "Basic dXNlcjpwYXNzd29yZA=="})
        client.get(f"/v1/models?token={token}", headers=auth(token))
        client.post("/v1/datasets", headers=auth(token), content_type="multipart/form-data",
                    data={"name": "d", "file": (io.BytesIO(marker * 100), "d.npz")})
        client.post("/v1/models", headers=auth(token), content_type="multipart/form-data",
                    data={"name": "m", "file": (io.BytesIO(marker * 100), "m.onnx")})
        client.post("/v1/jobs", headers={**auth(token), "Content-Type": "application/json"},
                    data=b'{"kind": "' + marker + b'"')
        client.get("/v1/nothing", headers=auth(token))
    finally:
        root.removeHandler(collector)
        logging.getLogger().setLevel(logging.WARNING)
    assert collector.lines
    requests = []
    for line in collector.lines:
        entry = json.loads(line)  # every line is one JSON object
        assert {"ts", "level", "logger", "msg"} <= set(entry)
        if entry["msg"] == "request":
            requests.append(entry)
        for secret in (token, "s3cr3t", "dXNlcjpwYXNzd29yZA", "Bearer", "Authorization",
                       marker.decode()):
            assert secret not in line, (secret, line)
    assert len(requests) == 8
    assert all(r["request_id"] and r["status"] and r["path"] for r in requests)
    assert requests[0]["request_id"] == "req-42" and requests[0]["tenant"] == "logs"
    assert r1.headers["X-Request-Id"] == "req-42"
    assert len({r["request_id"] for r in requests}) == 8


def test_rate_limited_responses_have_request_ids(tmp_path: Any) -> None:
    from support import make_token

    from appliance._internal.config import Settings
    from appliance._internal.web.app import create_app

    settings = Settings(home=tmp_path / "h", log_level="WARNING", rate_limit="1 per minute")
    client = create_app(settings).test_client()
    token = make_token(settings, "rl")
    assert client.get("/v1/whoami", headers=auth(token)).status_code == 200
    limited = client.get("/v1/whoami", headers=auth(token))
    assert limited.status_code == 429
    assert limited.headers["X-Request-Id"] and \
        limited.get_json()["request_id"] == limited.headers["X-Request-Id"]
    echoed = client.get("/v1/whoami", headers={**auth(token), "X-Request-Id": "rl-7"})
    assert echoed.status_code == 429 and echoed.headers["X-Request-Id"] == "rl-7"
