"""Shared benchmark helpers: tables, a live appliance on loopback."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def table(title: str, header: list[str], rows: list[list[Any]]) -> str:
    cells = [[str(c) for c in header]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [title, "-" * len(title)]
    for i, row in enumerate(cells):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, int(round(q / 100 * (len(ordered) - 1)))))
    return ordered[k]


@contextmanager
def live_appliance(home: Path, *, port: int, workers: int = 2, threads: int = 8,
                   extra_env: dict[str, str] | None = None) -> Any:
    from support import cli_token, env_for, serve_appliance

    env = env_for(home, APPLIANCE_RATE_LIMIT="1000000 per minute", **(extra_env or {}))
    token = cli_token(env, "bench")
    with serve_appliance(env, "--workers", str(workers), "--threads", str(threads),
                         port=port) as url:
        yield url, token


def stopwatch() -> Any:
    start = time.perf_counter()
    return lambda: time.perf_counter() - start
