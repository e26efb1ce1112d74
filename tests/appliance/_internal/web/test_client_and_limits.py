"""SDK retries against real loopback servers, and the per-token rate limit."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from support import auth, free_port, make_token


def _serve(app: Any, port: int) -> Any:
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", port, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_rate_limit_answers_429_problem(tmp_path: Path) -> None:
    from appliance._internal.config import Settings
    from appliance._internal.web.app import create_app

    settings = Settings(home=tmp_path / "h", rate_limit="5 per minute", log_level="WARNING")
    client = create_app(settings).test_client()
    token, other = make_token(settings, "a"), make_token(settings, "b")
    codes = [client.get("/v1/whoami", headers=auth(token)).status_code for _ in range(7)]
    assert codes[:5] == [200] * 5 and codes[5:] == [429, 429]
    resp = client.get("/v1/whoami", headers=auth(token))
    assert resp.content_type == "application/problem+json" and resp.headers["Retry-After"]
    # limits are per token: another tenant is unaffected; health checks are exempt
    assert client.get("/v1/whoami", headers=auth(other)).status_code == 200
    assert all(client.get("/healthz").status_code == 200 for _ in range(10))


def test_sdk_retries_503_and_429_then_succeeds() -> None:
    from flask import Flask, Response

    from appliance.client import ApiError, Client

    calls = {"n": 0}
    app = Flask("flaky")

    @app.get("/v1/whoami")
    def whoami() -> Response:
        calls["n"] += 1
        if calls["n"] == 1:
            return Response("{}", status=503, mimetype="application/problem+json")
        if calls["n"] == 2:
            return Response("{}", status=429, headers={"Retry-After": "0"},
                            mimetype="application/problem+json")
        return Response('{"tenant": "t", "role": "admin", "token_id": "tok_x"}',
                        mimetype="application/json")

    @app.get("/v1/jobs/<job_id>")
    def missing(job_id: str) -> Response:
        return Response('{"title": "Not found", "status": 404, "detail": "no job"}',
                        status=404, mimetype="application/problem+json")

    port = free_port()
    server = _serve(app, port)
    try:
        client = Client(f"http://127.0.0.1:{port}", token="aat_x", backoff=0.01)
        assert client.whoami().tenant == "t" and calls["n"] == 3
        with pytest.raises(ApiError) as err:
            client.get_job("job_1")
        assert err.value.status == 404 and "no job" in err.value.diagnostics()
    finally:
        server.shutdown()


def test_sdk_retries_connection_errors_until_server_is_up(tmp_path: Path) -> None:
    from appliance._internal.config import Settings
    from appliance._internal.web.app import create_app
    from appliance.client import Client, ConnectionFailed

    port = free_port()
    settings = Settings(home=tmp_path / "h", log_level="WARNING")
    app = create_app(settings)
    token = make_token(settings, "late")
    holder: dict[str, Any] = {}
    timer = threading.Timer(0.6, lambda: holder.setdefault("server", _serve(app, port)))
    timer.start()
    try:
        started = time.monotonic()
        client = Client(f"http://127.0.0.1:{port}", token=token, retries=8, backoff=0.1)
        assert client.whoami().tenant == "late"
        assert time.monotonic() - started >= 0.5
    finally:
        timer.join()
        holder["server"].shutdown()
    with pytest.raises(ConnectionFailed):
        Client(f"http://127.0.0.1:{free_port()}", token=token, retries=1, backoff=0.01).whoami()
