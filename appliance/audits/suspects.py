"""Black-box query plumbing: validated, counted query functions and remote HTTP suspects.

A suspect is only ever a function of a batch of inputs:

* ``EmbedFn``: ``x [n, ...] -> embeddings [n, d]`` (finite floats);
* ``PredictFn``: ``x -> class probabilities [n, C]`` (rows in [0, 1] summing to 1);
* ``LabelFn``: ``x -> integer labels [n]``.

:class:`RemoteEndpoint` is such a function backed by an HTTP URL::

    suspect = RemoteEndpoint("http://host/embed", kind="embed", timeout_s=5, query_budget=50_000)
    emb = suspect(x)            # POST {"inputs": x.tolist()} -> {"outputs": [[...], ...]}
    suspect.queries             # inputs sent so far

The endpoint's host is resolved and checked once, when the endpoint is built, by an
:class:`~appliance.audits.egress.EgressGuard` (public addresses only by default); every
request then goes to that checked address. Errors name the status code, never the body the
endpoint sent.

Audit methods wrap every query function in :class:`CountedQuery`, which splits batches,
validates answers and counts queries, so local and remote suspects fail the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal

import numpy as np

from appliance.audits.egress import EgressGuard
from appliance.audits.errors import (
    AuditInputError,
    QueryBudgetExceeded,
    QueryError,
    RemoteEndpointError,
    RemoteTimeoutError,
)

EmbedFn = Callable[[np.ndarray], np.ndarray]
PredictFn = Callable[[np.ndarray], np.ndarray]
LabelFn = Callable[[np.ndarray], np.ndarray]
QueryKind = Literal["embed", "proba", "label"]
_KINDS = ("embed", "proba", "label")


def check_images(name: str, x: Any, *, min_count: int = 1) -> np.ndarray:
    """Return ``x`` as a finite float32 ``[n, C, H, W]`` array or raise ``AuditInputError``."""
    if not isinstance(x, np.ndarray):
        raise AuditInputError(f"{name} must be a numpy array, got {type(x).__name__}")
    if x.ndim != 4:
        raise AuditInputError(f"{name} must have shape [n, C, H, W], got {x.shape}")
    if len(x) < min_count:
        raise AuditInputError(f"{name} has {len(x)} samples; this audit needs at least {min_count}")
    if not np.issubdtype(x.dtype, np.number):
        raise AuditInputError(f"{name} must be numeric, got dtype {x.dtype}")
    out = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(out).all():
        raise AuditInputError(f"{name} contains NaN or infinite values")
    return out


def validate_outputs(
    out: Any, *, kind: QueryKind, n: int, width: int | None = None, source: str = "suspect"
) -> np.ndarray:
    """Check a query answer for ``n`` inputs; return it as an array or raise ``QueryError``."""
    try:
        arr = np.asarray(out)
    except Exception as exc:  # ragged lists and the like
        raise QueryError(f"{source} returned an answer that is not an array: {exc}") from exc
    if kind == "label":
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim != 1 or len(arr) != n:
            raise QueryError(f"{source} returned labels of shape {arr.shape} for {n} inputs")
        if arr.dtype.kind not in "iu":
            if arr.dtype.kind != "f" or not np.isfinite(arr).all() or (arr != np.round(arr)).any():
                raise QueryError(f"{source} returned non-integer labels (dtype {arr.dtype})")
        return arr.astype(np.int64)
    if arr.dtype.kind not in "iuf" or arr.ndim != 2 or arr.shape[0] != n or arr.shape[1] == 0:
        raise QueryError(
            f"{source} returned an answer of shape {arr.shape} (dtype {arr.dtype}); expected {n} numeric rows"
        )
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise QueryError(f"{source} returned NaN or infinite values")
    if width is not None and arr.shape[1] != width:
        raise QueryError(f"{source} changed its output width from {width} to {arr.shape[1]}")
    if kind == "proba":
        if (arr < -1e-6).any() or (arr > 1 + 1e-6).any():
            raise QueryError(f"{source} returned probabilities outside [0, 1]")
        if not np.allclose(arr.sum(axis=1), 1.0, atol=1e-3):
            raise QueryError(f"{source} returned probability rows that do not sum to 1")
    return arr


class CountedQuery:
    """Wrap a query function: split into batches of ``max_batch``, validate, count, budget.

    ``queries`` is the number of inputs sent. A call that would exceed ``budget`` raises
    :class:`QueryBudgetExceeded` before sending anything. Any exception of the wrapped
    function other than an ``AuditError`` becomes a :class:`QueryError`.
    """

    def __init__(
        self,
        fn: Callable[[np.ndarray], Any],
        *,
        kind: QueryKind,
        name: str = "suspect",
        budget: int | None = None,
        max_batch: int = 4096,
    ) -> None:
        if not callable(fn):
            raise AuditInputError(f"{name} must be a callable query function")
        if kind not in _KINDS:
            raise AuditInputError(f"kind must be one of {_KINDS}, got {kind!r}")
        if max_batch <= 0:
            raise AuditInputError("max_batch must be positive")
        self.fn, self.kind, self.name = fn, kind, name
        self.budget, self.max_batch = budget, max_batch
        self.queries = 0
        self.seconds = 0.0
        self.width: int | None = None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        n = len(x)
        if self.budget is not None and self.queries + n > self.budget:
            raise QueryBudgetExceeded(
                f"{self.name}: {self.queries} queries spent, {n} more would exceed the budget of {self.budget}"
            )
        parts = []
        for start in range(0, n, self.max_batch):
            chunk = x[start : start + self.max_batch]
            t0 = time.perf_counter()
            try:
                raw = self.fn(chunk)
            except QueryError:
                raise
            except Exception as exc:
                raise QueryError(f"{self.name} failed on a batch of {len(chunk)}: {exc}") from exc
            finally:
                self.seconds += time.perf_counter() - t0
            self.queries += len(chunk)
            out = validate_outputs(raw, kind=self.kind, n=len(chunk), width=self.width, source=self.name)
            if out.ndim == 2:
                self.width = out.shape[1]
            parts.append(out)
        if not parts:
            return np.zeros((0,) if self.kind == "label" else (0, self.width or 0))
        return np.concatenate(parts)


class RemoteEndpoint:
    """A suspect behind an HTTP URL, usable as an ``EmbedFn``/``PredictFn``/``LabelFn``.

    Each batch (at most ``max_batch`` inputs) is sent as ``POST url`` with JSON
    ``{"inputs": [...]}``; the answer must be JSON ``{"outputs": [...]}`` (or a bare list)
    with one row per input. Transport errors, timeouts and 5xx answers are retried
    ``retries`` times with exponential backoff; 4xx, redirects and malformed answers are not.
    ``guard`` checks the URL and pins the address (default: public addresses only); building
    the endpoint raises :class:`~appliance.audits.errors.EgressRefusedError` if it refuses.
    """

    def __init__(
        self,
        url: str,
        *,
        kind: QueryKind,
        timeout_s: float = 10.0,
        retries: int = 2,
        backoff_s: float = 0.2,
        query_budget: int | None = None,
        max_batch: int = 512,
        headers: dict[str, str] | None = None,
        guard: EgressGuard | None = None,
    ) -> None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise AuditInputError(f"endpoint URL must be http(s), got {url!r}")
        if kind not in _KINDS:
            raise AuditInputError(f"kind must be one of {_KINDS}, got {kind!r}")
        if timeout_s <= 0 or retries < 0 or max_batch <= 0:
            raise AuditInputError("timeout_s and max_batch must be positive, retries >= 0")
        if query_budget is not None and query_budget < 0:
            raise AuditInputError("query_budget must be non-negative")
        self.url, self.kind = url, kind
        self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s
        self.query_budget, self.max_batch = query_budget, max_batch
        self.queries = 0
        self.requests = 0
        self._width: int | None = None
        guard = guard or EgressGuard()
        self.target = guard.resolve(url)
        self._client = guard.client(self.target, timeout_s=timeout_s, headers=headers)

    def close(self) -> None:
        """Close the underlying HTTP connection pool."""
        self._client.close()

    def __enter__(self) -> RemoteEndpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        arr = np.asarray(x)
        if arr.ndim == 0:
            raise AuditInputError("inputs must be a batch (first axis = samples)")
        if self.query_budget is not None and self.queries + len(arr) > self.query_budget:
            raise QueryBudgetExceeded(
                f"endpoint {self.url}: {self.queries} queries spent, {len(arr)} more would "
                f"exceed the budget of {self.query_budget}"
            )
        parts = [self._post(arr[start : start + self.max_batch]) for start in range(0, len(arr), self.max_batch)]
        if not parts:
            return np.zeros((0,) if self.kind == "label" else (0, self._width or 0))
        return np.concatenate(parts)

    def _post(self, chunk: np.ndarray) -> np.ndarray:
        def attempted() -> None:
            self.requests += 1

        response = post_with_retries(self._client, self.url, {"inputs": chunk.tolist()}, retries=self.retries,
                                     backoff_s=self.backoff_s, timeout_s=self.timeout_s, on_attempt=attempted)
        self.queries += len(chunk)
        check_status(response, f"endpoint {self.url}", "the query")
        return self._decode(response, len(chunk))

    def _decode(self, response: Any, n: int) -> np.ndarray:
        try:
            body = response.json()
        except ValueError:
            raise RemoteEndpointError(f"endpoint {self.url} answered with invalid JSON") from None
        outputs = body.get("outputs") if isinstance(body, dict) else body
        if not isinstance(outputs, list):
            raise RemoteEndpointError(
                f"endpoint {self.url} answered without an 'outputs' list (got {type(outputs).__name__})"
            )
        try:
            arr = validate_outputs(
                _to_array(outputs),
                kind=self.kind,
                n=n,
                width=self._width,
                source=f"endpoint {self.url}",
            )
        except QueryError as exc:
            raise RemoteEndpointError(str(exc)) from exc
        if arr.ndim == 2:
            self._width = arr.shape[1]
        return arr


def _to_array(outputs: list[Any]) -> np.ndarray:
    try:
        arr = np.asarray(outputs, dtype=np.float64)
    except (ValueError, TypeError):  # numpy's message quotes the offending values
        raise QueryError("outputs are not a numeric array") from None
    if arr.dtype.kind == "f" and np.isfinite(arr).all() and arr.ndim == 1:
        if (arr == np.round(arr)).all():
            return arr.astype(np.int64)
    return arr



def post_with_retries(client: Any, url: str, payload: Any, *, retries: int, backoff_s: float, timeout_s: float,
                      what: str = "endpoint", on_attempt: Callable[[], None] | None = None) -> Any:
    """POST ``payload`` as JSON, retrying timeouts, transport errors and 5xx answers with
    exponential backoff; returns the first answer below 500. Errors name the URL, the status
    code or the transport error's type, never what the remote sent."""
    import httpx

    last: Exception | None = None
    timed_out = False
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff_s * 2 ** (attempt - 1))
        if on_attempt is not None:
            on_attempt()
        try:
            response = client.post(url, json=payload)
        except httpx.TimeoutException as exc:
            last, timed_out = exc, True
            continue
        except httpx.HTTPError as exc:
            last, timed_out = exc, False
            continue
        if response.status_code >= 500:
            last, timed_out = RuntimeError(f"HTTP {response.status_code}"), False
            continue
        return response
    attempts = retries + 1
    if timed_out:
        raise RemoteTimeoutError(f"{what} {url} timed out after {attempts} attempts ({timeout_s:g} s each)")
    reason = str(last) if isinstance(last, RuntimeError) else f"transport error {type(last).__name__}"
    raise RemoteEndpointError(f"{what} {url} failed after {attempts} attempts: {reason}")


def check_status(response: Any, who: str, what: str) -> None:
    """Refuse redirects and 4xx answers by status code only (the body is the remote's, and may
    be anything it chose)."""
    if 300 <= response.status_code < 400:
        raise RemoteEndpointError(
            f"{who} answered with a redirect (HTTP {response.status_code}); redirects are not followed")
    if response.status_code >= 400:
        raise RemoteEndpointError(f"{who} refused {what}: HTTP {response.status_code}")

__all__ = [
    "CountedQuery",
    "EmbedFn",
    "LabelFn",
    "PredictFn",
    "QueryKind",
    "RemoteEndpoint",
    "check_images",
    "check_status",
    "post_with_retries",
    "validate_outputs",
]
