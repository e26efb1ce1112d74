"""The composition root: one list of capabilities feeds the API, the job registry, the store's
migrations and the command line. A capability from outside the package (here: this test module)
joins all four through ``APPLIANCE_CAPABILITIES``; a misspelt one stops start-up."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from pydantic import BaseModel
from support import make_token

from appliance.capabilities import BUILTIN, Capability, CapabilityLoadError, installed


class _PingParams(BaseModel):
    word: str = "ping"


class _NoInputs(BaseModel):
    pass


def _routes(app: Any, api: Any, limiter: Any) -> None:
    from flask import Blueprint, jsonify

    bp = Blueprint("throwaway", __name__, url_prefix="/v1")

    @bp.get("/throwaway/ping")
    def ping() -> Any:
        return jsonify({"pong": True})

    app.register_blueprint(bp)


def _jobs() -> None:
    from appliance._internal.jobs.kinds import JobKind, JobOutcome, register_job_kind

    register_job_kind(JOB_KIND_HOLDER.setdefault("kind", JobKind(
        name="throwaway-echo", params_model=_PingParams, inputs_model=_NoInputs,
        resolve=lambda store, principal, params: _NoInputs(),
        run=lambda ctx, params, inputs: JobOutcome(kind="throwaway-echo", method="echo",
                                                   statistics={"word": params.word}),
        description="echoes a word (a test capability)")))


JOB_KIND_HOLDER: dict[str, Any] = {}


def _cli() -> click.Command:
    @click.group(name="throwaway")
    def group() -> None:
        """A throw-away capability."""

    @group.command()
    def hello() -> None:
        click.echo("hello from the throw-away capability")

    return group


THROWAWAY = Capability(
    name="throwaway", routes=_routes, jobs=_jobs, cli=_cli,
    migrations=((9000, "CREATE TABLE throwaway_notes (id TEXT PRIMARY KEY)"),),
)


@pytest.fixture
def with_throwaway(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    from appliance._internal.jobs import kinds
    from appliance.cli import main

    monkeypatch.setenv("APPLIANCE_CAPABILITIES", f"{__name__}:THROWAWAY")
    yield
    # the registries are per process: leave them as the other tests expect
    kinds._KINDS.pop("throwaway-echo", None)
    main.commands.pop("throwaway", None)


def test_builtin_capabilities_are_installed_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("APPLIANCE_CAPABILITIES", raising=False)
    assert installed() == BUILTIN
    assert {c.name for c in BUILTIN} >= {"catalog", "evaluation", "ownership", "inference",
                                         "refinement", "provenance", "unlearning", "console"}


def test_a_throwaway_capability_adds_route_job_kind_migration_and_cli(
        with_throwaway: None, settings: Any) -> None:
    from appliance._internal.jobs.kinds import job_kinds
    from appliance._internal.store import Store
    from appliance._internal.web.app import create_app
    from appliance.cli import main

    assert installed()[-1] is THROWAWAY
    app = create_app(settings, {"TESTING": True})
    token = make_token(settings, "tenant-a")
    resp = app.test_client().get("/v1/throwaway/ping", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200 and resp.get_json() == {"pong": True}

    assert "throwaway-echo" in job_kinds()
    kinds = app.test_client().get("/v1/job-kinds", headers={"Authorization": f"Bearer {token}"})
    assert "throwaway-echo" in {k["name"] for k in kinds.get_json()["items"]}

    store = Store.open(settings)
    try:
        tables = {r[0] for r in store.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        store.close()
    assert "throwaway_notes" in tables

    result = CliRunner().invoke(main, ["throwaway", "hello"])
    assert result.exit_code == 0, result.output
    assert "hello from the throw-away capability" in result.output


@pytest.mark.parametrize("entry, words", [
    ("appliance.capabilities.provenence", "could not be imported"),  # misspelt module
    (f"{__name__}:THROWAWEY", "names no Capability"),                # misspelt attribute
])
def test_a_misspelt_capability_fails_start_up(monkeypatch: pytest.MonkeyPatch, settings: Any,
                                              entry: str, words: str) -> None:
    from appliance._internal.web.app import create_app

    monkeypatch.setenv("APPLIANCE_CAPABILITIES", entry)
    with pytest.raises(CapabilityLoadError, match=words):
        create_app(settings, {"TESTING": True})


def test_the_command_line_names_a_misspelt_capability(tmp_path: Path) -> None:
    env = {"APPLIANCE_CAPABILITIES": "appliance.capabilities.unlearnig", "APPLIANCE_HOME": str(tmp_path),
           "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "appliance", "--help"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "appliance.capabilities.unlearnig" in proc.stderr and "could not be imported" in proc.stderr
    assert "Hint: check the spelling" in proc.stderr
    assert "Traceback" not in proc.stderr
