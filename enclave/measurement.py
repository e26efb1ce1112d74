"""Enclave identity: configuration, MRENCLAVE, MRSIGNER and the signed SIGSTRUCT.

    config = EnclaveConfig(isv_prod_id=1, isv_svn=1, debug=False, signer_public_key=pub)
    mrenclave = measure_enclave(package_dir(), config)

The measured code is the enclave's import closure over the repository: starting from
``enclave/__main__.py``, every module of the project's packages (:data:`FIRST_PARTY_PACKAGES`)
that an ``import`` statement anywhere in a measured module names, with the ``__init__.py`` of
each package on the way (:func:`measured_modules`). The closure is static and deterministic; the
enclave process imports exactly this set from source at start-up and refuses to start if any
other repository module is loaded (:func:`unmeasured_modules`), so code that is not measured
cannot run. MRENCLAVE = sha256 of the canonical JSON list of sorted ``[path, sha256(file)]``
pairs over the closure's source files and ``["<config>", sha256(config JSON)]``.
MRSIGNER = sha256 of the enclave signing public key. The SIGSTRUCT is the signer's Ed25519
signature over MRENCLAVE, product id and SVN; the enclave refuses to start (EINIT) without it.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import struct
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from enclave.errors import EnclaveLaunchError

__all__ = [
    "ENTRY_MODULE",
    "FIRST_PARTY_PACKAGES",
    "EnclaveConfig",
    "measure_enclave",
    "measured_modules",
    "measurement_entries",
    "mrsigner_of",
    "package_dir",
    "sign_sigstruct",
    "unmeasured_modules",
    "verify_sigstruct",
]

#: The module the enclave process starts from (run as a script); the root of the closure.
ENTRY_MODULE = "enclave.__main__"
#: The project's packages: an import of one of these is repository code, wherever it would be
#: found, so the measurement insists on finding it under the repository root.
FIRST_PARTY_PACKAGES: frozenset[str] = frozenset({"appliance", "crypto", "enclave", "models"})
_SIGSTRUCT_CONTEXT = b"audit-appliance/sigstruct/v1\x00"


@dataclass(frozen=True, kw_only=True)
class EnclaveConfig:
    """The enclave's configuration; part of MRENCLAVE."""

    isv_prod_id: int = 1
    isv_svn: int = 1
    debug: bool = False
    signer_public_key: str = ""
    max_message_bytes: int = 256 * 1024 * 1024

    def __post_init__(self) -> None:
        for name in ("isv_prod_id", "isv_svn"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**16:
                raise EnclaveLaunchError(f"{name} must be an integer in [0, 65535]")
        if not isinstance(self.debug, bool):
            raise EnclaveLaunchError("debug must be a bool")
        try:
            if len(bytes.fromhex(self.signer_public_key)) != 32:
                raise ValueError
        except ValueError:
            raise EnclaveLaunchError("signer_public_key must be 32 bytes of hex") from None
        if not 1024 <= self.max_message_bytes <= 2**31:
            raise EnclaveLaunchError("max_message_bytes must be in [1 KiB, 2 GiB]")

    def to_json(self) -> str:
        """Canonical JSON of the configuration (what MRENCLAVE covers)."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> EnclaveConfig:
        """Parse a configuration produced by :meth:`to_json`."""
        try:
            data: dict[str, Any] = json.loads(text)
            return cls(**data)
        except (ValueError, TypeError) as exc:
            raise EnclaveLaunchError(f"malformed enclave configuration: {exc}") from None

    @property
    def mrsigner(self) -> str:
        """sha256 of the signer public key, hex."""
        return mrsigner_of(bytes.fromhex(self.signer_public_key))


def package_dir() -> Path:
    """The directory of the enclave package actually imported by this process."""
    return Path(__file__).resolve().parent


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _source_file(root: Path, name: str) -> Path | None:
    """The regular ``.py`` file under ``root`` that defines module ``name``, if any."""
    parts = name.split(".")
    for candidate in (root.joinpath(*parts, "__init__.py"), root.joinpath(*parts[:-1], f"{parts[-1]}.py")):
        if candidate.is_file() and not candidate.is_symlink():
            resolved = candidate.resolve()
            if resolved.is_relative_to(root):
                return resolved
    return None


def _statements(node: ast.AST) -> Iterator[ast.AST]:
    """Every statement under ``node``, at any depth (imports are statements; expressions,
    which hold most of a syntax tree's nodes, are skipped)."""
    for field in ("body", "orelse", "finalbody", "handlers", "cases"):
        for child in getattr(node, field, ()):
            yield child
            yield from _statements(child)


@functools.lru_cache(maxsize=256)
def _imported_names(name: str, is_package: bool, source: bytes) -> tuple[tuple[str, bool], ...]:
    """(module name, must exist) for every import statement in a module's source; cached by
    content, so a host that launches many enclaves parses each file version once.

    ``from a import b`` yields ``a`` (must exist) and ``a.b`` (a submodule only if it exists)."""
    tree = ast.parse(source)
    package = name if is_package else name.rpartition(".")[0]
    found: list[tuple[str, bool]] = []
    for node in _statements(tree):
        if isinstance(node, ast.Import):
            found.extend((alias.name, True) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            found.append((base, True))
            found.extend((f"{base}.{alias.name}", False) for alias in node.names if alias.name != "*")
    return tuple(found)


def measured_modules(root: Path) -> dict[str, Path]:
    """The enclave's import closure over the repository at ``root``: module name → source file.

    Walks every ``import`` statement (module level and inside functions) of every module
    reached from :data:`ENTRY_MODULE`; a module is repository code when its top-level package
    is first-party or its source lies under ``root``. Raise :class:`EnclaveLaunchError` when
    a first-party module that the enclave imports is missing from ``root``.
    """
    root = Path(root).resolve()
    closure: dict[str, Path] = {}
    pending = [(ENTRY_MODULE, True)]
    while pending:
        name, required = pending.pop()
        if not name or name in closure:
            continue
        top = name.partition(".")[0]
        source = _source_file(root, name)
        if source is None:
            if required and (top in FIRST_PARTY_PACKAGES or _source_file(root, top) is not None):
                raise EnclaveLaunchError(f"the enclave imports {name}, which is not a source module under {root}")
            continue
        closure[name] = source
        prefix = name.rpartition(".")[0]
        if prefix:
            pending.append((prefix, True))  # importing a.b runs a/__init__.py first
        try:
            pending.extend(_imported_names(name, source.name == "__init__.py", source.read_bytes()))
        except (SyntaxError, ValueError):
            raise EnclaveLaunchError(f"{source.relative_to(root)} is not valid Python source") from None
    return closure


def _in_repository(root: Path, path: Path) -> bool:
    """Whether ``path`` is a root-level module or lies in a package folder of ``root`` (a
    virtualenv inside the repository is not repository code)."""
    if not path.is_relative_to(root):
        return False
    parts = path.relative_to(root).parts
    return len(parts) == 1 or (root / parts[0] / "__init__.py").is_file()


def unmeasured_modules(
    root: Path,
    measured: Mapping[str, Path],
    modules: Mapping[str, ModuleType],
    *,
    source_loader: type,
) -> list[str]:
    """Every loaded repository module that is not the measured source, loaded from source.

    A module is repository code when its top-level package is first-party or its file lies
    in ``root`` or one of its packages. It passes only if its name is in ``measured``, its file is exactly the
    measured file and (except the ``__main__`` script) ``source_loader`` loaded it; an empty
    list means the process runs measured code only.
    """
    root = Path(root).resolve()
    problems: list[str] = []
    for name, module in sorted(modules.items()):
        script = name in ("__main__", "__mp_main__")  # multiprocessing aliases the script
        measured_name = ENTRY_MODULE if script else name
        top = measured_name.partition(".")[0]
        filename = getattr(module, "__file__", None)
        path = Path(os.path.realpath(filename)) if isinstance(filename, str) else None
        inside = path is not None and _in_repository(root, path)
        if top not in FIRST_PARTY_PACKAGES and not inside:
            continue
        if path is None:
            problems.append(f"{name} (no source file)")
        elif measured.get(measured_name) != path:
            shown = path.relative_to(root) if inside else path
            problems.append(f"{name} from {shown} (not measured)")
        elif not script:
            spec = getattr(module, "__spec__", None)
            if not isinstance(getattr(spec, "loader", None), source_loader):
                problems.append(f"{name} (not loaded from its measured source)")
    return problems


def measurement_entries(
    package: Path,
    config: EnclaveConfig,
    *,
    closure: Mapping[str, Path] | None = None,
    digests: Mapping[Path, str] | None = None,
) -> list[tuple[str, str]]:
    """The sorted (path, sha256) list MRENCLAVE is computed over: the closure of the enclave
    package at ``package`` within its repository (``package``'s parent), and the config.

    ``closure`` is :func:`measured_modules` of that root when the caller has it already;
    ``digests`` gives the sha256 of the bytes actually compiled per file (the enclave passes
    them, so that it attests what it runs even if a file changes after it was loaded).
    """
    root = Path(package).resolve().parent
    modules = closure if closure is not None else measured_modules(root)
    entries = []
    for path in modules.values():
        digest = digests[path] if digests is not None else _file_digest(path)
        entries.append((path.relative_to(root).as_posix(), digest))
    entries.append(("<config>", hashlib.sha256(config.to_json().encode()).hexdigest()))
    return sorted(entries)


def measure_enclave(
    package: Path,
    config: EnclaveConfig,
    *,
    closure: Mapping[str, Path] | None = None,
    digests: Mapping[Path, str] | None = None,
) -> str:
    """MRENCLAVE (hex) of the enclave package at ``package`` with ``config`` (the keywords
    as in :func:`measurement_entries`)."""
    entries = measurement_entries(package, config, closure=closure, digests=digests)
    return hashlib.sha256(json.dumps(entries, separators=(",", ":")).encode()).hexdigest()


def mrsigner_of(signer_public_key: bytes) -> str:
    """MRSIGNER (hex) = sha256 of the raw Ed25519 signer public key."""
    return hashlib.sha256(signer_public_key).hexdigest()


def _sigstruct_message(mrenclave: str, config: EnclaveConfig) -> bytes:
    return _SIGSTRUCT_CONTEXT + bytes.fromhex(mrenclave) + struct.pack(">HH", config.isv_prod_id, config.isv_svn)


def sign_sigstruct(mrenclave: str, config: EnclaveConfig, signer: Ed25519PrivateKey) -> bytes:
    """The developer's signature over (MRENCLAVE, product id, SVN)."""
    public = signer.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    if public.hex() != config.signer_public_key:
        raise EnclaveLaunchError("the signing key does not match the config's signer_public_key")
    return signer.sign(_sigstruct_message(mrenclave, config))


def verify_sigstruct(mrenclave: str, config: EnclaveConfig, signature: bytes) -> None:
    """EINIT's check: the SIGSTRUCT signs exactly this measurement; raise otherwise."""
    key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(config.signer_public_key))
    try:
        key.verify(signature, _sigstruct_message(mrenclave, config))
    except InvalidSignature:
        raise EnclaveLaunchError("EINIT failed: the SIGSTRUCT does not sign this enclave's measurement") from None
