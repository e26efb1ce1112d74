"""Thin HTTP layer: one decorator declares an operation's route, request and response models;
the same declarations validate requests and generate the OpenAPI 3.1 document."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, Response, current_app, g, request
from pydantic import BaseModel, ValidationError

from appliance.errors import ApplianceError, BadRequest, PayloadTooLarge, UnsupportedMediaType, ValidationFailed
from appliance.schemas import Problem

PROBLEM_TYPE = "application/problem+json"


def problem_response(error: ApplianceError, instance: str | None = None) -> Response:
    if instance is not None and len(instance) > 512:
        instance = instance[:512] + "…"
    body = error.problem(instance)
    rid = getattr(g, "request_id", None) if _has_app_ctx() else None
    if rid:
        body["request_id"] = rid
    resp = Response(json.dumps(body), status=error.status, mimetype=PROBLEM_TYPE)
    if error.status == 401:
        resp.headers["WWW-Authenticate"] = 'Bearer realm="audit-appliance"'
    return resp


def _has_app_ctx() -> bool:
    from flask import has_app_context

    return has_app_context()


def validation_problem(exc: ValidationError, what: str) -> ValidationFailed:
    errors = json.loads(exc.json(include_url=False, include_input=False, include_context=False))
    return ValidationFailed(f"invalid {what}", errors=errors)


def json_body(model: type[BaseModel]) -> BaseModel:
    mimetype = request.mimetype or ""
    if mimetype != "application/json" and not mimetype.endswith("+json"):
        raise UnsupportedMediaType(f"expected application/json, got {mimetype or 'nothing'}")
    limit = current_app.config["APPLIANCE_SETTINGS"].max_json_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"JSON bodies are limited to {limit} bytes")
    # read at most limit+1 bytes: a chunked body without Content-Length must not be buffered
    # whole (up to the upload limit) before the JSON limit is applied
    raw = read_bounded(request.stream, limit + 1)
    if len(raw) > limit:
        raise PayloadTooLarge(f"JSON bodies are limited to {limit} bytes")
    data = parse_json_text(raw, "JSON body")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_problem(exc, "request body") from None


def read_bounded(stream: Any, limit: int) -> bytes:
    """Read until EOF or ``limit`` bytes (raw streams may return short reads)."""
    parts: list[bytes] = []
    got = 0
    while got < limit:
        chunk = stream.read(min(limit - got, 1 << 16))
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def parse_json_text(raw: bytes | str, what: str) -> Any:
    """Parse untrusted JSON; malformed, non-UTF-8 or absurdly nested input is a 400."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        return json.loads(text)
    except RecursionError:
        raise BadRequest(f"malformed {what}: nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest(f"malformed {what}: {exc}") from None


def query_params(model: type[BaseModel]) -> BaseModel:
    raw = {k: v for k, v in request.args.items()}
    if len(request.args) != len(request.args.to_dict(flat=False)) or any(
        len(v) > 1 for v in request.args.to_dict(flat=False).values()
    ):
        raise BadRequest("repeated query parameters are not accepted")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise validation_problem(exc, "query parameters") from None


@dataclass
class Operation:
    rule: str
    method: str
    summary: str
    tag: str
    body: type[BaseModel] | None
    form: type[BaseModel] | None
    query: type[BaseModel] | None
    response: type[BaseModel] | None
    status: int
    auth: bool
    produces: str = "application/json"
    errors: tuple[int, ...] = ()
    hidden: bool = False
    extra_responses: dict[int, str] = field(default_factory=dict)
    raw_body: str | None = None


class Api:
    """Collects operations for the OpenAPI document."""

    def __init__(self) -> None:
        self.operations: list[Operation] = []

    def op(
        self,
        bp: Blueprint,
        rule: str,
        method: str = "GET",
        *,
        summary: str,
        tag: str,
        body: type[BaseModel] | None = None,
        form: type[BaseModel] | None = None,
        query: type[BaseModel] | None = None,
        response: type[BaseModel] | None = None,
        status: int = 200,
        auth: bool = True,
        produces: str = "application/json",
        errors: tuple[int, ...] = (),
        hidden: bool = False,
        raw_body: str | None = None,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Declare an operation. ``raw_body`` (a media type such as
        ``application/octet-stream``) documents a binary request body that the view reads
        itself (bounded) from ``request.stream``."""
        def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
            def view(**path_args: Any) -> Any:
                kwargs: dict[str, Any] = dict(path_args)
                if body is not None:
                    kwargs["body"] = json_body(body)
                if query is not None:
                    kwargs["query"] = query_params(query)
                result = fn(**kwargs)
                if isinstance(result, Response):
                    return result
                if response is not None:
                    payload = response.model_validate(result).model_dump(mode="json")
                else:
                    payload = result
                return Response(json.dumps(payload), status=status, mimetype="application/json")

            functools.update_wrapper(view, fn)
            bp.add_url_rule(rule, endpoint=fn.__name__, view_func=view, methods=[method])
            full = (bp.url_prefix or "") + rule
            view._public = not auth  # type: ignore[attr-defined]
            self.operations.append(
                Operation(rule=full, method=method, summary=summary, tag=tag, body=body,
                          form=form, query=query, response=response, status=status, auth=auth,
                          produces=produces, errors=errors, hidden=hidden, raw_body=raw_body)
            )
            return view

        return decorate

    # -- OpenAPI -------------------------------------------------------------------------------
    def openapi(self, *, title: str, version: str) -> dict[str, Any]:
        components: dict[str, Any] = {}

        def ref(model: type[BaseModel]) -> dict[str, Any]:
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            for name, sub in schema.pop("$defs", {}).items():
                components[name] = sub
            components[model.__name__] = schema
            return {"$ref": f"#/components/schemas/{model.__name__}"}

        ref(Problem)
        paths: dict[str, Any] = {}
        for op in self.operations:
            if op.hidden:
                continue
            path, params = _openapi_path(op.rule)
            operation: dict[str, Any] = {
                "summary": op.summary,
                "operationId": _operation_id(op.method, path),
                "tags": [op.tag],
                "parameters": params,
                "responses": {},
            }
            if op.query is not None:
                schema = op.query.model_json_schema()
                required = set(schema.get("required", []))
                for name, prop in schema.get("properties", {}).items():
                    prop = {k: v for k, v in prop.items() if k != "title"}
                    operation["parameters"].append(
                        {"name": name, "in": "query", "required": name in required,
                         "schema": prop}
                    )
            if op.body is not None:
                operation["requestBody"] = {
                    "required": True,
                    "content": {"application/json": {"schema": ref(op.body)}},
                }
            if op.form is not None:
                operation["requestBody"] = {
                    "required": True,
                    "content": {"multipart/form-data": {"schema": ref(op.form)}},
                }
            if op.raw_body is not None:
                operation["requestBody"] = {
                    "required": True,
                    "content": {op.raw_body: {"schema": {"type": "string", "format": "binary"}}},
                }
            success: dict[str, Any] = {"description": "success"}
            if op.response is not None:
                success["content"] = {op.produces: {"schema": ref(op.response)}}
            elif op.produces != "application/json":
                success["content"] = {op.produces: {"schema": {"type": "string"}}}
            operation["responses"][str(op.status)] = success
            codes = set(op.errors) | {400, 404, 405, 429}
            if op.auth:
                codes |= {401, 403}
                operation["security"] = [{"bearer": []}]
            else:
                operation["security"] = []
            if op.body is not None or op.form is not None or op.raw_body is not None:
                codes |= {413, 415, 422}
            if op.query is not None:
                codes |= {422}
            for code in sorted(codes):
                operation["responses"][str(code)] = {
                    "description": "problem",
                    "content": {PROBLEM_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
                }
            paths.setdefault(path, {})[op.method.lower()] = operation
        return {
            "openapi": "3.1.0",
            "info": {"title": title, "version": version},
            "paths": paths,
            "components": {
                "schemas": components,
                "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            },
        }


def _operation_id(method: str, path: str) -> str:
    import re

    return method.lower() + "_" + re.sub(r"[^A-Za-z0-9]+", "_", path).strip("_")


def _openapi_path(rule: str) -> tuple[str, list[dict[str, Any]]]:
    import re

    params: list[dict[str, Any]] = []

    def repl(match: re.Match[str]) -> str:
        name = match.group(2)
        params.append({"name": name, "in": "path", "required": True,
                       "schema": {"type": "string", "maxLength": 64}})
        return "{" + name + "}"

    return re.sub(r"<(?:(\w+):)?(\w+)>", repl, rule), params
