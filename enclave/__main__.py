"""Enclave process: ``python -B -I <root>/enclave/__main__.py --platform-dir D --config-json J
--sigstruct S`` (what :meth:`enclave.host.EnclaveClient.launch` runs).

Run as a script in isolated mode, this file is the only code that starts before the repository
is sealed: it puts the repository root (the parent of this file's folder) first on the path,
makes every repository module compile from its source file (no bytecode is read from or
written to ``__pycache__``; no extension module or sourceless ``.pyc`` can stand in for a
measured file), imports the measured closure, and refuses to start (exit status 3) if any
repository module other than the measured ones is loaded. Afterwards the root leaves the path
and further imports of first-party packages are refused.

Requests arrive on stdin and replies leave on stdout (frames of :mod:`enclave.protocol`);
anything else the process prints goes to stderr, which never carries exception messages.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.abc
import importlib.machinery
import os
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from types import CodeType, ModuleType, TracebackType
from typing import ClassVar

#: Exit status when the enclave refuses to start.
EXIT_REFUSED = 3


class SourceOnlyLoader(importlib.machinery.SourceFileLoader):
    """Loads a repository module by compiling its measured source; never touches bytecode."""

    #: sha256 (hex) of the exact bytes compiled, per source file: what MRENCLAVE is taken over
    compiled: ClassVar[dict[Path, str]] = {}

    def get_code(self, fullname: str) -> CodeType:
        """The module's code, compiled from the source file itself."""
        path = self.get_filename(fullname)
        source = self.get_data(path)
        SourceOnlyLoader.compiled[Path(os.path.realpath(path))] = hashlib.sha256(source).hexdigest()
        return self.source_to_code(source, path)


def _repository_path_hook(root: str) -> Callable[[str], importlib.abc.PathEntryFinder]:
    """A path hook that finds only ``.py`` sources (with :class:`SourceOnlyLoader`) in ``root``
    and inside its top-level packages; other path entries (the standard library, and
    site-packages even when a virtualenv lies inside the repository) fall through to Python's
    own hooks."""

    def hook(entry: str) -> importlib.abc.PathEntryFinder:
        real = os.path.realpath(entry or ".")
        top = real[len(root) + 1 :].split(os.sep, 1)[0] if real.startswith(root + os.sep) else ""
        if real != root and not (top and os.path.isfile(os.path.join(root, top, "__init__.py"))):
            raise ImportError("not the repository")
        return importlib.machinery.FileFinder(entry, (SourceOnlyLoader, [".py"]))

    return hook


class _SealedRepository(importlib.abc.MetaPathFinder):
    """After start-up, refuses any first-party module that was not imported (and checked) then."""

    def __init__(self, packages: frozenset[str]) -> None:
        self._packages = packages

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        """Raise for a first-party module; let anything else through to the next finder."""
        if fullname.partition(".")[0] in self._packages:
            raise ImportError(f"{fullname} is not part of the measured enclave")
        return None


def _quiet_excepthook(kind: type[BaseException], exc: BaseException | None, tb: TracebackType | None) -> None:
    """Print where an uncaught exception happened and its type, never its message (values)."""
    frames = "".join(traceback.format_tb(tb))
    print(f"Traceback (most recent call last):\n{frames}{kind.__name__}", file=sys.stderr)


def _seal_imports(root: str) -> None:
    sys.dont_write_bytecode = True
    sys.path.insert(0, root)
    sys.path_hooks.insert(0, _repository_path_hook(root))
    sys.path_importer_cache.clear()


def main(argv: list[str] | None = None) -> int:
    """Start the enclave: load and check the measured code, check the SIGSTRUCT (EINIT), serve."""
    sys.excepthook = _quiet_excepthook
    threading.excepthook = lambda args: _quiet_excepthook(args.exc_type, args.exc_value, args.exc_traceback)
    sys.unraisablehook = lambda args: _quiet_excepthook(args.exc_type, args.exc_value, args.exc_traceback)
    parser = argparse.ArgumentParser(prog="enclave")
    parser.add_argument("--platform-dir", required=True)
    parser.add_argument("--config-json", required=True)
    parser.add_argument("--sigstruct", required=True, help="hex Ed25519 signature")
    parser.add_argument("--state-dir", default=None, help="keeps the sealed enclave key")
    args = parser.parse_args(argv)
    channel_in = os.fdopen(os.dup(sys.stdin.fileno()), "rb", buffering=0)
    channel_out = os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=0)
    # Nothing but frames may reach the channel: route stray prints to stderr.
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr

    if not sys.flags.isolated:  # PYTHON* variables and the user site could inject code
        print("enclave: EINIT failed: start the enclave with python -B -I", file=sys.stderr)
        return EXIT_REFUSED
    root = os.path.realpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
    _seal_imports(root)

    from enclave.errors import EnclaveError
    from enclave.measurement import (
        ENTRY_MODULE,
        FIRST_PARTY_PACKAGES,
        EnclaveConfig,
        measured_modules,
        unmeasured_modules,
    )

    try:
        measured = measured_modules(Path(root))
        for name in sorted(measured):
            if name != ENTRY_MODULE:  # the entry module is this script, already running
                importlib.import_module(name)
    except EnclaveError as exc:
        print(f"enclave: EINIT failed: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    problems = unmeasured_modules(Path(root), measured, dict(sys.modules), source_loader=SourceOnlyLoader)
    if problems:
        print(f"enclave: EINIT failed: unmeasured code is loaded: {', '.join(problems)}", file=sys.stderr)
        return EXIT_REFUSED
    # attest the bytes that were compiled (this script: as read now, just after it started)
    digests = dict(SourceOnlyLoader.compiled)
    script = measured[ENTRY_MODULE]
    digests[script] = hashlib.sha256(script.read_bytes()).hexdigest()
    if missing := sorted(name for name, path in measured.items() if path not in digests):
        print(f"enclave: EINIT failed: not compiled from source: {', '.join(missing)}", file=sys.stderr)
        return EXIT_REFUSED
    sys.path.remove(root)
    sys.path_importer_cache.clear()
    sys.meta_path.insert(0, _SealedRepository(FIRST_PARTY_PACKAGES))

    from enclave.runtime import EnclaveRuntime, serve

    try:
        runtime = EnclaveRuntime(
            platform_dir=Path(args.platform_dir),
            config=EnclaveConfig.from_json(args.config_json),
            sigstruct=bytes.fromhex(args.sigstruct),
            state_dir=Path(args.state_dir) if args.state_dir else None,
            closure=measured,
            digests=digests,
        )
    except (EnclaveError, ValueError) as exc:
        print(f"enclave: EINIT failed: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    serve(runtime, channel_in, channel_out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
