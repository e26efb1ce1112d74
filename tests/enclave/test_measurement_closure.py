"""MRENCLAVE covers exactly the code the enclave process can run: its import closure over the
repository, compiled from source (never from bytecode), and nothing else may be loaded."""

from __future__ import annotations

import importlib.util
import os
import py_compile
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from enclave.errors import EnclaveLaunchError
from enclave.host import LOG_FILES_KEPT, EnclaveClient
from enclave.measurement import (
    EnclaveConfig,
    measure_enclave,
    measured_modules,
    measurement_entries,
    package_dir,
    unmeasured_modules,
)
from enclave.platform import create_platform


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("platform")
    create_platform(directory)
    return directory


def _config() -> EnclaveConfig:
    return EnclaveConfig(signer_public_key="00" * 32)


def _edit(path: Path, text: str) -> None:
    path.write_text(path.read_text() + text)


def test_measured_set_is_the_enclave_import_closure() -> None:
    root = package_dir().parent
    closure = measured_modules(root)
    # modules reached only through other modules' imports, package __init__ files included
    for name in ("enclave.__main__", "enclave.runtime", "enclave.he", "crypto", "crypto.keys", "crypto.sealing"):
        assert closure[name].is_relative_to(root)
    assert "enclave.host" not in closure  # the host side never runs inside the enclave
    paths = {path for path, _ in measurement_entries(package_dir(), _config())}
    assert {"crypto/__init__.py", "crypto/keys.py", "enclave/__main__.py"} <= paths
    assert not any("__pycache__" in path or path.endswith(".pyc") for path in paths)


@pytest.mark.parametrize("edited", ["crypto/keys.py", "crypto/__init__.py"])
def test_edit_to_an_imported_crypto_module_changes_mrenclave(repository_copy: Path, edited: str) -> None:
    config = _config()
    package = repository_copy / "enclave"
    before = measure_enclave(package, config)
    _edit(repository_copy / edited, "\nEDITED_IN_TEST = True\n")
    assert measure_enclave(package, config) != before


def test_code_outside_the_closure_does_not_change_mrenclave(repository_copy: Path) -> None:
    config = _config()
    package = repository_copy / "enclave"
    before = measure_enclave(package, config)
    _edit(package / "host.py", "\nEDITED_IN_TEST = True\n")  # host-only: never runs inside
    assert measure_enclave(package, config) == before
    _edit(package / "runtime.py", "\nimport crypto.bundle\n")  # now it would run inside
    assert measure_enclave(package, config) != before


def test_a_missing_first_party_import_is_refused(repository_copy: Path) -> None:
    _edit(repository_copy / "enclave" / "runtime.py", "\nimport crypto.not_there\n")
    with pytest.raises(EnclaveLaunchError, match="crypto.not_there"):
        measure_enclave(repository_copy / "enclave", _config())


def _plant_unchecked_pyc(module_file: Path, marker: Path) -> Path:
    """Write, beside ``module_file``, the bytecode of a tampered version of it that records
    that it ran, as an unchecked-hash .pyc (Python never compares it with the source)."""
    tampered = module_file.with_suffix(".tampered.py")
    tampered.write_text(module_file.read_text() + f"\nopen({str(marker)!r}, 'a').write({module_file.name!r})\n")
    target = Path(importlib.util.cache_from_source(str(module_file)))
    py_compile.compile(
        str(tampered),
        cfile=str(target),
        dfile=str(module_file),
        doraise=True,
        invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
    )
    tampered.unlink()
    return target


def test_planted_bytecode_is_never_executed(platform: Path, repository_copy: Path, tmp_path: Path) -> None:
    marker = tmp_path / "bytecode-ran"
    planted = sorted(
        _plant_unchecked_pyc(repository_copy / name, marker)
        for name in ("enclave/codec.py", "enclave/__init__.py", "crypto/keys.py")
    )
    package = repository_copy / "enclave"
    client = EnclaveClient.launch(platform_dir=platform, package=package)
    try:
        assert client.identity["mrenclave"] == measure_enclave(package, client.config)
        assert client.seal(b"still works")  # the enclave serves from its measured sources
    finally:
        client.close()
    assert not marker.exists(), f"planted bytecode ran: {marker.read_text()}"
    assert sorted(repository_copy.rglob("*.pyc")) == planted  # and it wrote none of its own


def test_an_unmeasured_module_refuses_start_up_and_is_logged_in_the_home(
    platform: Path, repository_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # an import the static closure cannot see: the module never enters the measurement
    (repository_copy / "crypto" / "extra.py").write_text("VALUE = 1\n")
    _edit(repository_copy / "enclave" / "platform.py", "\nimportlib = __import__('importlib')\n"
          "importlib.import_module('crypto.' + 'extra')\n")
    logs = tmp_path / "home" / "enclave" / "logs"
    logs.mkdir(parents=True)
    for index in range(LOG_FILES_KEPT + 3):  # older logs of earlier enclaves: rotated away
        old = logs / f"enclave-20000101T000000-1-{index:08x}.log"
        old.write_text("old")
        os.utime(old, (946684800 + index, 946684800 + index))
    monkeypatch.setattr("enclave.host.LOG_MAX_BYTES", 60)
    with pytest.raises(EnclaveLaunchError, match=r"crypto\.extra.*not measured"):
        EnclaveClient.launch(platform_dir=platform, package=repository_copy / "enclave", log_dir=logs)
    files = sorted(logs.glob("enclave-*.log"), key=lambda path: path.stat().st_mtime)
    assert len(files) == LOG_FILES_KEPT
    assert not (logs / "enclave-20000101T000000-1-00000000.log").exists()  # the oldest went first
    newest = files[-1].read_text()
    assert newest.startswith("enclave: EINIT failed: unmeasured code")
    assert len(newest.splitlines()[0]) <= 60 and "bytes of stderr dropped" in newest
    assert files[-1].stat().st_mode & 0o077 == 0


def test_unmeasured_modules_flags_other_files_and_loaders() -> None:
    root = package_dir().parent
    closure = measured_modules(root)
    real = {name: sys.modules[name] for name in ("enclave", "enclave.measurement", "json")}
    # loaded by the ordinary loader (which reads __pycache__), not the measured-source one
    problems = unmeasured_modules(root, closure, real, source_loader=type(None))
    assert problems == ["enclave (not loaded from its measured source)",
                        "enclave.measurement (not loaded from its measured source)"]
    stray = ModuleType("crypto.stray")
    stray.__file__ = str(root / "crypto" / "stray.py")
    planted = ModuleType("enclave.codec")
    planted.__file__ = "/elsewhere/enclave/codec.py"
    shadow = ModuleType("hashlib")
    shadow.__file__ = str(root / "hashlib.py")
    found = unmeasured_modules(root, closure, {"crypto.stray": stray, "enclave.codec": planted, "hashlib": shadow},
                               source_loader=object)
    assert found == ["crypto.stray from crypto/stray.py (not measured)",
                     "enclave.codec from /elsewhere/enclave/codec.py (not measured)",
                     "hashlib from hashlib.py (not measured)"]


def test_the_enclave_refuses_to_start_outside_isolated_mode(platform: Path, tmp_path: Path) -> None:
    script = package_dir() / "__main__.py"
    done = subprocess.run(
        [sys.executable, "-B", str(script), "--platform-dir", str(platform), "--config-json", "{}",
         "--sigstruct", "00"],
        capture_output=True, stdin=subprocess.DEVNULL, timeout=60, cwd=tmp_path,
    )
    assert done.returncode == 3 and b"python -B -I" in done.stderr


def test_an_internal_error_reaches_stderr_without_its_message(capsys: pytest.CaptureFixture[str]) -> None:
    import io
    from types import SimpleNamespace

    from enclave.protocol import encode_frame, read_frame
    from enclave.runtime import serve

    class Failing:
        config = SimpleNamespace(max_message_bytes=1 << 20)

        def handle(self, op: str, header: dict[str, object], parts: list[bytes]) -> None:
            held = 0.1234 + float(len(parts))  # a value the enclave holds
            raise RuntimeError(f"while holding {held}")  # the source line is public; the value is not

    out = io.BytesIO()
    serve(Failing(), io.BytesIO(encode_frame({"op": "refine.forward"}, [], max_body=1 << 20)), out)  # type: ignore[arg-type]
    out.seek(0)
    reply, _, _ = read_frame(out, max_body=1 << 20)
    assert reply["ok"] is False and reply["message"] == "RuntimeError"
    printed = capsys.readouterr().err
    assert "RuntimeError" in printed and "'refine.forward'" in printed and "runtime.py" in printed
    assert "0.1234" not in printed
