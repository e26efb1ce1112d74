"""Sealed secrets: the key-encryption key, shared with cluster workers through a file."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance._internal.config import Settings
from appliance._internal.secrets import SealedSecretError, seal_secret, unseal_secret


def test_sealed_secret_opens_only_with_its_key_and_context(tmp_path: Path) -> None:
    api = Settings(home=tmp_path / "api")
    blob = seal_secret(api, b"k" * 32, context=b"watermark:wm_1:tnt_a")
    assert b"k" * 32 not in blob
    assert unseal_secret(api, blob, context=b"watermark:wm_1:tnt_a") == b"k" * 32
    with pytest.raises(SealedSecretError, match="authentication"):
        unseal_secret(api, blob, context=b"watermark:wm_1:tnt_b")
    other = Settings(home=tmp_path / "other")  # another home makes its own key
    with pytest.raises(SealedSecretError, match="authentication"):
        unseal_secret(other, blob, context=b"watermark:wm_1:tnt_a")
    kek = api.key_dir / "secrets.kek"
    assert kek.stat().st_mode & 0o777 == 0o600 and len(kek.read_bytes()) == 32


def test_cluster_worker_uses_the_api_nodes_key_file_and_never_makes_its_own(tmp_path: Path) -> None:
    api = Settings(home=tmp_path / "api", queue_url="redis://127.0.0.1:6379/0")
    blob = seal_secret(api, b"secret-key-bytes", context=b"ctx")
    cluster = {"queue_url": "redis://127.0.0.1:6379/0", "api_url": "http://127.0.0.1:1"}
    worker = Settings(home=tmp_path / "worker", kek_file=api.key_dir / "secrets.kek", **cluster)
    assert unseal_secret(worker, blob, context=b"ctx") == b"secret-key-bytes"

    bare = Settings(home=tmp_path / "bare-worker", **cluster)
    with pytest.raises(SealedSecretError, match="no key-encryption key") as caught:
        unseal_secret(bare, blob, context=b"ctx")
    assert "APPLIANCE_KEK_FILE" in caught.value.hint
    assert not (tmp_path / "bare-worker" / "keys" / "secrets.kek").exists()

    damaged = tmp_path / "short.kek"
    damaged.write_bytes(b"x" * 31)
    for path, message in ((damaged, "not 32 bytes"), (tmp_path / "missing.kek", "cannot be read")):
        with pytest.raises(SealedSecretError, match=message):
            unseal_secret(Settings(home=tmp_path / "w2", kek_file=path, **cluster), blob, context=b"ctx")


def test_kek_file_is_read_from_the_environment(tmp_path: Path) -> None:
    settings = Settings.from_env({"APPLIANCE_HOME": str(tmp_path), "APPLIANCE_KEK_FILE": "/run/secrets/kek"})
    assert settings.kek_file == Path("/run/secrets/kek")
