"""DOV4CL through the service: what an audit costs the first time and once its shadows are kept.

    python benchmarks/bench_ownership_service.py [--suspects positive:17000,negative:17100]
        [--port 8787] [--workers 1]

A live appliance on loopback (``appliance serve``, its embedded defaults), the robustness
benchmark's independently trained suspects (``bench_ownership_robustness.py``: trained here if
its cache lacks them) registered as ONNX, each with its own owner's released and private sets
and the alternative set for the shadows, all on the digits' own 0..16 scale. Each suspect is
audited twice with the documented defaults (``shadow_training: {"dataset_id": ...}``): three
recipe shadows and one student distilled from the suspect. The first audit of the run trains
the recipe's shadows, the first audit of each suspect distils its student; the second audit of
a suspect takes both as kept (registered shadows, the kept student). Prints, per audit, the
job's wall time from submission to its signed report, where the worker's time went, the
queries spent, the verdict, and the ratio of the audit to the bare forward passes of its
queries (the suspect's and the shadows', timed inside the same audit: the baseline).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import live_appliance, table  # noqa: E402
from bench_ownership_robustness import digits_native, owner_sets, suspect_onnx, train_suspect  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suspects", default="positive:17000,negative:17100",
                        help="role:seed of the robustness benchmark's suspects, comma-separated")
    parser.add_argument("--port", type=int, default=8787)
    parser.add_argument("--workers", type=int, default=1, help="the appliance's job workers")
    args = parser.parse_args()
    from appliance.client import Client

    suspects = [(role, int(seed)) for role, seed in (item.split(":") for item in args.suspects.split(","))]
    for task in suspects:
        train_suspect(task)  # cached by the robustness benchmark; trained here if missing
    _, _, alt = digits_native()
    rows = []
    with tempfile.TemporaryDirectory() as home, \
            live_appliance(Path(home), port=args.port, workers=args.workers) as (url, token):
        client = Client(url, token=token, timeout=120)
        shadow_data = client.upload_dataset({"x": alt}, name="alternative")
        for role, seed in suspects:
            path = Path(home) / f"{role}-{seed}.onnx"
            path.write_bytes(suspect_onnx(role, seed))
            model = client.upload_model(path, name=f"{role}-{seed}", kind="encoder")
            public, private = owner_sets(seed)
            pub = client.upload_dataset({"x": public}, name=f"pub-{seed}")
            pvt = client.upload_dataset({"x": private}, name=f"pvt-{seed}")
            for attempt in ("first", "again"):
                started = time.perf_counter()
                job = client.ownership.audit("dov4cl", suspect_model_id=model.id, public_dataset_id=pub.id,
                                             private_dataset_id=pvt.id, seed=seed,
                                             shadow_training={"dataset_id": shadow_data.id})
                result = client.ownership.wait(job, timeout=3600)
                wall = time.perf_counter() - started
                body = result.bundle["report"]
                timings, stats, shadows = body["timings"], body["statistics"], body["inputs"]["shadows"]
                bare = timings["suspect_query_s"] + timings["shadow_query_s"]
                distilled = shadows["distilled"]
                rows.append([
                    f"{role} {seed}, {attempt}", f"{wall:.1f} s", f"{timings['shadow_seconds']:.1f} s",
                    f"{shadows['trained']} trained, {shadows['reused']} kept",
                    f"{distilled['distilled']} distilled, {distilled['reused']} kept",
                    stats["queries"], f"{result.verdict} (p = {result.p_value:.4f})",
                    f"{timings['audit_seconds']:.1f} s = {timings['audit_seconds'] / bare:.2f}x ({bare:.1f} s)",
                ])
                print("  " + " | ".join(str(c) for c in rows[-1]), flush=True)
    print()
    print(table("DOV4CL through the service, the documented defaults (3 recipe shadows + 1 distilled)",
                ["audit", "submission to report", "shadows ready in", "recipe shadows", "students",
                 "suspect queries", "verdict", "worker's time = x bare forward (its queries)"], rows))


if __name__ == "__main__":
    main()
