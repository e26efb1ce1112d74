"""Enclave process: ``python -m enclave --platform-dir D --config-json J --sigstruct S``.

Requests arrive on stdin and replies leave on stdout (frames of :mod:`enclave.protocol`);
anything else the process prints goes to stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """Start the enclave: measure, check the SIGSTRUCT (EINIT), then serve."""
    parser = argparse.ArgumentParser(prog="python -m enclave")
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

    from enclave.errors import EnclaveError
    from enclave.measurement import EnclaveConfig
    from enclave.runtime import EnclaveRuntime, serve

    try:
        runtime = EnclaveRuntime(
            platform_dir=Path(args.platform_dir),
            config=EnclaveConfig.from_json(args.config_json),
            sigstruct=bytes.fromhex(args.sigstruct),
            state_dir=Path(args.state_dir) if args.state_dir else None,
        )
    except (EnclaveError, ValueError) as exc:
        print(f"enclave: EINIT failed: {exc}", file=sys.stderr)
        return 3
    serve(runtime, channel_in, channel_out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
