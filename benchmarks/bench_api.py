"""API under concurrent clients on loopback: submit an evaluation job, poll it, fetch its
signed report. Prints throughput and p50/p99 latency per call; baseline: /healthz under the
same load, measured in the same run.

    python benchmarks/bench_api.py [--clients 50] [--rounds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

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


async def run(url: str, token: str, clients: int, rounds: int, params: dict) -> list[list]:
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    rows = []
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as http:
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
    args = parser.parse_args()
    from support import npz_bytes, trained_linear_onnx

    from appliance.client import Client

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        with live_appliance(home, port=args.port) as (url, token):
            client = Client(url, token=token)
            onnx_path, x, y = trained_linear_onnx(Path(tmp) / "m.onnx")
            model = client.upload_model(onnx_path, name="digits")
            data = Path(tmp) / "d.npz"
            data.write_bytes(npz_bytes(x=x[:64], y=y[:64]))
            dataset = client.upload_dataset(data, name="d")
            rows = asyncio.run(run(url, token, args.clients, args.rounds,
                                   {"model_id": model.id, "dataset_id": dataset.id}))
    print(table(f"API on loopback, {args.clients} concurrent clients x {args.rounds} rounds "
                "(gunicorn 2 workers x 8 threads + embedded worker, 2 cores)",
                ["call", "count", "per second", "p50 ms", "p99 ms"], rows))


if __name__ == "__main__":
    main()
