"""The appliance's identity: its Ed25519 signing key, its transparency log, its code digest."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance._internal.config import Settings
from crypto.keys import key_id, load_or_create_ed25519, public_key_pem
from crypto.translog import TransparencyLog

PACKAGES = ("appliance", "crypto", "enclave", "models")
LOG_ORIGIN = "audit-appliance/v1"


@lru_cache(maxsize=1)
def code_digest() -> str:
    """sha256 over the sorted (path, sha256) list of the appliance's Python sources."""
    root = Path(__file__).resolve().parent.parent
    entries: list[str] = []
    for package in PACKAGES:
        base = root / package
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            entries.append(f"{rel}\0{hashlib.sha256(path.read_bytes()).hexdigest()}\n")
    return hashlib.sha256("".join(sorted(entries)).encode()).hexdigest()


class Identity:
    """Keys live in the home folder, created on first start and never logged."""

    def __init__(self, *, settings: Settings) -> None:
        settings.ensure_dirs()
        self.signing_key: Ed25519PrivateKey = load_or_create_ed25519(
            settings.key_dir / "signing-key.pem"
        )
        self.public_key = self.signing_key.public_key()
        self.public_key_pem = public_key_pem(self.public_key)
        self.key_id = key_id(self.public_key)
        self.log = TransparencyLog(
            db_path=settings.log_db_path, origin=LOG_ORIGIN, signing_key=self.signing_key
        )


_identities: dict[Path, Identity] = {}


def identity_for(settings: Settings) -> Identity:
    home = settings.home.resolve()
    if home not in _identities:
        _identities[home] = Identity(settings=settings)
    return _identities[home]
