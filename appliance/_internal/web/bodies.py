"""Request bodies the application answered without reading: drained if within a bound (and
the caller was authenticated and allowed), else the connection is closed with
``Connection: close`` announced.

An early answer (404, 415, 413, 422 before the body was read) would otherwise go out with
``Connection: keep-alive``; the server then discards the unread bytes only up to a small bound
and drops the connection, and a client that sends its next request on it sees a reset.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

#: Unread bytes read and discarded so the connection can stay open; beyond this it closes.
#: As large as the largest body a client may legitimately send and see answered early (a wide
#: private-inference batch to an expired session), so clients that read the answer only after
#: sending everything (httpx, requests) get it; larger bodies are refused with a close.
DRAIN_LIMIT = 64 << 20
_BLOCK = 64 * 1024

StartResponse = Callable[..., Any]
_NO_DRAIN = ("401", "403", "413")


class _CountingInput:
    """``wsgi.input`` that counts what the application read and notices the end of a body."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.consumed = 0
        self.at_eof = False

    def _seen(self, data: bytes, size: int | None) -> bytes:
        self.consumed += len(data)
        if not data and size != 0:
            self.at_eof = True
        return data

    def read(self, size: int | None = -1) -> bytes:
        return self._seen(self._inner.read(size) if size not in (None, -1) else self._inner.read(),
                          size)

    def readline(self, size: int | None = -1) -> bytes:
        data = self._inner.readline(size) if size not in (None, -1) else self._inner.readline()
        return self._seen(data, size)

    def readlines(self, hint: int = -1) -> list[bytes]:
        lines = self._inner.readlines(hint)
        for line in lines:
            self._seen(line, None)
        return list(lines)

    def __iter__(self) -> Iterator[bytes]:
        while True:
            line = self.readline()
            if not line:
                return
            yield line

    def finished(self, length: int | None) -> bool:
        return self.at_eof or (length is not None and self.consumed >= length)

    def drain(self, length: int | None, limit: int) -> bool:
        """Read and discard the rest of the body if it is at most ``limit`` bytes."""
        if length is not None and length - self.consumed > limit:
            return False
        budget = limit
        while not self.finished(length) and budget >= 0:
            want = _BLOCK if length is None else min(_BLOCK, length - self.consumed)
            try:
                data = self.read(want)
            except (OSError, ValueError):
                return False
            budget -= len(data)
            if not data:
                break
        return self.finished(length) and budget >= 0


def _content_length(environ: dict[str, Any]) -> int | None:
    raw = environ.get("CONTENT_LENGTH") or ""
    try:
        value = int(raw)
    except ValueError:
        return None
    return value if value >= 0 else None


class UnreadBodyGuard:
    """WSGI middleware: after the application answers, a request body it left unread is
    drained (up to ``drain_limit`` bytes) or the connection is marked to close, both in the
    headers (``Connection: close``) and, under gunicorn, in the server's own keep-alive state."""

    def __init__(self, app: Callable[[dict[str, Any], StartResponse], Iterable[bytes]], *,
                 drain_limit: int = DRAIN_LIMIT) -> None:
        self.app = app
        self.drain_limit = drain_limit

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        length = _content_length(environ)
        chunked = "chunked" in str(environ.get("HTTP_TRANSFER_ENCODING", "")).lower()
        if not length and not chunked:
            return self.app(environ, start_response)
        body = _CountingInput(environ["wsgi.input"])
        environ["wsgi.input"] = body
        limit = self.drain_limit

        def guarded(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            # Unauthenticated, forbidden and oversize requests get no reading at all.
            budget = 0 if status[:3] in _NO_DRAIN else limit
            known = length if not chunked else None
            if not body.finished(known) and (not budget or not body.drain(known, budget)):
                headers = [(k, v) for k, v in headers if k.lower() != "connection"]
                headers.append(("Connection", "close"))
                server_response = getattr(start_response, "__self__", None)
                force_close = getattr(server_response, "force_close", None)
                if callable(force_close):  # gunicorn ignores an application's Connection header
                    force_close()
            return start_response(status, headers, exc_info)

        return self.app(environ, guarded)
