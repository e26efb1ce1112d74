"""The appliance keeps each enclave's stderr under its home, never in /tmp."""

from __future__ import annotations

from pathlib import Path

from appliance._internal.config import Settings
from appliance.capabilities.refinement.enclave import EnclaveService


def test_enclave_stderr_goes_to_the_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    service = EnclaveService(Settings(home=home))
    try:
        client = service.client()
        assert client.log_path is not None
        assert client.log_path.parent == home / "enclave" / "logs"
        assert client.log_path.exists() and client.log_path.stat().st_mode & 0o077 == 0
    finally:
        service.close()
    assert not client.log_path.exists()  # a clean run wrote nothing worth keeping
