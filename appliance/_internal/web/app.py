"""The Flask app factory.

>>> app = create_app(Settings.from_env())
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import uuid
from typing import Any

from flask import Flask, Response, g, request
from flask_limiter import Limiter
from flask_limiter.errors import RateLimitExceeded
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from werkzeug.exceptions import HTTPException

from appliance._internal.auth import authenticate
from appliance._internal.config import Settings
from appliance._internal.identity import identity_for
from appliance._internal.store import Store
from appliance._internal.web.bodies import UnreadBodyGuard
from appliance._internal.web.db import get_store
from appliance._internal.web.http import Api, problem_response
from appliance._internal.web.ratelimit import rate_key, sqlite_storage_uri
from appliance._internal.web.routes import register_core
from appliance.capabilities import register_routes
from appliance.errors import (
    ApplianceError,
    Error,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    TooManyRequests,
    Unauthorized,
    UnprocessableInput,
)

log = logging.getLogger("appliance._internal.web.http")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# werkzeug's multipart parser reads 64 KiB at a time and keeps a tail of the previous read
FORM_BUFFER_FLOOR = 256 * 1024


class JsonLogFormatter(logging.Formatter):
    """Structured logs: one JSON object per line, request id included where there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in ("request_id", "method", "path", "status", "duration_ms", "tenant"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level: str = "INFO") -> None:
    root = logging.getLogger()
    if not any(isinstance(h.formatter, JsonLogFormatter) for h in root.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(JsonLogFormatter())
        root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("huey").setLevel(logging.WARNING)


def _metrics_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


def create_app(settings: Settings | None = None, test_config: dict[str, Any] | None = None) -> Flask:
    """Build the appliance's WSGI app; all state lives in ``settings.home``."""
    settings = settings or Settings.from_env()
    settings.ensure_dirs()
    app = Flask("appliance", instance_path=str(settings.home))
    app.config.update(
        APPLIANCE_SETTINGS=settings,
        MAX_CONTENT_LENGTH=settings.max_upload_bytes + 64 * 1024,
        # werkzeug applies this to its read buffer, which also carries file parts through in
        # 64 KiB reads; text fields are held to max_json_bytes by the upload views themselves
        MAX_FORM_MEMORY_SIZE=max(settings.max_json_bytes, FORM_BUFFER_FLOOR),
        JSON_SORT_KEYS=False,
    )
    if test_config:
        app.config.update(test_config)
    configure_logging(settings.log_level)

    # migrations and keys at start-up, so the first request is not the one paying for them
    Store.open(settings).close()
    identity_for(settings)

    metrics = _metrics_registry()
    requests_total = Counter(
        "appliance_http_requests_total", "HTTP requests", ["method", "endpoint", "status"],
        registry=None if os.environ.get("PROMETHEUS_MULTIPROC_DIR") else metrics,
    )
    latency = Histogram(
        "appliance_http_request_seconds", "HTTP request latency", ["endpoint"],
        registry=None if os.environ.get("PROMETHEUS_MULTIPROC_DIR") else metrics,
    )
    app.extensions["appliance.metrics"] = metrics

    # one count for all of this appliance's processes: Redis in a cluster, else the home
    storage = settings.rate_limit_storage or (
        settings.queue_url if settings.cluster else sqlite_storage_uri(settings))
    limiter = Limiter(
        key_func=rate_key,
        app=app,
        default_limits=[settings.rate_limit],
        storage_uri=storage,
        key_prefix=f"{settings.queue_prefix}-rl",
        headers_enabled=True,
    )
    app.extensions["appliance.limiter"] = limiter

    app.wsgi_app = UnreadBodyGuard(app.wsgi_app)  # type: ignore[method-assign]
    api = Api()
    app.extensions["appliance.api"] = api
    register_core(app, api, limiter)
    register_routes(app, api, limiter)

    @app.before_request
    def _begin() -> None:
        rid = request.headers.get("X-Request-Id", "")
        g.request_id = rid if _REQUEST_ID.match(rid) else uuid.uuid4().hex
        g.started = time.perf_counter()
        view = app.view_functions.get(request.endpoint or "")
        if view is None or getattr(view, "_public", False) or request.endpoint == "static":
            return
        if "principal" not in g:  # the rate limiter may have authenticated it already
            g.principal = authenticate(get_store(), request.headers.get("Authorization"))

    @app.after_request
    def _finish(resp: Response) -> Response:
        resp.headers["X-Request-Id"] = getattr(g, "request_id", "")
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("Cache-Control", "no-store")
        duration = time.perf_counter() - getattr(g, "started", time.perf_counter())
        endpoint = request.endpoint or "unmatched"
        requests_total.labels(request.method, endpoint, str(resp.status_code)).inc()
        latency.labels(endpoint).observe(duration)
        principal = getattr(g, "principal", None)
        log.info(
            "request",
            extra={
                "request_id": g.get("request_id"), "method": request.method,
                "path": request.path, "status": resp.status_code,
                "duration_ms": round(duration * 1000, 2),
                "tenant": principal.tenant_name if principal else None,
            },
        )
        return resp

    @app.teardown_appcontext
    def _release(_exc: BaseException | None) -> None:
        store = g.pop("store", None)
        if store is not None and store.conn.in_transaction:
            store.conn.rollback()

    @app.errorhandler(ApplianceError)
    def _appliance_error(exc: ApplianceError) -> Response:
        return problem_response(exc, request.path)

    @app.errorhandler(Error)
    def _library_error(exc: Error) -> Response:
        # a library's refusal of the caller's input (a model, dataset, key or ciphertext that
        # does not parse); the service's own errors have the more specific handler above
        return problem_response(UnprocessableInput(exc.detail, hint=exc.hint), request.path)

    @app.errorhandler(RateLimitExceeded)
    def _rate_limited(exc: RateLimitExceeded) -> Response:
        if not g.get("request_id"):  # the limiter answers before _begin has run
            rid = request.headers.get("X-Request-Id", "")
            g.request_id = rid if _REQUEST_ID.match(rid) else uuid.uuid4().hex
        resp = problem_response(TooManyRequests(f"rate limit exceeded: {exc.description}"),
                                request.path)
        resp.headers["Retry-After"] = "1"
        return resp

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        code = exc.code or 500
        error: ApplianceError
        if code == 404:
            error = NotFound(f"no route for {request.path}")
        elif code == 405:
            error = MethodNotAllowed(f"{request.method} is not allowed on {request.path}")
        elif code == 413:
            length = request.content_length
            if length is not None and length > app.config["MAX_CONTENT_LENGTH"]:
                error = PayloadTooLarge(
                    f"request body exceeds the limit of {settings.max_upload_bytes} bytes "
                    "(APPLIANCE_MAX_UPLOAD_BYTES)")
            else:
                error = PayloadTooLarge(
                    "a form field exceeds the limit of "
                    f"{app.config['MAX_FORM_MEMORY_SIZE']} bytes (APPLIANCE_MAX_JSON_BYTES)")
        elif code == 401:
            error = Unauthorized(exc.description or "")
        else:
            error = ApplianceError(exc.description or exc.name)
            error.status, error.title = code, exc.name
            error.slug = exc.name.lower().replace(" ", "-")
        resp = problem_response(error, request.path)
        if code == 405 and exc.get_response().headers.get("Allow"):
            resp.headers["Allow"] = exc.get_response().headers["Allow"]
        return resp

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error", extra={"request_id": g.get("request_id")})
        return problem_response(ApplianceError("an unexpected error occurred; it was logged"),
                                request.path)

    @app.route("/metrics")
    @limiter.exempt
    def metrics_view() -> Response:
        # request counts and latencies per endpoint describe every tenant's traffic: operators
        # scrape them with an admin token (Prometheus: authorization.credentials)
        g.principal.require("admin")
        return Response(generate_latest(metrics), mimetype=CONTENT_TYPE_LATEST)

    return app
