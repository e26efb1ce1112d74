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

from .errors import (
    ApplianceError,
    BadRequest,
    PayloadTooLarge,
    UnsupportedMediaType,
    ValidationFailed,
)
from .schemas import Problem

PROBLEM_TYPE = "application/problem+json"


def problem_response(error: ApplianceError, instance: str | None = None) -> Response:
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
    raw = request.get_data(cache=True)
    if len(raw) > limit:
        raise PayloadTooLarge(f"JSON bodies are limited to {limit} bytes")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest(f"malformed JSON body: {exc}") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_problem(exc, "request body") from None


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
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
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
                          produces=produces, errors=errors, hidden=hidden)
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
                "operationId": f"{op.method.lower()}_{path.strip('/').replace('/', '_').replace('{', '').replace('}', '').replace('.', '_').replace('-', '_')}",
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
            if op.body is not None or op.form is not None:
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


def _openapi_path(rule: str) -> tuple[str, list[dict[str, Any]]]:
    import re

    params: list[dict[str, Any]] = []

    def repl(match: re.Match[str]) -> str:
        name = match.group(2)
        params.append({"name": name, "in": "path", "required": True,
                       "schema": {"type": "string", "maxLength": 64}})
        return "{" + name + "}"

    return re.sub(r"<(?:(\w+):)?(\w+)>", repl, rule), params
