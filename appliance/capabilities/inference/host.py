"""Sessions' evaluators in a child process that exits when the last session closes.

SEAL keeps what its objects free (keys, encoded weights, temporaries) in a global memory pool
that is reused but never handed back to the system, so a process that has served sessions
stays as large as its busiest moment. :class:`HostedEvaluators` keeps every evaluator in one
child process instead (``python -m appliance.capabilities.inference.host``) and stops it a
short grace period after its last session is dropped: the API process never holds a SEAL
object, and its memory after the sessions close is what it was before they opened. The next
session (or a query on a session whose evaluator is gone) starts a fresh child, which
rebuilds evaluators from the stored key blobs, as another gunicorn process would. A crash of
the child (a SEAL abort on hostile input, the OOM killer) costs one request a 503, not the
server.

    evaluators = HostedEvaluators(blobs=settings.blob_dir, tmp_dir=settings.tmp_dir)
    evaluators.open(store.blobs, ensemble_row, session_id, keys, layout)  # 422 if refused
    replies = evaluators.evaluate(store.blobs, ensemble_row, session_row, [ciphertext])

The parent and the child talk over a Unix socket in a private directory (mode 0700) with
``multiprocessing.connection``'s HMAC handshake under a random key the child reads from its
stdin (never argv or the environment). Messages are a JSON header and raw byte frames:
nothing is unpickled. The child also exits when its stdin closes, so it never outlives the
API process.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import weakref
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import Any

from appliance._internal.store import BlobStore
from appliance.capabilities.inference.service import (
    DEFAULT_CACHE_SIZE,
    MAX_CONTEXT_BYTES,
    MAX_DEEP_CONTEXT_BYTES,
    MAX_WIDE_BYTES,
    EvaluatorCache,
)
from appliance.errors import (
    ApplianceError,
    Conflict,
    Error,
    Gone,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    UnprocessableInput,
    ValidationFailed,
)

__all__ = ["HostedEvaluators"]

log = logging.getLogger(__name__)

#: Errors the child may report, re-raised as themselves in the API process.
_ERRORS: dict[str, type[ApplianceError]] = {
    cls.__name__: cls
    for cls in (Conflict, Gone, NotFound, PayloadTooLarge, UnprocessableInput, ValidationFailed)
}
#: Largest frame either side accepts (the largest key upload, with room for its header).
_MAX_FRAME = max(MAX_CONTEXT_BYTES, MAX_DEEP_CONTEXT_BYTES, MAX_WIDE_BYTES) + (1 << 20)
#: Rows' fields the child needs (never the spec's weights: they are read from the blobs).
_ENSEMBLE_FIELDS = ("id", "json_digest", "tensors_digest")
_SESSION_FIELDS = ("id", "keys_digest", "layout")


class HostedEvaluators:
    """:class:`~appliance.capabilities.inference.service.Evaluators` in a child process.

    ``idle_seconds``: how long the child stays after its last session is dropped (a client
    that closes one session and opens the next does not pay a restart); 0 stops it at once.
    ``builds`` and ``starts`` count evaluators built and children started (observability).
    """

    def __init__(self, *, blobs: Path, tmp_dir: Path, capacity: int = DEFAULT_CACHE_SIZE,
                 idle_seconds: float = 5.0, start_timeout: float = 120.0) -> None:
        self.blobs, self.tmp_dir = Path(blobs), Path(tmp_dir)
        self.capacity = capacity
        self.idle_seconds = idle_seconds
        self.start_timeout = start_timeout
        self.builds = 0
        self.starts = 0
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._owner = os.getpid()  # a forked copy of this object must not stop its parent's child
        self._folder: str | None = None
        self._address = ""
        self._authkey = b""
        self._inflight = 0
        self._live = 0
        self._seq = -1  # the child's counter on the reply that set _live (replies may cross)
        self._timer: threading.Timer | None = None
        self._finalizer: weakref.finalize[..., Any] | None = None

    # -- the Evaluators protocol ------------------------------------------------------------
    def open(self, blobs: BlobStore, ensemble: dict[str, Any], session_id: str, keys: bytes,
             layout: str) -> None:
        self._call("open", {"ensemble": _fields(ensemble, _ENSEMBLE_FIELDS), "session_id": session_id,
                            "layout": layout}, [keys])

    def evaluate(self, blobs: BlobStore, ensemble: dict[str, Any], session: dict[str, Any],
                 queries: list[bytes]) -> list[bytes]:
        return self._call("evaluate", {"ensemble": _fields(ensemble, _ENSEMBLE_FIELDS),
                                       "session": _fields(session, _SESSION_FIELDS)}, queries)

    def evaluate_wide(self, blobs: BlobStore, ensemble: dict[str, Any], session: dict[str, Any],
                      body: bytes) -> bytes:
        return self._call("evaluate_wide", {"ensemble": _fields(ensemble, _ENSEMBLE_FIELDS),
                                            "session": _fields(session, _SESSION_FIELDS)}, [body])[0]

    def drop(self, ensemble_id: str, session_id: str) -> None:
        with self._lock:
            running = self._proc is not None and self._proc.poll() is None
        if running:
            self._call("drop", {"ensemble_id": ensemble_id, "session_id": session_id}, [])

    def clear(self) -> None:
        """Stop the child now (its evaluators with it)."""
        with self._lock:
            self._stop_locked()

    def __len__(self) -> int:
        """Evaluators the child held after the last call (0 when it is not running)."""
        return self._live

    @property
    def pid(self) -> int | None:
        """The child's process id while it runs."""
        with self._lock:
            return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    # -- the child's lifecycle ----------------------------------------------------------------
    def _call(self, op: str, header: dict[str, Any], frames: list[bytes]) -> list[bytes]:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._start_locked()
            self._inflight += 1
            address, authkey = self._address, self._authkey
        reply: dict[str, Any] = {}
        try:
            try:
                with Client(address, family="AF_UNIX", authkey=authkey) as conn:
                    _send(conn, {"op": op, **header}, frames)
                    reply, out = _receive(conn)
            except (OSError, EOFError, AuthenticationError) as exc:
                with self._lock:
                    self._stop_locked()
                log.error("private inference: the evaluator process stopped during %s (%s)", op, type(exc).__name__)
                raise ServiceUnavailable(
                    "the private-inference evaluator stopped while serving this request",
                    hint="retry; the session's evaluator is rebuilt from its stored keys") from None
        finally:
            with self._lock:
                self._inflight -= 1
                if reply:
                    self.builds += int(reply.get("built", 0))
                    if int(reply.get("seq", 0)) > self._seq:
                        self._live, self._seq = int(reply.get("live", self._live)), int(reply.get("seq", 0))
                if self._live == 0 and self._inflight == 0:
                    self._stop_later_locked()
        error = reply.get("error")
        if error is not None:
            cls = _ERRORS.get(str(error.get("type")))
            if cls is None:
                raise ApplianceError("the private-inference evaluator failed on this request")
            raise cls(str(error.get("detail", "")), hint=error.get("hint") or None)
        return out

    def _start_locked(self) -> None:
        if self._owner != os.getpid():  # inherited through fork: the child is the parent's
            if self._finalizer is not None:
                self._finalizer.detach()
            self._proc, self._folder, self._timer, self._finalizer = None, None, None, None
            self._owner = os.getpid()
        if self._proc is not None and self._proc.poll() is None:
            return
        self._stop_locked()
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self._folder = tempfile.mkdtemp(prefix="he-host-", dir=self.tmp_dir)
        os.chmod(self._folder, 0o700)
        self._address = os.path.join(self._folder, "socket")
        self._authkey = secrets.token_bytes(32)
        config = {"address": self._address, "authkey": self._authkey.hex(), "blobs": str(self.blobs),
                  "tmp_dir": str(self.tmp_dir), "capacity": self.capacity}
        proc = subprocess.Popen(  # noqa: S603 - our own module, fixed arguments
            [sys.executable, "-m", "appliance.capabilities.inference.host"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True)
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(json.dumps(config).encode() + b"\n")
            proc.stdin.flush()
            ready = _readline(proc.stdout, self.start_timeout)
        except (OSError, TimeoutError):
            ready = b""
        if ready.strip() != b"ready":
            proc.kill()
            proc.wait()
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None
            raise ServiceUnavailable("the private-inference evaluator process did not start",
                                     hint="see the server log; retry")
        self._proc = proc
        self._live, self._seq = 0, -1
        self.starts += 1
        # an instance dropped with sessions still open (a discarded app) stops its child too
        self._finalizer = weakref.finalize(self, _reap, proc, self._folder, os.getpid())

    def _stop_later_locked(self) -> None:
        if self._proc is None:
            return
        if self.idle_seconds <= 0:
            self._stop_locked()
            return
        timer = threading.Timer(self.idle_seconds, self._stop_if_idle)
        timer.daemon = True
        self._timer = timer
        timer.start()

    def _stop_if_idle(self) -> None:
        with self._lock:
            if self._live == 0 and self._inflight == 0 and self._timer is not None:
                self._timer = None
                self._stop_locked()

    def _stop_locked(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        _reap(self._proc, self._folder, self._owner)
        self._proc, self._folder = None, None
        self._live = 0


def _reap(proc: subprocess.Popen[bytes] | None, folder: str | None, owner: int | None = None) -> None:
    """Stop the child (it exits on end of input; killed if it does not within 10 s) and
    remove its socket folder; in a forked copy of the ``owner`` process, leave both alone."""
    if owner is not None and owner != os.getpid():
        return
    if proc is not None:
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.close()
            proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
        proc.stdout.close()
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


def _fields(row: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    return {name: row[name] for name in names}


def _send(conn: Connection, header: dict[str, Any], frames: list[bytes]) -> None:
    conn.send_bytes(json.dumps({**header, "frames": len(frames)}).encode())
    for frame in frames:
        conn.send_bytes(frame)


def _receive(conn: Connection) -> tuple[dict[str, Any], list[bytes]]:
    header = json.loads(conn.recv_bytes(1 << 20))
    count = int(header.get("frames", 0))
    return header, [conn.recv_bytes(_MAX_FRAME) for _ in range(count)]


def _readline(stream: Any, timeout: float) -> bytes:
    """One line from ``stream`` within ``timeout`` seconds (``TimeoutError`` otherwise)."""
    out: list[bytes] = []
    reader = threading.Thread(target=lambda: out.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if not out:
        raise TimeoutError("no answer")
    return out[0]


# -- the child ------------------------------------------------------------------------------
_replies = threading.Lock()
_counter = [0]


def _serve(conn: Connection, cache: EvaluatorCache, blobs: BlobStore) -> None:
    with conn:
        try:
            header, frames = _receive(conn)
        except (OSError, EOFError, ValueError):
            return
        reply: dict[str, Any] = {}
        out: list[bytes] = []
        builds = cache.builds
        try:
            op = header.get("op")
            if op == "open":
                cache.open(blobs, header["ensemble"], str(header["session_id"]), frames[0],
                           str(header["layout"]))
            elif op == "evaluate":
                out = cache.evaluate(blobs, header["ensemble"], header["session"], frames)
            elif op == "evaluate_wide":
                out = [cache.evaluate_wide(blobs, header["ensemble"], header["session"], frames[0])]
            elif op == "drop":
                cache.drop(str(header["ensemble_id"]), str(header["session_id"]))
            else:
                raise ValidationFailed(f"unknown operation {op!r}")
        except ApplianceError as exc:
            reply["error"] = {"type": type(exc).__name__, "detail": exc.detail, "hint": exc.hint}
        except Error as exc:  # a library's refusal of the caller's input: a 422, as the app maps it
            reply["error"] = {"type": "UnprocessableInput", "detail": exc.detail, "hint": exc.hint}
        except Exception as exc:  # reported as a 500 by the API process; never its contents
            log.error("private inference: %s failed in the evaluator process: %s", header.get("op"),
                      type(exc).__name__)
            reply["error"] = {"type": "internal"}
        with _replies:  # the count of live evaluators and its sequence number go together
            _counter[0] += 1
            reply.update(live=len(cache), built=cache.builds - builds, seq=_counter[0])
        try:
            _send(conn, reply, out)
        except (OSError, EOFError):
            return


def main() -> None:
    """The child: read the configuration line, listen, serve until stdin closes."""
    config = json.loads(sys.stdin.buffer.readline())
    blobs = BlobStore(root=Path(config["blobs"]), tmp_dir=Path(config["tmp_dir"]))
    cache = EvaluatorCache(capacity=int(config["capacity"]))
    listener = Listener(config["address"], family="AF_UNIX", authkey=bytes.fromhex(config["authkey"]))

    def exit_on_end_of_input() -> None:
        while sys.stdin.buffer.read(1 << 12):
            pass
        os._exit(0)

    threading.Thread(target=exit_on_end_of_input, daemon=True).start()
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while True:
        try:
            conn = listener.accept()
        except (OSError, EOFError, ValueError, AuthenticationError):  # a failed handshake: not our parent
            continue
        threading.Thread(target=_serve, args=(conn, cache, blobs), daemon=True).start()


if __name__ == "__main__":
    main()
