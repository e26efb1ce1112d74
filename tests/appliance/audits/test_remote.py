"""RemoteEndpoint against a real HTTP server on 127.0.0.1 (healthy, slow, junk, failing)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from appliance.audits.egress import EgressGuard
from appliance.audits.errors import (
    AuditInputError,
    QueryBudgetExceeded,
    RemoteEndpointError,
    RemoteTimeoutError,
)
from appliance.audits.ownership.dov4cl import DOV4CLInputs
from appliance.audits.registry import create_method
from appliance.audits.suspects import RemoteEndpoint


class _Handler(BaseHTTPRequestHandler):
    calls: dict[str, int] = {}

    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass

    def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length", 0))
        payload = json.loads(self.rfile.read(length))
        x = np.asarray(payload["inputs"], dtype=np.float64)
        flat = x.reshape(len(x), -1)
        _Handler.calls[self.path] = _Handler.calls.get(self.path, 0) + 1
        if self.path == "/embed":
            out = np.stack([flat.mean(1), flat.std(1), flat[:, 0]], 1).tolist()
            self._send(200, json.dumps({"outputs": out}).encode())
        elif self.path == "/proba":
            logits = np.stack([flat.mean(1), -flat.mean(1)], 1)
            prob = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
            self._send(200, json.dumps({"outputs": prob.tolist()}).encode())
        elif self.path == "/label":
            self._send(200, json.dumps({"outputs": [0] * len(x)}).encode())
        elif self.path == "/slow":
            time.sleep(1.0)
            self._send(200, json.dumps({"outputs": [[0.0]] * len(x)}).encode())
        elif self.path == "/junk":
            self._send(200, b"<html>not json</html>", "text/html")
        elif self.path == "/short":
            self._send(200, json.dumps({"outputs": [[1.0, 2.0]]}).encode())
        elif self.path == "/nan":
            self._send(200, ('{"outputs": [' + ",".join(["[NaN, 1.0]"] * len(x)) + "]}").encode())
        elif self.path == "/flaky":
            if _Handler.calls[self.path] % 2 == 1:
                self._send(503, b"{}")
            else:
                self._send(200, json.dumps({"outputs": [[1.0]] * len(x)}).encode())
        else:
            self._send(404, b'{"error": "no such route"}')


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # the client hung up on /slow on purpose


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = _QuietServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


X = np.random.default_rng(0).uniform(0, 1, (5, 1, 4, 4)).astype(np.float32)
#: the test server is on loopback, which the default guard refuses
LOOPBACK = EgressGuard(allow_private=True)


def test_embed_endpoint_batches_and_counts(server):
    with RemoteEndpoint(f"{server}/embed", guard=LOOPBACK, kind="embed", max_batch=2) as ep:
        out = ep(X)
        assert out.shape == (5, 3)
        assert ep.queries == 5 and ep.requests == 3
        np.testing.assert_allclose(out[:, 0], X.reshape(5, -1).mean(1), rtol=1e-5)


def test_proba_and_label_endpoints(server):
    with RemoteEndpoint(f"{server}/proba", guard=LOOPBACK, kind="proba") as ep:
        assert np.allclose(ep(X).sum(1), 1.0)
    with RemoteEndpoint(f"{server}/label", guard=LOOPBACK, kind="label") as ep:
        labels = ep(X)
        assert labels.dtype == np.int64 and labels.shape == (5,)


def test_query_budget_is_enforced(server):
    with RemoteEndpoint(f"{server}/embed", guard=LOOPBACK, kind="embed", query_budget=7) as ep:
        ep(X)
        with pytest.raises(QueryBudgetExceeded, match="budget of 7"):
            ep(X)
        assert ep.queries == 5


def test_timing_out_endpoint(server):
    with RemoteEndpoint(f"{server}/slow", guard=LOOPBACK, kind="embed", timeout_s=0.2, retries=1, backoff_s=0.01) as ep:
        t0 = time.perf_counter()
        with pytest.raises(RemoteTimeoutError, match="timed out after 2 attempts"):
            ep(X)
        assert time.perf_counter() - t0 < 3.0


@pytest.mark.parametrize(
    ("route", "message"),
    [("/junk", "invalid JSON"), ("/short", "shape"), ("/nan", "NaN"), ("/missing", "HTTP 404")],
)
def test_junk_answers_raise_named_error(server, route, message):
    with RemoteEndpoint(f"{server}{route}", guard=LOOPBACK, kind="embed", retries=0) as ep:
        with pytest.raises(RemoteEndpointError, match=message):
            ep(X)


def test_5xx_is_retried(server):
    with RemoteEndpoint(f"{server}/flaky", guard=LOOPBACK, kind="embed", retries=2, backoff_s=0.01) as ep:
        assert ep(X).shape == (5, 1)
        assert ep.requests == 2


def test_unreachable_endpoint_and_bad_url():
    with RemoteEndpoint("http://127.0.0.1:9/x", guard=LOOPBACK, kind="embed", retries=0, timeout_s=1) as ep:
        with pytest.raises(RemoteEndpointError, match="failed after 1 attempts"):
            ep(X)
    with pytest.raises(AuditInputError):
        RemoteEndpoint("ftp://x", kind="embed")
    with pytest.raises(AuditInputError):
        RemoteEndpoint("http://x", kind="logits")  # type: ignore[arg-type]


def test_dov4cl_audit_through_remote_suspect(server):
    local = RemoteEndpoint(f"{server}/embed", guard=LOOPBACK, kind="embed")
    images = np.random.default_rng(1).uniform(0, 1, (20, 1, 8, 8)).astype(np.float32)

    def shadow(x):
        flat = x.reshape(len(x), -1)
        return np.stack([flat.mean(1), flat.std(1), flat[:, 0]], 1)

    inputs = DOV4CLInputs(public=images, private=images[::-1].copy(), suspect=local, shadow=shadow)
    result = create_method("dov4cl").run(inputs, params={"rounds": 2, "k": 4, "permutations": 100}, seed=0)
    # all 40 images x 16 views, plus the invariance probe: 6 views of all 40 images
    assert result.queries == local.queries == 40 * 16 + 6 * 40
    assert result.statistics["calibrated_statistic"] == pytest.approx(0.0, abs=1e-6)
    local.close()


def test_junk_remote_suspect_fails_the_audit_cleanly(server):
    with RemoteEndpoint(f"{server}/junk", guard=LOOPBACK, kind="embed", retries=0) as ep:
        images = np.random.default_rng(1).uniform(0, 1, (20, 1, 8, 8)).astype(np.float32)
        inputs = DOV4CLInputs(public=images, private=images, suspect=ep, shadow=lambda x: x)
        with pytest.raises(RemoteEndpointError):
            create_method("dov4cl").run(inputs, params={"rounds": 1, "k": 4}, seed=0)
