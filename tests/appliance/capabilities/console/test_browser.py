"""The console in a real browser: headless Chromium (Debian's package) driven by Playwright,
against a live `appliance serve` on loopback. One walk through what a user does: sign in with
the keyboard, upload the demo model and dataset, start an evaluation and a DOV4CL ownership
audit from the generated forms, watch them reach 100%, read the reports and see the page
verify them itself; a tampered bundle must fail; other tenants get 404 pages; sign out.

Screenshots go to ``$APPLIANCE_SCREENSHOTS`` (default ``build/screenshots``)."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support import ROOT, env_for, make_token, npz_bytes, serve_appliance

CHROMIUM = os.environ.get("APPLIANCE_CHROMIUM", "/usr/bin/chromium")
XSS = "<img src=x onerror=alert(1)><script>alert(1)</script>"

pytestmark = pytest.mark.timeout(300)


def _browser_or_skip() -> Any:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("Playwright for Python is not installed (pip install -e '.[dev]')")
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium (.ci/run does this)")
    return sync_playwright


@pytest.fixture(scope="module")
def shots() -> Path:
    folder = Path(os.environ.get("APPLIANCE_SCREENSHOTS") or ROOT / "build" / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The demo classifier and test set, plus two small encoders and released/private digit
    images for a DOV4CL audit (the smallest sizes the audit accepts, to stay fast)."""
    import torch
    from safetensors.torch import save_file

    from appliance.cli.demo import write_digits_demo
    from models.vision import ENCODERS, build_model, digits_splits

    out = tmp_path_factory.mktemp("material")
    model, data = write_digits_demo(out)
    torch.set_num_threads(1)
    splits = digits_splits(seed=0, size=8, fractions=(0.6, 0.2))
    config = {"in_channels": 1, "image_size": 8, "width": 8, "embed_dim": 16}
    files = {"model": model, "data": data, "config": out / "config.json"}
    files["config"].write_text(json.dumps(config))
    for name, seed in (("suspect", 1), ("shadow", 2)):
        encoder = build_model(ENCODERS["conv_encoder"], seed=seed, **config).eval()
        files[name] = out / f"{name}.safetensors"
        save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(files[name]))
    for name, part in (("public", splits.public), ("private", splits.private)):
        files[name] = out / f"{name}.npz"
        files[name].write_bytes(npz_bytes(x=np.asarray(part[0][:48], dtype=np.float32)))
    return files


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory,
         material: dict[str, Path]) -> Iterator[dict[str, str]]:
    from appliance._internal.config import Settings

    home = tmp_path_factory.mktemp("home")
    env = env_for(home)
    with serve_appliance(env, "--workers", "1", "--threads", "8") as url:
        settings = Settings.from_env(env)
        yield {"url": url, "admin": make_token(settings, "acme"),
               "client": make_token(settings, "acme", "client"),
               "other": make_token(settings, "globex")}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_playwright = _browser_or_skip()
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM,
                                              args=["--no-sandbox", "--disable-gpu"])
        yield chromium
        chromium.close()


class Watch:
    """What a page did that it must not: dialogs (an XSS payload running), CSP violations,
    uncaught script errors."""

    def __init__(self, page: Any) -> None:
        self.dialogs: list[str] = []
        self.csp: list[str] = []
        self.errors: list[str] = []
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        page.on("console", lambda m: self.csp.append(m.text)
                if "Content Security Policy" in m.text else None)


def _accessible(page: Any) -> None:
    """Every visible form control has a label, and headings never skip a level."""
    unlabelled = page.evaluate("""() => [...document.querySelectorAll(
        'input:not([type=hidden]), select, textarea')].filter(el =>
        !(el.id && document.querySelector('label[for="' + el.id + '"]')) &&
        !el.getAttribute('aria-label')).map(el => el.name)""")
    assert unlabelled == [], f"{page.url}: controls without a label: {unlabelled}"
    levels = page.evaluate("() => [...document.querySelectorAll('h1,h2,h3,h4')]"
                           ".map(h => Number(h.tagName[1]))")
    assert levels and levels[0] == 1 and levels.count(1) == 1, (page.url, levels)
    assert all(b - a <= 1 for a, b in zip(levels, levels[1:], strict=False)), (page.url, levels)


def _sign_in_with_keyboard(page: Any, url: str, token: str) -> None:
    page.goto(url + "/")
    assert page.url.startswith(url + "/console/login")
    _accessible(page)
    # autofocus lands on the token field; Enter submits: no mouse needed
    assert page.evaluate("document.activeElement.id") == "token"
    page.keyboard.type(token)
    page.keyboard.press("Enter")
    page.wait_for_url(url + "/console/")


def _upload(page: Any, url: str, what: str, name: str, path: Path, **selects: str) -> str:
    page.goto(f"{url}/console/{what}s")
    page.fill(f"#{what}-name", name)
    page.set_input_files(f"#{what}-file", str(path))
    for field, value in selects.items():
        if field == "config":
            page.fill(f"#{what}-config", value)
        else:
            page.select_option(f"#{what}-{field}", value)
    page.click("form[enctype] button[type=submit]")
    page.wait_for_url(f"{url}/console/{what}s/*")
    return str(page.url.rsplit("/", 1)[1])


def _wait_job(page: Any, timeout_ms: int) -> None:
    from playwright.sync_api import expect

    # locator waits, not wait_for_function: the page's CSP forbids evaluating strings
    expect(page.locator("#job-state")).to_have_text(
        re.compile("succeeded|failed|cancelled"), timeout=timeout_ms)
    assert page.text_content("#job-state") == "succeeded", page.text_content("#job-error")
    assert page.text_content("#job-percent") == "100%"


def _submit_audit(page: Any, url: str) -> None:
    page.click("form.params button[type=submit]")
    page.wait_for_load_state()
    refused = page.locator(".alert")
    assert "/console/jobs/" in page.url, refused.text_content() if refused.count() else page.url


def _tampered_bundle(edit: Any) -> Any:
    """A route handler serving the real bundle after ``edit`` changed it."""

    def serve(route: Any, _request: Any) -> None:
        bundle = route.fetch().json()
        edit(bundle)
        route.fulfill(status=200, content_type="application/json", body=json.dumps(bundle))

    return serve


def _verified(page: Any) -> str:
    page.wait_for_selector("#verify[data-result]", timeout=20_000)
    return str(page.get_attribute("#verify", "data-result"))


def test_console_end_to_end(browser: Any, live: dict[str, str], material: dict[str, Path],
                            shots: Path) -> None:
    url = live["url"]
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    watch = Watch(page)
    _sign_in_with_keyboard(page, url, live["admin"])
    cookie = next(c for c in context.cookies() if c["name"] == "console_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert live["admin"] not in page.content()

    # uploads through the forms, with the API's validation (an XSS name is refused, inert)
    model_id = _upload(page, url, "model", "digits", material["model"])
    dataset_id = _upload(page, url, "dataset", "digits-test", material["data"])
    page.goto(f"{url}/console/datasets")
    page.fill("#dataset-name", XSS)
    page.set_input_files("#dataset-file", str(material["data"]))
    page.click("form[enctype] button[type=submit]")
    assert "dataset name must be" in page.text_content(".alert")
    assert page.input_value("#dataset-name") == XSS
    suspect = _upload(page, url, "model", "suspect-encoder", material["suspect"],
                      arch="conv_encoder", config=material["config"].read_text())
    shadow = _upload(page, url, "model", "shadow-encoder", material["shadow"],
                     arch="conv_encoder", config=material["config"].read_text())
    public = _upload(page, url, "dataset", "released-images", material["public"])
    private = _upload(page, url, "dataset", "held-out-images", material["private"])
    page.goto(f"{url}/console/models/{model_id}")
    assert page.text_content("h1") == "Model “digits”"
    _accessible(page)

    # an evaluation from the generated form, with the keyboard only
    page.goto(f"{url}/console/audits/new")
    _accessible(page)
    page.goto(f"{url}/console/audits/new/evaluation")
    _accessible(page)
    assert page.input_value("#param-batch_size") == "256"  # defaults filled in
    page.focus("#param-model_id")
    page.keyboard.type("digits")  # type-ahead picks the option
    page.keyboard.press("Tab")
    page.keyboard.type("digits-test")
    assert page.input_value("#param-model_id") == model_id
    assert page.input_value("#param-dataset_id") == dataset_id
    for _ in range(10):  # Tab on to the submit button, then Enter
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.type") == "submit":
            break
    page.keyboard.press("Enter")
    page.wait_for_url(f"{url}/console/jobs/*")
    _wait_job(page, 60_000)
    page.click("#job-report-link")
    page.wait_for_url(f"{url}/console/reports/*")
    assert _verified(page) == "verified"
    assert page.text_content("#verify-status").startswith("Signature verified")
    assert page.locator("table.heat tbody tr").count() == 10
    assert "Accuracy" in page.text_content(".banner .headline")
    _accessible(page)
    page.screenshot(path=str(shots / "report-evaluation.png"), full_page=True)
    evaluation_report = page.url

    # a refused ownership form shows the errors and echoes the payload as text
    page.goto(f"{url}/console/audits/new/ownership")
    page.select_option("#param-method", "watermark_dvbw")
    page.select_option("#param-suspect_model_id", model_id)
    page.fill("#param-method_params", json.dumps({"note": XSS}))
    page.click("form.params button[type=submit]")
    assert "watermark_dvbw needs watermark_id" in page.text_content(".alert")
    assert XSS in page.input_value("#param-method_params")

    # DOV4CL from the form: registered suspect and shadow, released and held-out images
    page.goto(f"{url}/console/audits/new/ownership")
    page.select_option("#param-method", "dov4cl")
    page.select_option("#param-suspect_model_id", suspect)
    page.select_option("#param-public_dataset_id", public)
    page.select_option("#param-private_dataset_id", private)
    page.select_option("#param-shadow_model_ids", [shadow])
    page.fill("#param-method_params",
              json.dumps({"k": 8, "n_global": 2, "n_local": 2, "rounds": 3}))
    page.fill("#param-seed", "5")
    _submit_audit(page, url)
    page.wait_for_selector("#job-log li:nth-child(2)", timeout=30_000)
    page.screenshot(path=str(shots / "job-running.png"), full_page=True)
    _accessible(page)
    _wait_job(page, 120_000)
    page.click("#job-report-link")
    page.wait_for_url(f"{url}/console/reports/*")
    assert _verified(page) == "verified"
    banner = page.text_content(".banner")
    assert "p-value" in banner and "alpha" in banner
    assert any(s in banner for s in ("tightly", "look like those"))
    page.screenshot(path=str(shots / "report-dov4cl.png"), full_page=True)
    dov4cl_report = page.url

    page.goto(f"{url}/console/")
    _accessible(page)
    assert page.locator("table.list").first.text_content().count("evaluation") >= 1
    page.screenshot(path=str(shots / "overview.png"), full_page=True)
    page.goto(f"{url}/console/log?first=1")
    assert "nothing was rewritten" in page.text_content("#consistency")
    _accessible(page)

    # a tampered bundle: the page itself must refuse it (payload edited, or proof edited)
    def tamper_payload(bundle: dict[str, Any]) -> None:
        report = json.loads(base64.b64decode(bundle["envelope"]["payload"]))
        report["verdict"] = "not_detected" if report["verdict"] != "not_detected" else "x"
        bundle["envelope"]["payload"] = base64.b64encode(
            json.dumps(report).encode()).decode()

    def tamper_proof(bundle: dict[str, Any]) -> None:
        bundle["log"]["inclusion_proof"] = ["00" * 32] + bundle["log"]["inclusion_proof"][1:]
        if len(bundle["log"]["inclusion_proof"]) == 1:
            bundle["log"]["index"] = bundle["log"]["index"] ^ 1

    for tamper, needle in ((tamper_payload, "signature"), (tamper_proof, "inclusion proof")):
        page.route("**/bundle.json", _tampered_bundle(tamper))
        page.goto(dov4cl_report)
        assert _verified(page) == "failed"
        status = page.text_content("#verify-status")
        assert status.startswith("This report does NOT verify") and needle in status, status
        assert "Signature verified" not in status
        page.unroute("**/bundle.json")
    page.goto(evaluation_report)
    assert _verified(page) == "verified"

    # the API reference, served from the installed Swagger UI package
    page.goto(f"{url}/docs")
    page.wait_for_selector(".swagger-ui .info .title", timeout=20_000)
    assert "Audit appliance API" in page.text_content(".swagger-ui .info .title")

    # another tenant: 404 pages for acme's ids; a client token: no audit form
    for token, expect in ((live["other"], 404), (live["client"], 200)):
        other = browser.new_context()
        other_page = other.new_page()
        _sign_in_with_keyboard(other_page, url, token)
        for path in (f"/console/models/{model_id}", f"/console/datasets/{dataset_id}",
                     evaluation_report.removeprefix(url)):
            resp = other_page.goto(url + path)
            assert resp is not None and resp.status == expect, (path, resp and resp.status)
            if expect == 404:
                assert "404" in other_page.text_content("h1")
        if token == live["client"]:
            other_page.goto(f"{url}/console/audits/new/evaluation")
            assert "cannot start" in other_page.text_content(".alert")
            assert other_page.locator("form.params").count() == 0
        other.close()

    # sign out: the session is gone, pages send you back to sign-in
    page.goto(f"{url}/console/")
    page.click("form.signout button")
    page.wait_for_url(f"{url}/console/login")
    page.goto(f"{url}/console/jobs")
    assert page.url.startswith(f"{url}/console/login")
    assert watch.dialogs == [], watch.dialogs
    assert watch.csp == [], watch.csp
    assert watch.errors == [], watch.errors
    context.close()
