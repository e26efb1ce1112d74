"""Early answers (404, 415, 410 before the body is read) keep keep-alive connections usable:
a body within the drain limit is read and discarded, a larger one gets ``Connection: close``."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import cli_token, env_for, serve_appliance


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    home: Path = tmp_path_factory.mktemp("early") / "home"
    env = env_for(home)
    token = cli_token(env, "acme", "admin")
    with serve_appliance(env, "--workers", "1", "--threads", "2", "--no-consumer") as url:
        yield {"url": url, "token": token}


def _head(sock: socket.socket) -> tuple[str, dict[str, str], bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        assert data, "connection closed before an answer"
        buf += data
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (x.split(":", 1) for x in lines[1:])}
    while len(rest) < int(headers.get("content-length", 0)):
        rest += sock.recv(65536)
    return lines[0], headers, rest


def test_early_answers_leave_the_next_request_on_the_connection_working(
        server: dict[str, Any]) -> None:
    body = b"\0" * (6 << 20)
    cases = [("/v1/nowhere", "application/octet-stream", 404),
             ("/v1/ensembles/ens_x/predict?session=ses_x", "text/plain", 415),
             ("/v1/ensembles/ens_x/predict?session=ses_x", "application/octet-stream", 404)]
    with httpx.Client(base_url=server["url"], timeout=30,
                      headers={"Authorization": f"Bearer {server['token']}"}) as client:
        for _ in range(3):
            for path, ctype, status in cases:
                resp = client.post(path, content=body, headers={"Content-Type": ctype})
                assert resp.status_code == status
                assert resp.headers["content-type"].startswith("application/problem+json")
                assert client.get("/healthz").status_code == 200
    port = int(server["url"].rsplit(":", 1)[1])
    for path, ctype, status in cases:  # a plain client reusing its connection as told
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(f"POST {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer "
                         f"{server['token']}\r\nContent-Type: {ctype}\r\nContent-Length: "
                         f"{len(body)}\r\n\r\n".encode() + body)
            line, headers, _ = _head(sock)
            assert f" {status} " in line
            if headers.get("connection", "").lower() != "close":
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
                assert " 200 " in _head(sock)[0]


def test_a_body_beyond_the_drain_limit_is_answered_with_connection_close(
        server: dict[str, Any]) -> None:
    from appliance._internal.web.bodies import DRAIN_LIMIT

    port = int(server["url"].rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(f"POST /v1/nowhere HTTP/1.1\r\nHost: t\r\nContent-Type: application/"
                     f"octet-stream\r\nContent-Length: {DRAIN_LIMIT + (1 << 20)}\r\n\r\n".encode()
                     + b"\0" * 4096)
        status, headers, _ = _head(sock)
        assert " 404 " in status and headers["connection"].lower() == "close"
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:  # no token: no reading
        sock.sendall(b"POST /v1/models HTTP/1.1\r\nHost: t\r\nContent-Type: application/"
                     b"octet-stream\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000)
        status, headers, _ = _head(sock)
        assert " 401 " in status and headers["connection"].lower() == "close"
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:  # small, unread
        sock.sendall(b"POST /v1/nowhere HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n"
                     + b"x" * 5000)
        status, headers, _ = _head(sock)
        assert " 404 " in status and headers.get("connection", "keep-alive") != "close"
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        status, _, _ = _head(sock)
        assert " 200 " in status
