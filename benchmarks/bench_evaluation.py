"""Evaluation job wall time vs. the bare forward passes of the same model, in one run.

For each model the script builds a fresh appliance home (``create_app`` over a temporary
folder), uploads the model and the dataset through the Flask test client, then times, per
repetition:

- **bare forward**: the framework alone (an ``onnxruntime.InferenceSession``, the torch
  module, or tokenizer + transformers model) over the same data with the same batch size,
  model already in memory, nothing else;
- **job wall**: ``POST /v1/jobs`` through the real API, then the job message run by the
  real worker code (``appliance._internal.jobs.runner.execute_job`` with a ``LocalSink`` and ``LocalBlobs``),
  until the job row is ``succeeded`` and its signed report is stored and logged. This
  includes loading the model and the dataset from the blob store, the metrics, progress
  events and the report signing.

Cases: (a) a digits MLP (64-1024-1024-10, trained here) exported as an ONNX graph, on digits
replicated with noise to 200k rows; (b) a trained ``small_cnn`` uploaded as safetensors on the
same rows; (c) all-MiniLM-L6-v2 (offline package) embedding ~512 real texts (docstrings of
standard-library modules). Each of ``--reps`` repetitions runs one bare pass and one job back
to back; the table shows medians, and the ratio is the median of the per-pair ratios (robust
to the drifting load of a shared machine). The first (cold) job, which pays first-use
caches, runs before the timed pairs and is shown apart.

    .venv/bin/python benchmarks/bench_evaluation.py [--quick] [--reps N]
"""

from __future__ import annotations

import argparse
import inspect
import io
import os
import statistics
import sys
import tarfile
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import table  # noqa: E402  (sets sys.path for the repo and tests/)
from support import auth, digits_split, npz_bytes  # noqa: E402

GOAL = 1.2


# -- data and models (trained here, seeded) -----------------------------------------------------
def replicated_digits(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """All 1797 digits repeated to ``rows`` rows, each copy with small Gaussian noise."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(x), size=rows)
    noisy = x[index] + rng.normal(0.0, 0.05, size=(rows, x.shape[1])).astype(np.float32)
    return np.clip(noisy, 0.0, 1.0).astype(np.float32), y[index].astype(np.int64)


def _train(module: torch.nn.Module, epochs: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    x_tr, _, y_tr, _ = digits_split(seed)
    x, y = torch.from_numpy(x_tr), torch.from_numpy(y_tr)
    optimiser = torch.optim.Adam(module.parameters(), lr=2e-3)
    module.train()
    for _ in range(epochs):
        order = torch.randperm(len(x))
        for start in range(0, len(x), 64):
            batch = order[start:start + 64]
            optimiser.zero_grad()
            torch.nn.functional.cross_entropy(module(x[batch]), y[batch]).backward()
            optimiser.step()
    return module.eval()


def mlp_onnx_bytes(hidden: int = 1024) -> bytes:
    """A trained 64-h-h-10 ReLU MLP written as a plain ONNX graph (logits out)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from models.architectures import create_architecture

    net = _train(create_architecture("mlp", {"in_features": 64, "hidden": [hidden, hidden],
                                             "num_classes": 10}), epochs=10)
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    nodes, inits, current = [], [], "x"
    for i, layer in enumerate(linears):
        w = layer.weight.detach().numpy().T.copy()
        b = layer.bias.detach().numpy().copy()
        inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(b, f"b{i}")]
        last = i == len(linears) - 1
        nodes.append(helper.make_node("MatMul", [current, f"W{i}"], [f"xw{i}"]))
        nodes.append(helper.make_node("Add", [f"xw{i}", f"b{i}"], ["logits" if last else f"a{i}"]))
        if not last:
            nodes.append(helper.make_node("Relu", [f"a{i}"], [f"h{i}"]))
        current = f"h{i}"
    graph = helper.make_graph(
        nodes, "digits_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 10])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


CNN_CONFIG = {"in_channels": 1, "image_size": 8, "num_classes": 10, "width": 16}


def small_cnn_safetensors() -> bytes:
    from safetensors.torch import save

    from models.architectures import create_architecture

    net = _train(create_architecture("small_cnn", CNN_CONFIG), epochs=10)
    return bytes(save({k: v.contiguous() for k, v in net.state_dict().items()}))


def stdlib_docstrings(limit: int) -> np.ndarray:
    """Up to ``limit`` distinct real texts: docstrings of standard-library names."""
    import collections
    import functools
    import itertools
    import json
    import pathlib
    import re
    import string
    import textwrap

    texts: list[str] = []
    seen: set[str] = set()
    for module in (os, json, re, collections, itertools, functools, pathlib, textwrap, string,
                   inspect, io, statistics, tarfile, tempfile, argparse):
        objects = [module] + [getattr(module, n) for n in sorted(dir(module))
                              if not n.startswith("_")]
        for obj in objects:
            members = [obj] + ([getattr(obj, n, None) for n in sorted(vars(obj))
                                if not n.startswith("_")] if inspect.isclass(obj) else [])
            for member in members:
                doc = inspect.getdoc(member) if member is not None else None
                if doc and len(doc) > 20 and doc not in seen:
                    seen.add(doc)
                    texts.append(doc)
                    if len(texts) == limit:
                        return np.array(texts)
    return np.array(texts)


def tar_folder(folder: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                tar.add(path, arcname=path.relative_to(folder).as_posix(), recursive=False)
    return buf.getvalue()


# -- bare forward passes --------------------------------------------------------------------------
def bare_onnx(model_bytes: bytes, device: str) -> Callable[[np.ndarray, int], np.ndarray]:
    import onnxruntime as ort

    from models.device import onnx_providers

    session = ort.InferenceSession(model_bytes, providers=onnx_providers(device))

    def forward(x: np.ndarray, batch_size: int) -> np.ndarray:
        return np.concatenate([session.run(None, {"x": x[s:s + batch_size]})[0]
                               for s in range(0, len(x), batch_size)])

    return forward


def bare_torch(weights: bytes, device: str) -> Callable[[np.ndarray, int], np.ndarray]:
    from safetensors.torch import load

    from models.architectures import create_architecture

    net = create_architecture("small_cnn", CNN_CONFIG)
    net.load_state_dict(load(weights))
    net.eval().to(device)

    def forward(x: np.ndarray, batch_size: int) -> np.ndarray:
        host = torch.from_numpy(x)
        with torch.inference_mode():
            return torch.cat([net(host[s:s + batch_size].to(device)).cpu()
                              for s in range(0, len(x), batch_size)]).numpy()

    return forward


def bare_minilm(device: str) -> Callable[[np.ndarray, int], np.ndarray]:
    """Tokenizer + encoder + mean pooling + L2 norm, longest texts first (as
    sentence-transformers batches them)."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from models.hub import minilm_dir

    hf_logging.disable_progress_bar()

    folder = minilm_dir()
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModel.from_pretrained(folder, local_files_only=True).eval().to(device)

    def forward(x: np.ndarray, batch_size: int) -> np.ndarray:
        texts = x.tolist()
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out = []
        with torch.inference_mode():
            for s in range(0, len(texts), batch_size):
                enc = tokenizer([texts[j] for j in order[s:s + batch_size]], padding=True,
                                truncation=True, max_length=256, return_tensors="pt").to(device)
                hidden = model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).float()
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(pooled, dim=1).cpu())
        result = np.empty((len(texts), out[0].shape[1]), np.float32)
        result[order] = torch.cat(out).numpy()
        return result

    return forward


# -- the appliance side -------------------------------------------------------------------------
@dataclass
class Appliance:
    """A Flask app over a temporary home whose jobs run inline through ``execute_job``."""

    home: Path
    settings: Any = None
    app: Any = None
    client: Any = None
    token: str = ""
    messages: list[dict[str, Any]] = field(default_factory=list)
    spent: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def __post_init__(self) -> None:
        from support import make_token

        from appliance._internal.config import Settings
        from appliance._internal.jobs.blobs import LocalBlobs
        from appliance._internal.jobs.events import LocalSink
        from appliance._internal.web.app import create_app

        self.settings = Settings(home=self.home, rate_limit="1000000 per minute",
                                 log_level="WARNING", max_upload_bytes=1 << 30)
        self.app = create_app(self.settings, {"TESTING": True})
        self.app.extensions["appliance.enqueue"] = self.messages.append
        self.client = self.app.test_client()
        self.token = make_token(self.settings, "bench")
        spent = self.spent

        class TimedSink(LocalSink):
            def emit(self, event: dict[str, Any]) -> bool:
                start = time.perf_counter()
                try:
                    return super().emit(event)
                finally:
                    spent[event["event"]] += time.perf_counter() - start

            def is_cancelled(self, job_id: str) -> bool:
                start = time.perf_counter()
                try:
                    return super().is_cancelled(job_id)
                finally:
                    spent["is_cancelled"] += time.perf_counter() - start

        self.sink = TimedSink(self.settings)
        self.blobs = LocalBlobs(self.sink.store)

    def upload_model(self, data: bytes, filename: str, **form: str) -> str:
        resp = self.client.post("/v1/models", headers=auth(self.token),
                                data={**form, "file": (io.BytesIO(data), filename)},
                                content_type="multipart/form-data")
        assert resp.status_code == 201, resp.get_json()
        return str(resp.get_json()["id"])

    def upload_dataset(self, data: bytes) -> str:
        resp = self.client.post("/v1/datasets", headers=auth(self.token),
                                data={"name": "bench", "file": (io.BytesIO(data), "d.npz")},
                                content_type="multipart/form-data")
        assert resp.status_code == 201, resp.get_json()
        return str(resp.get_json()["id"])

    def run_job(self, params: dict[str, Any]) -> dict[str, float]:
        """Submit through the API and run the job through the worker code; returns the wall
        time and its parts."""
        from appliance._internal.jobs.runner import execute_job

        self.spent.clear()
        start = time.perf_counter()
        resp = self.client.post("/v1/jobs", headers=auth(self.token),
                                json={"kind": "evaluation", "params": params})
        submitted = time.perf_counter() - start
        assert resp.status_code == 202, resp.get_json()
        state = execute_job(self.settings, self.messages.pop(), sink=self.sink, blobs=self.blobs)
        store = self.sink.store()
        row = store.conn.execute(
            "SELECT j.state, r.envelope, r.log_index FROM jobs j JOIN reports r "
            "ON r.id = j.report_id WHERE j.id=?", (resp.get_json()["id"],)).fetchone()
        wall = time.perf_counter() - start
        assert state == "succeeded" and row is not None and row["state"] == "succeeded", state
        from appliance._internal.reports import report_body

        report = report_body({"envelope": row["envelope"]})
        timings, stats = report["timings"], report["statistics"]
        # Classifier reports split the evaluation into the forward passes and the metrics;
        # an encoder's evaluation is its forward passes plus the embeddings artifact.
        forward = float(stats.get("forward_seconds", timings["evaluate_seconds"]))
        events = sum(v for k, v in self.spent.items() if k != "succeeded")
        parts = {"wall": wall, "submit": submitted, "load": timings["load_seconds"],
                 "forward": forward, "rest of evaluate": timings["evaluate_seconds"] - forward,
                 "sign": self.spent["succeeded"]}
        parts["other"] = wall - sum(v for k, v in parts.items() if k != "wall")
        parts["events"] = events  # progress/log/claim/cancel checks, inside the parts above
        return parts


@dataclass
class Case:
    name: str
    backend: str
    x: np.ndarray
    y: np.ndarray | None
    batch_size: int
    bare: Callable[[np.ndarray, int], np.ndarray]
    upload: Callable[[Appliance], str]


def measure(case: Case, reps: int, workdir: Path, device: str) -> list[Any]:
    appliance = Appliance(workdir / case.name)
    model_id = case.upload(appliance)
    arrays = {"x": case.x} if case.y is None else {"x": case.x, "y": case.y}
    dataset_id = appliance.upload_dataset(npz_bytes(**arrays))
    params = {"model_id": model_id, "dataset_id": dataset_id, "batch_size": case.batch_size,
              "device": device}
    cold = appliance.run_job(params)["wall"]
    case.bare(case.x, case.batch_size)  # warm-up
    bare_times: list[float] = []
    jobs: list[dict[str, float]] = []
    for _ in range(reps):  # interleaved, so drifting machine load hits both alike
        start = time.perf_counter()
        case.bare(case.x, case.batch_size)
        bare_times.append(time.perf_counter() - start)
        jobs.append(appliance.run_job(params))
    bare = statistics.median(bare_times)
    med = {k: statistics.median(j[k] for j in jobs) for k in jobs[0]}
    # Each repetition pairs one bare run with one job run, back to back; the median of the
    # per-pair ratios cancels most of the drift of a shared machine.
    ratio = statistics.median(j["wall"] / b for j, b in zip(jobs, bare_times, strict=True))
    return [case.name, case.backend, len(case.x), case.batch_size, bare, med["wall"],
            f"{ratio:.2f}x", med["submit"], med["load"], med["forward"],
            med["rest of evaluate"], med["sign"], med["other"], med["events"], cold]


def build_cases(quick: bool, device: str, only: str | None) -> list[Case]:
    """The benchmark cases (only ``only`` when given: the others' models are not built)."""
    rows = 40_000 if quick else 200_000
    x, y = replicated_digits(rows)
    cases: list[Case] = []
    if only in (None, "digits-mlp"):
        onnx_bytes = mlp_onnx_bytes()
        cases.append(Case("digits-mlp", "onnx", x, y, 1024, bare_onnx(onnx_bytes, device),
                          lambda a: a.upload_model(onnx_bytes, "mlp.onnx", name="digits-mlp")))
    if only in (None, "digits-small_cnn"):
        import json

        cnn_bytes = small_cnn_safetensors()
        cases.append(Case("digits-small_cnn", "torch", x, y, 1024, bare_torch(cnn_bytes, device),
                          lambda a: a.upload_model(cnn_bytes, "cnn.safetensors", name="digits-cnn",
                                                   format="safetensors", architecture="small_cnn",
                                                   config=json.dumps(CNN_CONFIG))))
    if only in (None, "all-MiniLM-L6-v2"):
        from models.hub import minilm_dir

        texts = stdlib_docstrings(128 if quick else 512)
        cases.append(Case("all-MiniLM-L6-v2", "transformers", texts, None, 64, bare_minilm(device),
                          lambda a: a.upload_model(tar_folder(minilm_dir()), "minilm.tar", name="minilm",
                                                   format="transformers")))
    if not cases:
        raise SystemExit(f"no case named {only!r}")
    return cases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rows and texts")
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions (median)")
    parser.add_argument("--only", default=None, help="run only the case with this name")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto: the job's device and the bare pass's")
    args = parser.parse_args(argv)
    from models.device import choose_device

    device = choose_device(args.device)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
        for case in build_cases(args.quick, device, args.only):
            rows.append(measure(case, args.reps, Path(tmp), device))
    print(table(
        f"Evaluation job vs. bare forward on {device} (medians of {args.reps} interleaved pairs; torch "
        f"threads 1; goal <= {GOAL}x)",
        ["model", "backend", "rows", "batch", "bare fwd s", "job wall s", "ratio", "submit s",
         "load s", "job fwd s", "metrics s", "sign s", "other s", "events s", "cold job s"],
        rows,
    ))
    print("ratio: median over pairs of job wall / bare forward. job wall = submit (POST "
          "/v1/jobs) + load (model + dataset from the blob store) + job fwd (forward passes "
          "in the job, progress callbacks included; for an encoder also the embeddings artifact) "
          "+ metrics (classifiers) + sign (report signed, logged, stored) + other. events: time inside the job's "
          "progress/log/cancel-check store calls, already counted in the parts. cold job: the "
          "first job of the home (first-use caches, transformers tar extraction).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
