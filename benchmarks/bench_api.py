"""API under concurrent clients on loopback: submit an evaluation job, poll it, fetch its
signed report. Prints throughput and p50/p99 latency per call; baseline: /healthz under the
same load, measured in the same run.

The load generator shares the 2 cores with the server, so it must be cheap: by default it
speaks HTTP/1.1 over one keep-alive connection per client with asyncio streams (like wrk);
``--client httpx`` uses httpx's AsyncClient instead, which costs the generator several times
more CPU per request and shows up as server latency.

    python benchmarks/bench_api.py [--clients 50] [--rounds 4] [--client raw|httpx]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from _common import live_appliance, percentile, stopwatch, table


async def _client_loop(http: httpx.AsyncClient, token: str, params: dict, rounds: int,
                       lat: dict[str, list[float]]) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    for _ in range(rounds):
        t = stopwatch()
        resp = await http.post("/v1/jobs", json={"kind": "evaluation", "params": params},
                               headers=headers)
        lat["submit"].append(t())
        resp.raise_for_status()
        job_id = resp.json()["id"]
        while True:
            t = stopwatch()
            resp = await http.get(f"/v1/jobs/{job_id}", headers=headers)
            lat["poll"].append(t())
            state = resp.json()
            if state["state"] in ("succeeded", "failed", "cancelled"):
                break
            await asyncio.sleep(0.1)
        assert state["state"] == "succeeded", state
        t = stopwatch()
        resp = await http.get(f"/v1/reports/{state['report_id']}", headers=headers)
        lat["report"].append(t())
        resp.raise_for_status()


async def _health_loop(http: httpx.AsyncClient, n: int, lat: list[float]) -> None:
    for _ in range(n):
        t = stopwatch()
        (await http.get("/healthz")).raise_for_status()
        lat.append(t())


class RawResponse:
    def __init__(self, status: int, body: bytes) -> None:
        self.status_code = status
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)

    def raise_for_status(self) -> None:
        if self.status_code >= 400:
            raise RuntimeError(f"HTTP {self.status_code}: {self.body[:200]!r}")


class RawConnection:
    """One keep-alive HTTP/1.1 connection (requests in sequence, as one client does)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, *, json_body: Any = None,
                      headers: dict[str, str] | None = None) -> RawResponse:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        body = json.dumps(json_body).encode() if json_body is not None else b""
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}",
                 f"Content-Length: {len(body)}"]
        if json_body is not None:
            lines.append("Content-Type: application/json")
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        assert self.reader is not None
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        close = False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
            elif name.lower() == b"connection" and value.strip().lower() == b"close":
                close = True
        data = await self.reader.readexactly(length)
        if close:
            self.writer.close()
            self.writer = None
        return RawResponse(status, data)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class RawClient:
    """Adapter with the slice of httpx.AsyncClient's interface used here."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.free: list[RawConnection] = []

    async def _do(self, method: str, path: str, **kwargs: Any) -> RawResponse:
        conn = self.free.pop() if self.free else RawConnection(self.host, self.port)
        try:
            return await conn.request(method, path, json_body=kwargs.get("json"),
                                      headers=kwargs.get("headers"))
        finally:
            self.free.append(conn)

    async def get(self, path: str, **kwargs: Any) -> RawResponse:
        return await self._do("GET", path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> RawResponse:
        return await self._do("POST", path, **kwargs)

    async def __aenter__(self) -> RawClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for conn in self.free:
            conn.close()


async def run(url: str, token: str, clients: int, rounds: int, params: dict,
              kind: str = "raw") -> list[list]:
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    rows = []
    http_client: Any = RawClient(url) if kind == "raw" else httpx.AsyncClient(
        base_url=url, limits=limits, timeout=60)
    async with http_client as http:
        base: list[float] = []
        t = stopwatch()
        await asyncio.gather(*[_health_loop(http, 10, base) for _ in range(clients)])
        wall = t()
        rows.append(["GET /healthz (baseline)", len(base), len(base) / wall,
                     1000 * percentile(base, 50), 1000 * percentile(base, 99)])
        lat: dict[str, list[float]] = {"submit": [], "poll": [], "report": []}
        t = stopwatch()
        await asyncio.gather(*[_client_loop(http, token, params, rounds, lat)
                               for _ in range(clients)])
        wall = t()
        total = sum(len(v) for v in lat.values())
        for name, label in (("submit", "POST /v1/jobs"), ("poll", "GET /v1/jobs/{id}"),
                            ("report", "GET /v1/reports/{id}")):
            values = lat[name]
            rows.append([label, len(values), len(values) / wall, 1000 * percentile(values, 50),
                         1000 * percentile(values, 99)])
        rows.append(["all API calls", total, total / wall,
                     1000 * percentile(sum(lat.values(), []), 50),
                     1000 * percentile(sum(lat.values(), []), 99)])
        rows.append(["jobs completed", clients * rounds, clients * rounds / wall, "", ""])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--port", type=int, default=18089)
    parser.add_argument("--client", choices=["raw", "httpx"], default="raw")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn processes")
    parser.add_argument("--threads", type=int, default=8, help="threads per gunicorn process")
    args = parser.parse_args()
    from support import npz_bytes, trained_linear_onnx

    from appliance.client import Client

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        with live_appliance(home, port=args.port, workers=args.workers, threads=args.threads) as (url, token):
            client = Client(url, token=token)
            onnx_path, x, y = trained_linear_onnx(Path(tmp) / "m.onnx")
            model = client.upload_model(onnx_path, name="digits")
            data = Path(tmp) / "d.npz"
            data.write_bytes(npz_bytes(x=x[:64], y=y[:64]))
            dataset = client.upload_dataset(data, name="d")
            rows = asyncio.run(run(url, token, args.clients, args.rounds,
                                   {"model_id": model.id, "dataset_id": dataset.id}, args.client))
    print(table(f"API on loopback, {args.clients} concurrent clients x {args.rounds} rounds, "
                f"{args.client} load generator (gunicorn {args.workers} workers x {args.threads} threads + embedded "
                "worker, 2 cores)",
                ["call", "count", "per second", "p50 ms", "p99 ms"], rows))


if __name__ == "__main__":
    main()
