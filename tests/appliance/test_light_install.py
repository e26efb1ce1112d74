"""The light install: `pip install .` without extras gives auditors and clients the SDK and the
command line (jobs, reports, verify, log ...). Here a separate Python process, in which flask,
torch, tenseal, numpy and the other server-side packages cannot be imported, fetches a signed
report from a live appliance and verifies it offline."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import make_token

ROOT = Path(__file__).resolve().parents[2]
LIGHT = {"cryptography", "pydantic", "httpx", "click", "rich"}
HEAVY = ("flask", "werkzeug", "flask_limiter", "gunicorn", "torch", "tenseal", "numpy", "scipy",
         "sklearn", "transformers", "onnx", "onnxruntime", "safetensors", "huey", "redis",
         "matplotlib", "prometheus_client")

# run as `python -c`: refuse the heavy packages, run the CLI, report what got imported
RUNNER = textwrap.dedent("""
    import importlib.abc, json, sys
    HEAVY = set(json.loads(sys.argv[1]))
    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in HEAVY:
                raise ImportError(f"{name} is not installed in the light install", name=name)
            return None
    sys.meta_path.insert(0, Refuse())
    from appliance.cli import main
    from appliance.client import Client
    code = 0
    try:
        main(sys.argv[2:], standalone_mode=False)
    except SystemExit as exc:
        code = exc.code or 0
    loaded = sorted({m.split(".")[0] for m in sys.modules} & HEAVY)
    print("\\nLOADED " + json.dumps(loaded))
    sys.exit(code)
""")


def _light_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(HEAVY), *args],
                          capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    loaded = json.loads(proc.stdout.rsplit("LOADED ", 1)[-1]) if "LOADED " in proc.stdout else None
    assert loaded == [], f"imported {loaded}\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_the_base_dependencies_are_the_light_ones() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {dep.split(">")[0].split("=")[0].split("<")[0].split("[")[0].strip()
             for dep in project["dependencies"]}
    assert names == LIGHT
    assert {"server", "engines", "private-inference"} <= set(project["optional-dependencies"])


@pytest.fixture
def live(app: Any, settings: Any) -> Iterator[str]:
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def _publish_report(settings: Any) -> str:
    from appliance._internal.identity import identity_for
    from appliance._internal.reports import build_report, new_report_id, publish_report
    from appliance._internal.store import Store

    store = Store.open(settings)
    try:
        tenant_id = store.ensure_tenant("tenant-a")
        body = build_report(report_id=new_report_id(), job_id=None, tenant="tenant-a",
                            method="evaluation", version="1", parameters={}, inputs={},
                            statistics={"accuracy": 0.9}, p_value=None, verdict="accuracy 0.9",
                            alpha=None, seed=0, device="cpu", timings={})
        with store.transaction():
            return publish_report(store, identity_for(settings), tenant_id=tenant_id, job_id=None,
                                  body=body)
    finally:
        store.close()


def test_the_light_cli_fetches_and_verifies_a_report(live: str, settings: Any,
                                                    tmp_path: Path) -> None:
    token = make_token(settings, "tenant-a", role="auditor")
    report_id = _publish_report(settings)
    env = {"APPLIANCE_URL": live, "APPLIANCE_TOKEN": token, "PATH": "/usr/bin:/bin",
           "APPLIANCE_HOME": str(tmp_path / "client-home")}
    bundle, key = tmp_path / "report.json", tmp_path / "appliance.pem"

    assert _light_cli("--help", env=env).returncode == 0
    for group in ("jobs", "reports", "log", "verify", "ownership", "refinements"):
        assert _light_cli(group, "--help", env=env).returncode == 0
    assert _light_cli("reports", "get", report_id, "--out", str(bundle), env=env).returncode == 0
    assert _light_cli("log", "public-key", "--out", str(key), env=env).returncode == 0
    ok = _light_cli("verify", str(bundle), "--key", str(key), env=env)
    assert ok.returncode == 0 and ok.stdout.startswith("OK"), ok.stdout + ok.stderr

    tampered = json.loads(bundle.read_text())
    tampered["envelope"]["signatures"][0]["sig"] = tampered["envelope"]["signatures"][0]["sig"][::-1]
    bundle.write_text(json.dumps(tampered))
    refused = _light_cli("verify", str(bundle), "--key", str(key), env=env)
    assert refused.returncode != 0 and "VERIFICATION FAILED" in refused.stderr
