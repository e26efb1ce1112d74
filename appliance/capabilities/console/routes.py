"""The console's pages: server-rendered Jinja2 over the same service functions the API calls
(``register_model``, ``submit_job``, ``cancel_job``, ``report_bundle``...), behind a session
cookie instead of a Bearer header. Every page carries a strict Content-Security-Policy: scripts
and styles come only from this server's static files, never inline."""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    g,
    redirect,
    render_template,
    request,
    send_from_directory,
    url_for,
)
from flask_limiter import Limiter
from werkzeug.wrappers import Response as WebResponse

from appliance import __version__
from appliance._internal.auth import list_tenant_tokens, mint_tenant_token, parse_duration, revoke_tenant_token
from appliance._internal.identity import identity_for
from appliance._internal.jobs.kinds import job_kinds
from appliance._internal.jobs.service import cancel_job, job_view, submit_job
from appliance._internal.reports import report_body, report_bundle, report_figures
from appliance._internal.store import loads
from appliance._internal.web.db import get_enqueue, get_store
from appliance._internal.web.http import Api, parse_json_text, problem_response
from appliance.capabilities.catalog.service import dataset_view, model_view, register_dataset, register_model
from appliance.capabilities.console import service
from appliance.errors import ApplianceError, BadRequest, NotFound, Unauthorized, ValidationFailed
from crypto.errors import ProofError
from crypto.merkle import leaf_hash, verify_consistency
from models.architectures import list_architectures

HERE = Path(__file__).resolve().parent
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; font-src 'self'; form-action 'self'; base-uri 'none'; "
       "frame-ancestors 'none'")
PAGE_SIZE = 50


def _store() -> Any:
    return get_store()


def _settings() -> Any:
    return current_app.config["APPLIANCE_SETTINGS"]


def _public(view: Callable[..., Any]) -> Callable[..., Any]:
    """Console views authenticate by session themselves, so the API's Bearer check skips them."""
    view._public = True  # type: ignore[attr-defined]
    return view


def signed_in(view: Callable[..., Any]) -> Callable[..., Any]:
    """Require a live session; a form POST must also carry the session's CSRF token."""

    @functools.wraps(view)
    def wrapper(**kwargs: Any) -> Any:
        found = service.session_principal(_store(), request.cookies.get(service.SESSION_COOKIE))
        if found is None:
            if request.method == "GET" and not request.path.endswith(".json"):
                return redirect(url_for("console.login", next=request.full_path.rstrip("?")))
            raise Unauthorized("sign in to the console first")
        g.principal, g.csrf = found
        if request.method == "POST":
            service.check_csrf(g.csrf, request.form.get("csrf_token"))
        return view(**kwargs)

    return _public(wrapper)


def _safe_next(target: str | None) -> str:
    """Only a path inside the console may follow sign-in (no open redirect)."""
    if target and target.startswith("/console/") and not target.startswith("//"):
        parts = urlsplit(target)
        if not parts.scheme and not parts.netloc:
            return target
    return url_for("console.overview")


def _page(template: str, status: int = 200, **context: Any) -> WebResponse:
    return Response(render_template(template, **context), status=status, mimetype="text/html")


def register(app: Flask, api: Api, limiter: Limiter) -> None:
    """Add the console under ``/console/``, ``/`` redirecting to it, and ``/docs``."""
    bp = Blueprint("console", __name__, url_prefix="/console", template_folder="templates",
                   static_folder="static", static_url_path="/static")
    root = Blueprint("console_root", __name__)

    @bp.app_template_filter("num")
    def _num(value: Any) -> str:
        return service.format_number(value)

    @bp.app_context_processor
    def _context() -> dict[str, Any]:
        return {"principal": g.get("principal") if request.blueprint == "console" else None,
                "csrf_token": g.get("csrf", ""), "version": __version__}

    def _secure_headers(resp: Response) -> WebResponse:
        resp.headers["Content-Security-Policy"] = CSP
        resp.headers["X-Frame-Options"] = "DENY"
        resp.headers["Referrer-Policy"] = "same-origin"
        resp.headers.setdefault("Cache-Control", "no-store")
        return resp

    bp.after_request(_secure_headers)
    root.after_request(_secure_headers)

    def _error(exc: ApplianceError) -> WebResponse:
        # a page for browsers (which ask for text/html by name); for any other client the
        # same problem document as the API, so scripts and checkers see one error format
        wants_page = "text/html" in request.accept_mimetypes.values()
        if request.path.endswith(".json") or not wants_page:
            return problem_response(exc, request.path)
        return _page("error.html", status=exc.status, error=exc)

    bp.register_error_handler(ApplianceError, _error)

    # -- sign-in --------------------------------------------------------------------------------
    @root.route("/")
    @_public
    def home() -> WebResponse:
        return redirect(url_for("console.overview"))

    @bp.route("/login", methods=["GET", "POST"])
    @limiter.limit("30 per minute", methods=["POST"])
    @_public
    def login() -> WebResponse:
        import secrets

        target = _safe_next(request.values.get("next"))
        if request.method == "POST":
            service.check_csrf(request.cookies.get(service.LOGIN_CSRF_COOKIE),
                               request.form.get("csrf_token"))
            token = request.form.get("token", "")
            try:
                session_id, _csrf = service.open_session(_store(), token)
            except Unauthorized:
                csrf = secrets.token_urlsafe(32)
                resp = _page("login.html", status=401, login_csrf=csrf, next=target,
                             failed=True)
                _login_cookie(resp, csrf)
                return resp
            resp = redirect(target, code=303)
            resp.set_cookie(service.SESSION_COOKIE, session_id, max_age=service.SESSION_SECONDS,
                            httponly=True, samesite="Strict", secure=request.is_secure,
                            path="/")
            resp.delete_cookie(service.LOGIN_CSRF_COOKIE, path="/console/login")
            return resp
        csrf = secrets.token_urlsafe(32)
        resp = _page("login.html", login_csrf=csrf, next=target, failed=False)
        _login_cookie(resp, csrf)
        return resp

    def _login_cookie(resp: WebResponse, csrf: str) -> None:
        resp.set_cookie(service.LOGIN_CSRF_COOKIE, csrf, max_age=3600, httponly=True,
                        samesite="Strict", secure=request.is_secure, path="/console/login")

    @bp.route("/logout", methods=["POST"])
    @signed_in
    def logout() -> WebResponse:
        service.close_session(_store(), request.cookies.get(service.SESSION_COOKIE))
        resp = redirect(url_for("console.login"), code=303)
        resp.delete_cookie(service.SESSION_COOKIE, path="/")
        return resp

    # -- overview -------------------------------------------------------------------------------
    def _jobs(limit: int) -> list[dict[str, Any]]:
        store = _store()
        rows = store.list_owned("jobs", g.principal.tenant_id, limit=limit)
        verdicts = {}
        ids = [r["report_id"] for r in rows if r["report_id"]]
        if ids:
            marks = ",".join("?" * len(ids))
            for r in store.conn.execute(
                    f"SELECT id, verdict FROM reports WHERE tenant_id = ? AND id IN ({marks})",
                    (g.principal.tenant_id, *ids)):
                verdicts[r["id"]] = r["verdict"]
        return [{**job_view(r), "verdict": verdicts.get(r["report_id"])} for r in rows]

    @bp.route("/")
    @signed_in
    def overview() -> WebResponse:
        store = _store()
        counts = store.conn.execute(
            "SELECT kind, COUNT(*) AS n, SUM(state='succeeded') AS ok, SUM(state='failed') AS bad,"
            " SUM(state IN ('queued','running')) AS live FROM jobs WHERE tenant_id = ? "
            "GROUP BY kind ORDER BY kind", (g.principal.tenant_id,)).fetchall()
        totals = {table: store.conn.execute(
            f"SELECT COUNT(*) FROM {table} WHERE tenant_id = ?",  # noqa: S608 (fixed names)
            (g.principal.tenant_id,)).fetchone()[0] for table in ("models", "datasets", "reports")}
        return _page("overview.html", jobs=_jobs(15), counts=[dict(r) for r in counts],
                     totals=totals)

    # -- models and datasets --------------------------------------------------------------------
    def _jobs_using(object_id: str) -> list[dict[str, Any]]:
        rows = _store().conn.execute(
            "SELECT * FROM jobs WHERE tenant_id = ? AND (params LIKE ? OR inputs LIKE ?) "
            "ORDER BY created_at DESC LIMIT 50",
            (g.principal.tenant_id, f'%"{object_id}"%', f'%"{object_id}"%')).fetchall()
        return [job_view(dict(r)) for r in rows]

    @bp.route("/models", methods=["GET", "POST"])
    @signed_in
    def models() -> WebResponse:
        error = None
        if request.method == "POST":
            upload = request.files.get("file")
            try:
                if upload is None or not upload.filename:
                    raise ValidationFailed("choose a model file to upload")
                config = None
                if request.form.get("config", "").strip():
                    config = parse_json_text(request.form["config"], "'config' (a JSON object)")
                    if not isinstance(config, dict):
                        raise BadRequest("'config' must be a JSON object")
                row = register_model(
                    _store(), g.principal, stream=upload.stream, filename=upload.filename,
                    name=request.form.get("name", ""),
                    declared_format=request.form.get("format") or None,
                    kind=request.form.get("kind") or None,
                    architecture=request.form.get("architecture") or None, config=config)
                return redirect(url_for("console.model_detail", model_id=row["id"]), code=303)
            except ApplianceError as exc:
                if exc.status in (401, 403):
                    raise
                error = exc
        rows = _store().list_owned("models", g.principal.tenant_id, limit=PAGE_SIZE)
        return _page("models.html", status=error.status if error else 200,
                     items=[model_view(r) for r in rows], error=error, form=request.form,
                     architectures=list_architectures())

    @bp.route("/models/<model_id>")
    @signed_in
    def model_detail(model_id: str) -> WebResponse:
        row = _store().get_owned("models", g.principal.tenant_id, model_id, "model")
        manifest = loads(row["manifest"])
        statement = json.loads(base64.b64decode(manifest["payload"])) if manifest else None
        return _page("model.html", model=model_view(row), manifest=manifest,
                     statement=statement, jobs=_jobs_using(model_id),
                     signer=identity_for(_settings()).key_id)

    @bp.route("/datasets", methods=["GET", "POST"])
    @signed_in
    def datasets() -> WebResponse:
        error = None
        if request.method == "POST":
            upload = request.files.get("file")
            try:
                if upload is None or not upload.filename:
                    raise ValidationFailed("choose an .npz file to upload")
                row = register_dataset(_store(), g.principal, stream=upload.stream,
                                       name=request.form.get("name", ""))
                return redirect(url_for("console.dataset_detail", dataset_id=row["id"]),
                                code=303)
            except ApplianceError as exc:
                if exc.status in (401, 403):
                    raise
                error = exc
        rows = _store().list_owned("datasets", g.principal.tenant_id, limit=PAGE_SIZE)
        return _page("datasets.html", status=error.status if error else 200,
                     items=[dataset_view(r) for r in rows], error=error, form=request.form)

    @bp.route("/datasets/<dataset_id>")
    @signed_in
    def dataset_detail(dataset_id: str) -> WebResponse:
        row = _store().get_owned("datasets", g.principal.tenant_id, dataset_id, "dataset")
        return _page("dataset.html", dataset=dataset_view(row), meta=loads(row["meta"]),
                     jobs=_jobs_using(dataset_id))

    # -- new audit ------------------------------------------------------------------------------
    def _may_start(kind: Any) -> bool:
        return bool(g.principal.role in kind.roles)

    @bp.route("/audits/new")
    @signed_in
    def new_audit() -> WebResponse:
        kinds = sorted(job_kinds().values(), key=lambda k: k.name)
        return _page("new_audit.html", kinds=[(k, _may_start(k)) for k in kinds])

    @bp.route("/audits/new/<kind_name>", methods=["GET", "POST"])
    @signed_in
    def audit_form(kind_name: str) -> WebResponse:
        kind = job_kinds().get(kind_name)
        if kind is None:
            raise NotFound(f"job kind {kind_name!r} not found")
        fields = service.form_fields(kind.params_model.model_json_schema())
        errors: list[str] = []
        status = 200
        if request.method == "POST":
            service.fill_values(fields, request.form)
            try:
                params = service.params_from_form(fields, request.form)
                job = submit_job(_store(), g.principal, kind_name, params, get_enqueue())
                return redirect(url_for("console.job_detail", job_id=job["id"]), code=303)
            except ApplianceError as exc:
                if exc.status in (401, 403):
                    raise
                status = exc.status
                errors.append(exc.detail)
                for item in exc.extra.get("errors", []):
                    where = ".".join(str(p) for p in item.get("loc", ()))
                    errors.append(f"{where}: {item.get('msg')}" if where else str(item.get("msg")))
        store = _store()
        return _page(
            "audit_form.html", status=status, kind=kind, fields=fields, errors=errors,
            allowed=_may_start(kind),
            models=[model_view(r) for r in store.list_owned("models", g.principal.tenant_id)],
            datasets=[dataset_view(r) for r in store.list_owned("datasets",
                                                                  g.principal.tenant_id)])

    # -- jobs -----------------------------------------------------------------------------------
    @bp.route("/tokens", methods=["GET", "POST"])
    @signed_in
    def tokens() -> WebResponse:
        """Tenant admins mint client and auditor tokens (shown once) and see their tenant's."""
        store = _store()
        error, issued = None, None
        if request.method == "POST":
            try:
                label = request.form.get("label", "").strip()[:128] or None
                lifetime = parse_duration(request.form.get("expires_in", "").strip() or "30d")
                issued = mint_tenant_token(store, g.principal, role=request.form.get("role", ""),
                                           label=label, expires_in=lifetime)
            except ApplianceError as exc:
                if exc.status == 401:
                    raise
                error = exc
        items = list_tenant_tokens(store, g.principal)
        return _page("tokens.html", status=error.status if error else 200, items=items,
                     issued=issued, error=error, form=request.form)

    @bp.route("/tokens/<token_id>/revoke", methods=["POST"])
    @signed_in
    def token_revoke(token_id: str) -> WebResponse:
        revoke_tenant_token(_store(), g.principal, token_id)
        return redirect(url_for("console.tokens"), code=303)

    @bp.route("/jobs")
    @signed_in
    def jobs() -> WebResponse:
        return _page("jobs.html", jobs=_jobs(PAGE_SIZE))

    @bp.route("/jobs/<job_id>")
    @signed_in
    def job_detail(job_id: str) -> WebResponse:
        store = _store()
        job = job_view(store.get_owned("jobs", g.principal.tenant_id, job_id, "job"))
        logs = store.job_logs(job_id, limit=1000)
        return _page("job.html", job=job, logs=logs,
                     params=service.flatten(job["params"]),
                     last_log=logs[-1]["id"] if logs else 0)

    @bp.route("/jobs/<job_id>/status.json")
    @signed_in
    def job_status(job_id: str) -> WebResponse:
        store = _store()
        job = job_view(store.get_owned("jobs", g.principal.tenant_id, job_id, "job"))
        try:
            after = max(0, int(request.args.get("after", "0")))
        except ValueError:
            raise BadRequest("'after' must be an integer") from None
        body = {"state": job["state"], "progress": job["progress"], "error": job["error"],
                "report_id": job["report_id"],
                "report_url": url_for("console.report", report_id=job["report_id"])
                if job["report_id"] else None,
                "logs": store.job_logs(job_id, after=after, limit=500)}
        return Response(json.dumps(body), mimetype="application/json")

    @bp.route("/jobs/<job_id>/cancel", methods=["POST"])
    @signed_in
    def job_cancel(job_id: str) -> WebResponse:
        cancel_job(_store(), _settings(), g.principal, job_id)
        return redirect(url_for("console.job_detail", job_id=job_id), code=303)

    # -- reports --------------------------------------------------------------------------------
    @bp.route("/reports/<report_id>")
    @signed_in
    def report(report_id: str) -> WebResponse:
        row = _store().get_owned("reports", g.principal.tenant_id, report_id, "report")
        body = report_body(row)
        stats = body.get("statistics", {})
        matrices = {k: service.heat_rows(v) for k, v in stats.items() if service.is_matrix(v)}
        scalars = [(k, v) for k, v in stats.items()
                   if k not in matrices and not isinstance(v, dict | list)]
        nested = [(k, json.dumps(v, indent=1)[:4000]) for k, v in stats.items()
                  if k not in matrices and isinstance(v, dict | list)]
        try:
            figures = report_figures(body)
            plot_error = None
        except Exception as exc:  # a plot must never hide the report itself
            figures, plot_error = [], str(exc)
        return _page(
            "report.html", report=body, row=row, verdict=service.verdict_of(body),
            p_text=service.format_p_value(body.get("p_value")), scalars=scalars,
            matrices=matrices, nested=nested, figures=figures, plot_error=plot_error,
            inputs=service.flatten(body.get("inputs", {})),
            parameters=service.flatten(body.get("parameters", {})),
            timings=body.get("timings", {}), display=service.display_value)

    @bp.route("/reports/<report_id>/bundle.json")
    @signed_in
    def report_bundle_download(report_id: str) -> WebResponse:
        row = _store().get_owned("reports", g.principal.tenant_id, report_id, "report")
        bundle = report_bundle(identity_for(_settings()), row)
        resp = Response(json.dumps(bundle, indent=1), mimetype="application/json")
        if request.args.get("download"):
            resp.headers["Content-Disposition"] = \
                f'attachment; filename="{report_id}.bundle.json"'
        return resp

    # -- transparency log -----------------------------------------------------------------------
    @bp.route("/log")
    @signed_in
    def log_page() -> WebResponse:
        identity = identity_for(_settings())
        log = identity.log
        size = log.size()
        envelope = log.checkpoint()
        checkpoint = json.loads(base64.b64decode(envelope["payload"]))
        history = [{"index": i, "leaf_hash": leaf_hash(log.entry(i)).hex()}
                   for i in range(size - 1, max(-1, size - 21), -1)]
        mine = {r["log_index"]: r["id"] for r in _store().conn.execute(
            "SELECT id, log_index FROM reports WHERE tenant_id = ?", (g.principal.tenant_id,))}
        consistency = None
        if request.args.get("first"):
            try:
                first = int(request.args["first"])
                second = int(request.args.get("second") or size)
            except ValueError:
                raise BadRequest("tree sizes are integers") from None
            if not 1 <= first <= second <= size:
                raise ValidationFailed(f"need 1 <= first <= second <= {size}")
            proof = log.consistency_proof(first, second)
            old_root, new_root = log.root(first), log.root(second)
            try:
                verify_consistency(first, second, old_root, new_root, proof)
                holds = True
            except ProofError:
                holds = False
            consistency = {"first": first, "second": second, "holds": holds,
                           "old_root": old_root.hex(), "new_root": new_root.hex(),
                           "proof": [h.hex() for h in proof]}
        return _page("log.html", checkpoint=checkpoint, envelope=envelope, history=history,
                     mine=mine, consistency=consistency, key_id=identity.key_id,
                     public_key=identity.public_key_pem)

    # -- API reference --------------------------------------------------------------------------
    import swagger_ui_bundle

    swagger_dir = Path(swagger_ui_bundle.swagger_ui_path)

    @root.route("/docs")
    @limiter.exempt
    @_public
    def docs() -> WebResponse:
        return _page("docs.html")

    @root.route("/docs/assets/<path:filename>")
    @limiter.exempt
    @_public
    def docs_asset(filename: str) -> WebResponse:
        if filename not in ("swagger-ui.css", "swagger-ui-bundle.js",
                            "swagger-ui-standalone-preset.js", "favicon-32x32.png"):
            raise NotFound(f"no route for {request.path}")
        return send_from_directory(swagger_dir, filename)

    app.register_blueprint(bp)
    app.register_blueprint(root)
    # the blueprint's static files are public too (the sign-in page needs its CSS)
    serve_static = app.view_functions["console.static"]

    def console_static(**kwargs: Any) -> Any:
        return serve_static(**kwargs)

    app.view_functions["console.static"] = _public(console_static)
