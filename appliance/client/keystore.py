"""Client keys kept between runs on the client's machine: the secret key encrypted at rest
under a passphrase (scrypt, AES-256-GCM), files 0600 in a 0700 folder. Light: ``cryptography``
only until a saved key is opened."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - typing only
    from crypto.private_inference.client import PrivateClient

_KEY_MAGIC = b"APK1\n"
_SCRYPT = {"n": 1 << 15, "r": 8, "p": 1}


def default_keys_dir() -> Path:
    """``$APPLIANCE_KEYS_DIR``, else ``$XDG_DATA_HOME/appliance/keys``, else
    ``~/.local/share/appliance/keys``."""
    root = os.environ.get("APPLIANCE_KEYS_DIR")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_DATA_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "share") / "appliance" / "keys"


class KeyStore:
    """Client keys on this machine, the secret key encrypted under a passphrase.

    >>> store = KeyStore(directory="~/.local/share/appliance/keys", passphrase="...")  # doctest: +SKIP

    One file per (server, ensemble, spec), mode 0600 in a 0700 folder: a header (scrypt
    parameters, salt, nonce) and AES-256-GCM over the secret-bearing context and the public
    evaluation keys, the header bound as associated data. The key is derived with scrypt
    (N=2^15, r=8, p=1) from the passphrase; nothing unencrypted is written.
    """

    def __init__(self, *, directory: str | Path, passphrase: str | bytes) -> None:
        if not passphrase:
            raise ValueError("a key store needs a non-empty passphrase")
        self.directory = Path(directory).expanduser()
        self._passphrase = passphrase.encode() if isinstance(passphrase, str) else bytes(passphrase)

    def __repr__(self) -> str:  # never the passphrase
        return f"KeyStore(directory={str(self.directory)!r})"

    def path_for(self, base_url: str, spec: dict[str, Any]) -> Path:
        """The file holding the keys for this server and ensemble spec."""
        digest = hashlib.sha256(json.dumps({"url": base_url.rstrip("/"), "spec": spec},
                                           sort_keys=True, default=str).encode()).hexdigest()
        return self.directory / f"{spec['id']}-{digest[:24]}.key"

    def _key(self, salt: bytes, params: dict[str, int]) -> bytes:
        from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

        return Scrypt(salt=salt, length=32, **params).derive(self._passphrase)

    def save(self, path: Path, private: PrivateClient) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        secret, public = private.secret_context(), private.evaluation_keys()
        salt, nonce = os.urandom(16), os.urandom(12)
        header = json.dumps({"kdf": "scrypt", **_SCRYPT, "salt": salt.hex(),
                             "nonce": nonce.hex()}).encode() + b"\n"
        sealed = AESGCM(self._key(salt, _SCRYPT)).encrypt(
            nonce, struct.pack(">Q", len(secret)) + secret + public, _KEY_MAGIC + header)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(_KEY_MAGIC + header + sealed)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def load(self, path: Path, spec: dict[str, Any]) -> PrivateClient | None:
        """The saved client for ``spec``, or ``None`` when no file exists.

        Raises :class:`appliance.client.KeyStoreError` for a wrong passphrase or a damaged
        or foreign file.
        """
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        from appliance.client import KeyStoreError
        from crypto.errors import CryptoError
        from crypto.private_inference.client import PrivateClient

        if not path.is_file():
            return None
        hint = (f"pass the passphrase these keys were saved with, or delete {path} to "
                "generate new keys")
        data = path.read_bytes()
        try:
            if not data.startswith(_KEY_MAGIC):
                raise ValueError("not a key file")
            header, sealed = data[len(_KEY_MAGIC):].split(b"\n", 1)
            meta = json.loads(header)
            params = {k: int(meta[k]) for k in ("n", "r", "p")}
            if meta.get("kdf") != "scrypt" or params["n"] > 1 << 20 or params["r"] > 32 \
                    or params["p"] > 16:
                raise ValueError("unsupported key derivation")
            plain = AESGCM(self._key(bytes.fromhex(meta["salt"]), params)).decrypt(
                bytes.fromhex(meta["nonce"]), sealed, _KEY_MAGIC + header + b"\n")
            (size,) = struct.unpack(">Q", plain[:8])
            secret, public = plain[8:8 + size], plain[8 + size:]
        except InvalidTag:
            raise KeyStoreError(f"cannot open the saved keys {path.name}: wrong passphrase or "
                                "a modified file", hint=hint) from None
        except (ValueError, KeyError, TypeError, struct.error):
            raise KeyStoreError(f"the saved keys {path.name} are damaged", hint=hint) from None
        try:
            return PrivateClient(spec=spec, secret_context=secret, evaluation_keys=public)
        except CryptoError as exc:
            raise KeyStoreError(f"the saved keys {path.name} do not fit the ensemble: {exc}",
                                hint=hint) from None
