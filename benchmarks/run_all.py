"""Run every benchmark in turn and print their tables (``make bench``).

    python benchmarks/run_all.py [--full]

Without ``--full`` each benchmark runs its ``--quick`` variant where it has one (the full
ownership benchmark trains dozens of models and takes about 20 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = [
    ("bench_api.py", []),
    ("bench_evaluation.py", ["--quick"]),
    ("bench_private_inference.py", ["--quick"]),
    ("bench_refinement.py", ["--quick"]),
    ("bench_ownership.py", ["--quick"]),
    ("bench_unlearning.py", ["--quick"]),
]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--full", action="store_true", help="run the full variants")
    args = parser.parse_args()
    failed = []
    for script, quick in BENCHMARKS:
        argv = [sys.executable, str(HERE / script), *([] if args.full else quick)]
        print(f"\n=== {script} {' '.join(argv[2:])}", flush=True)
        started = time.perf_counter()
        if subprocess.run(argv, cwd=HERE.parent).returncode != 0:
            failed.append(script)
        print(f"=== {script}: {time.perf_counter() - started:.0f} s", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
