"""One error root: every error the project defines derives from ``appliance.errors.Error`` and
explains itself the same way (title, detail, hint), in the CLI, the job reason and the API."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

from appliance._internal.config import Settings
from appliance._internal.jobs.runner import failure_reason
from appliance.audits.errors import AuditInputError
from appliance.client import ApiError, ClientError
from appliance.errors import ApplianceError, Error, UnprocessableInput
from crypto.errors import SignatureError
from models.errors import DatasetError

PACKAGES = ("appliance", "crypto", "enclave", "models")


def _project_exceptions() -> list[type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for name in PACKAGES:
        package = importlib.import_module(name)
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{name}."):
            if info.name.endswith("__main__"):
                continue
            module = importlib.import_module(info.name)
            for _, obj in inspect.getmembers(module, inspect.isclass):
                if issubclass(obj, BaseException) and obj.__module__.split(".")[0] in PACKAGES:
                    found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return list(found.values())


def test_every_project_error_derives_from_the_one_root() -> None:
    classes = _project_exceptions()
    assert len(classes) > 40  # the walk really found the families
    strays = sorted(f"{c.__module__}.{c.__qualname__}" for c in classes if not issubclass(c, Error))
    assert strays == []


@pytest.mark.parametrize("exc", [
    SignatureError("bad signature on the bundle"),
    DatasetError("x is not finite"),
    AuditInputError("empty public set"),
    UnprocessableInput("dataset refused", hint="upload an .npz"),
    ClientError("no answer"),
])
def test_diagnostics_has_title_detail_and_hint(exc: Error) -> None:
    text = exc.diagnostics()
    title, _, rest = text.partition(": ")
    assert title == (exc.title or type(exc).__name__)
    assert rest.startswith(exc.detail)
    assert f"Hint: {exc.hint}" in text and exc.hint


def test_job_failure_reason_carries_the_hint(tmp_path: Path) -> None:
    settings = Settings.from_env(home=tmp_path)
    reason = failure_reason(DatasetError(f"cannot read {tmp_path}/data.npz"), settings)
    assert reason.startswith("DatasetError: cannot read <home>/data.npz")
    assert f"Hint: {DatasetError.hint}" in reason
    assert str(tmp_path) not in reason
    service = failure_reason(UnprocessableInput("labels missing", hint="add y"), settings)
    assert service == "labels missing\nHint: add y"
    assert failure_reason(KeyError("x"), settings).startswith("internal error (KeyError)")


def test_api_error_keeps_the_servers_hint() -> None:
    problem = ApplianceError("gone", hint="upload it again").problem()
    err = ApiError(410, problem)
    assert err.hint == "upload it again" and "Hint: upload it again" in err.diagnostics()
