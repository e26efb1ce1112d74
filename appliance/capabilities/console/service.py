"""The console's logic without Flask: browser sessions over API tokens, CSRF tokens, audit
forms generated from a job kind's parameter schema, and plain-language report summaries.

>>> session_id, csrf = open_session(store, token)   # the token is checked like a Bearer header
>>> principal, csrf = session_principal(store, session_id)
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from appliance._internal.auth import Principal, authenticate
from appliance._internal.store import Store, utcnow
from appliance._internal.web.http import parse_json_text
from appliance.errors import BadRequest

SESSION_SECONDS = 8 * 3600
SESSION_COOKIE = "console_session"
LOGIN_CSRF_COOKIE = "console_login_csrf"

def _hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8")).hexdigest()


# -- sessions ---------------------------------------------------------------------------------
def open_session(store: Store, token: str) -> tuple[str, str]:
    """Check an API token exactly as the API does and open a session: (session id, CSRF token).
    Only the session id's hash is stored; the API token itself is never stored or echoed."""
    principal = authenticate(store, f"Bearer {token.strip()}")
    session_id = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(32)
    now = time.time()
    with store.transaction():
        store.conn.execute("DELETE FROM console_sessions WHERE expires_at < ?", (now,))
        store.conn.execute(
            "INSERT INTO console_sessions (id_hash, token_id, csrf, created_at, expires_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (_hash(session_id), principal.token_id, csrf, utcnow(), now + SESSION_SECONDS))
    return session_id, csrf


def session_principal(store: Store, session_id: str | None) -> tuple[Principal, str] | None:
    """The principal and CSRF token of a live session; None when absent, expired or when its
    token was revoked since sign-in (revoking a token ends its sessions)."""
    if not session_id or len(session_id) > 128:
        return None
    row = store.conn.execute(
        "SELECT s.csrf, s.expires_at, t.id AS token_id, t.tenant_id, t.role, t.revoked_at, "
        "n.name FROM console_sessions s JOIN tokens t ON t.id = s.token_id "
        "JOIN tenants n ON n.id = t.tenant_id WHERE s.id_hash = ?", (_hash(session_id),),
    ).fetchone()
    if row is None or row["revoked_at"] or row["expires_at"] < time.time():
        return None
    principal = Principal(tenant_id=row["tenant_id"], tenant_name=row["name"], role=row["role"],
                          token_id=row["token_id"])
    return principal, str(row["csrf"])


def close_session(store: Store, session_id: str | None) -> None:
    """Sign out: the session id stops working at once."""
    if session_id:
        store.conn.execute("DELETE FROM console_sessions WHERE id_hash = ?", (_hash(session_id),))


def check_csrf(expected: str | None, presented: str | None) -> None:
    """Raise 400 unless the form carried the CSRF token of this session."""
    if not expected or not presented or not hmac.compare_digest(expected, presented):
        raise BadRequest("the form's CSRF token is missing or does not match this session",
                         hint="reload the page and submit the form again")


# -- forms from parameter schemas ---------------------------------------------------------------
@dataclass
class FormField:
    """One input of an audit form, derived from a JSON-schema property."""

    name: str
    widget: str  # number, text, select, checkbox, json, model, models, dataset
    label: str
    required: bool
    default: Any = None
    help: str = ""
    options: list[str] = field(default_factory=list)
    minimum: float | None = None
    maximum: float | None = None
    step: str = "any"
    value: str = ""

    @property
    def input_id(self) -> str:
        return "param-" + self.name


def _unwrap(prop: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """A property's schema without its ``null`` alternative, and whether null is allowed."""
    alternatives = prop.get("anyOf")
    if not alternatives:
        return prop, False
    kept = [alt for alt in alternatives if alt.get("type") != "null"]
    merged = {**(kept[0] if len(kept) == 1 else {"type": "object"}),
              **{k: v for k, v in prop.items() if k != "anyOf"}}
    return merged, len(kept) < len(alternatives)


def form_fields(schema: dict[str, Any]) -> list[FormField]:
    """The inputs of a form for a job kind's ``params_schema`` (as ``/v1/job-kinds`` gives it):
    numbers, choices and flags get their own widgets with the default filled in; ids of models
    and datasets become pickers; nested objects and lists are edited as JSON."""
    required = set(schema.get("required", []))
    fields: list[FormField] = []
    for name, raw in schema.get("properties", {}).items():
        prop, _nullable = _unwrap(raw)
        kind = prop.get("type")
        default = raw.get("default")
        label = name.replace("_", " ")
        help_text = str(raw.get("description") or prop.get("description") or "")
        f = FormField(name=name, widget="text", label=label, required=name in required,
                      default=default, help=help_text)
        if name.endswith("model_id"):
            f.widget = "model"
        elif name.endswith("model_ids"):
            f.widget = "models"
        elif name.endswith("dataset_id"):
            f.widget = "dataset"
        elif "enum" in prop:
            f.widget, f.options = "select", [str(v) for v in prop["enum"]]
        elif "const" in prop:
            f.widget, f.options = "select", [str(prop["const"])]
        elif kind in ("integer", "number"):
            f.widget = "number"
            f.step = "1" if kind == "integer" else "any"
            f.minimum = prop.get("minimum", prop.get("exclusiveMinimum"))
            f.maximum = prop.get("maximum", prop.get("exclusiveMaximum"))
        elif kind == "boolean":
            f.widget = "checkbox"
        elif kind == "string":
            f.widget = "text"
        else:
            f.widget = "json"
        if f.widget == "json":
            f.value = "" if default in (None, {}, []) else json.dumps(default)
        elif f.widget == "checkbox":
            f.value = "on" if default else ""
        elif default is not None:
            f.value = str(default)
        fields.append(f)
    return fields


def fill_values(fields: list[FormField], form: Any) -> None:
    """Put what the user submitted back into the fields (to redisplay a refused form)."""
    for f in fields:
        if f.widget == "checkbox":
            f.value = "on" if form.get(f.name) else ""
        elif f.widget == "models":
            f.value = ",".join(form.getlist(f.name))
        else:
            f.value = str(form.get(f.name, ""))[:20000]


def params_from_form(fields: list[FormField], form: Any) -> dict[str, Any]:
    """The job parameters a submitted form means. Empty optional inputs are left out (the
    schema's default applies); the parameter model then validates exactly as the API does."""
    params: dict[str, Any] = {}
    for f in fields:
        if f.widget == "checkbox":
            params[f.name] = bool(form.get(f.name))
            continue
        if f.widget == "models":
            chosen = [v for v in form.getlist(f.name) if v]
            if chosen:
                params[f.name] = chosen
            continue
        raw = str(form.get(f.name, "")).strip()
        if raw == "":
            continue
        if f.widget == "number":
            params[f.name] = _number(raw)
        elif f.widget == "json":
            params[f.name] = parse_json_text(raw, f"'{f.name}' (JSON)")
        else:
            params[f.name] = raw
    return params


def _number(raw: str) -> Any:
    try:
        return int(raw)
    except ValueError:
        pass
    try:
        value = float(raw)
    except ValueError:
        return raw  # left for the parameter model to refuse with its own message
    return value if math.isfinite(value) else raw


# -- reading a report ---------------------------------------------------------------------------
def format_number(value: Any, digits: int = 4) -> str:
    """A figure for people: integers as they are, floats to ``digits`` significant digits."""
    if isinstance(value, bool) or value is None:
        return "—" if value is None else ("yes" if value else "no")
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value == 0:
            return "0"
        if abs(value) < 1e-3 or abs(value) >= 1e6:
            return f"{value:.{max(digits - 2, 1)}e}"
        return f"{value:.{digits}g}"
    return str(value)


def format_p_value(p: float | None) -> str:
    if p is None:
        return "—"
    if p < 1e-3:
        return f"{p:.1e}"
    return f"{p:.3f}"


def _one_in(p: float) -> str:
    """'1 in 1,000' for p = 0.001: the rarity of a chance result, rounded down to 1, 2 or 5
    times a power of ten so the claim never overstates the evidence."""
    odds = 1 / max(p, 1e-300)
    if odds >= 1e9:
        return "1 in a billion"
    power = 10 ** int(math.floor(math.log10(odds)))
    step = max(m for m in (1, 2, 5) if m * power <= odds)
    return f"1 in {step * power:,}"


@dataclass
class Verdict:
    """The banner of a report page: a tone (positive, negative, info), a headline, a sentence."""

    tone: str
    headline: str
    sentence: str


def verdict_of(report: dict[str, Any]) -> Verdict:
    """A plain-language reading of a report for someone who is not a statistician."""
    method = str(report.get("method", {}).get("name", ""))
    verdict = report.get("verdict")
    p, alpha = report.get("p_value"), report.get("alpha")
    stats = report.get("statistics", {})
    if verdict is None or p is None:
        if method == "evaluation" and isinstance(stats.get("accuracy"), int | float):
            n = stats.get("n")
            return Verdict(
                "info", f"Accuracy {100 * float(stats['accuracy']):.1f}%",
                f"The model labelled {100 * float(stats['accuracy']):.1f}% of "
                f"{format_number(n) if n is not None else 'the'} test examples correctly. "
                "This is a measurement, not a hypothesis test, so there is no p-value.")
        return Verdict("info", "Measurement", "This report records measurements; it makes no "
                       "claim that a test could reject.")
    p, alpha = float(p), float(alpha or 0)
    rare = f"a chance result this strong happens less than {_one_in(p)} times"
    detected = verdict in ("trained_on_dataset", "detected", "reject", "positive") or p <= alpha
    if method.endswith("dov4cl"):
        if detected:
            return Verdict("positive", "The suspect model was trained on your dataset",
                           "The suspect's embeddings hold the released images more tightly than "
                           f"models that never saw them; {rare}.")
        return Verdict("negative", "No evidence the suspect was trained on your dataset",
                       "The suspect's embeddings of the released images look like those of "
                       f"models that never saw them (p = {format_p_value(p)} is above "
                       f"the threshold alpha = {format_number(alpha)}).")
    if "watermark" in method:
        if detected:
            return Verdict("positive", "The suspect model carries your watermark",
                           "The suspect answers your secret trigger with the target class far "
                           f"more often than an unmarked model would; {rare}.")
        return Verdict("negative", "Your watermark was not found in the suspect",
                       "The suspect reacts to your secret trigger no more than an unmarked model "
                       f"would (p = {format_p_value(p)}, threshold alpha = "
                       f"{format_number(alpha)}).")
    if detected:
        return Verdict("positive", f"Verdict: {verdict}",
                       f"The test rejected its null hypothesis; {rare}.")
    return Verdict("negative", f"Verdict: {verdict}",
                   f"The test did not reject its null hypothesis (p = {format_p_value(p)}, "
                   f"threshold alpha = {format_number(alpha)}).")


def heat_rows(matrix: list[list[Any]]) -> list[list[tuple[str, int]]]:
    """A matrix as rows of (formatted value, shade 0-9) for a heat-map table; shades are CSS
    classes, so the page needs no inline styles under its Content-Security-Policy."""
    numbers = [float(v) for row in matrix for v in row if isinstance(v, int | float)]
    top = max(numbers) if numbers else 0.0
    rows = []
    for row in matrix:
        cells = []
        for v in row:
            shade = int(9 * float(v) / top) if top > 0 and isinstance(v, int | float) else 0
            cells.append((format_number(v), shade))
        rows.append(cells)
    return rows


def is_matrix(value: Any) -> bool:
    return (isinstance(value, list) and 1 < len(value) <= 64
            and all(isinstance(r, list) and len(r) == len(value[0]) for r in value)
            and all(isinstance(v, int | float) for r in value for v in r))


def flatten(data: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested inputs and parameters as (dotted key, scalar or short list) rows."""
    rows: list[tuple[str, Any]] = []
    if isinstance(data, dict):
        if not data and prefix:
            rows.append((prefix, "—"))
        for key, value in data.items():
            rows.extend(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(data, list) and any(isinstance(v, dict | list) for v in data):
        for position, value in enumerate(data):
            rows.extend(flatten(value, f"{prefix}[{position}]"))
    else:
        rows.append((prefix, data))
    return rows


def display_value(value: Any) -> str:
    if isinstance(value, list):
        text = ", ".join(format_number(v) for v in value)
        return text if len(text) <= 300 else text[:300] + " …"
    return format_number(value)
