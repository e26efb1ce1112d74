"""Benchmark: the SDK's ``private_predict`` end to end (embedding included) against a live server.

    python benchmarks/bench_private_client.py [--texts 240] [--members 8]

One live appliance on loopback (gunicorn, 2 workers), one ensemble of K linear heads over
MiniLM (384-d, 10 classes; random heads, seeded), ``--texts`` paragraphs of standard-library
docstrings. Rows, all in the same run:

- **before**: the path as it was: PyTorch MiniLM loaded inside the call (a fresh Client per
  call, as the CLI does), every template prompt embedded in one PyTorch pass, keys generated,
  session left open;
- **now, first call**: ONNX Runtime MiniLM loaded in this call (its graph cached on disk by the
  load probe before), keys generated, session opened and closed;
- **now, warm process**: encoder and keys already loaded in the process (a second call);
- **8-bit encoder ensemble**: the same heads registered over ``MINILM_INT8`` (MiniLM with 8-bit
  matrix weights), first and second call: labels checked against the plaintext argmax of that
  encoder's embeddings (a table also times both encoders alone, in turn);
- **8-bit encoder, label output**: the same 8-bit heads registered with ``output="label"``
  (each request answered in two rounds, the client learning the labels only), warm;
- **warm, all texts embedded first**: the same with every text embedded before the first
  request is encrypted (the path before requests were sent while later texts embed);
- **now, key store**: a fresh Client in the same process reading its keys from the key store.

A table then times the embedding alone and sets it against an ONNX Runtime MatMul of the
encoder's feed-forward shape on this machine: the multiply-adds the prompts need divided by
that rate bound the texts/s of any fp32 client here, whatever the encryption and the server do.

Each row reports wall time, this process's CPU time (the server's is apart), queries/s and
label agreement with the plaintext argmax of the same embeddings. Before them, a fresh process
loads each encoder twice (the second ONNX load reads the cached graph). The machine's load
average is printed, as timings on a shared machine are inflated. A last table gives the server's
throughput on wide batches of 16 and 64 queries (encrypted beforehand): one session's requests
one after the other, and two sessions posting at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import importlib
import inspect
import os
import re
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import ROOT, live_appliance, table  # (puts tests/ on sys.path)
from support import free_port

MODULES = ("os", "pathlib", "threading", "socket", "calendar", "json", "shutil", "subprocess",
           "argparse", "logging", "collections", "functools", "email.message", "http.client")


_ROFF_ESCAPE = re.compile(r"\\f[BIRP]|\\f\(..|\\\(..|\\[-&e|^]|\\s[-+]?\d")


def man_paragraphs(count: int, folder: Path = Path("/usr/share/man/man1")) -> list[str]:
    """Paragraphs (80-800 characters) of the machine's section-1 man pages, roff stripped,
    files in name order: the kind of text the issue measured on."""
    found: list[str] = []
    for path in sorted(folder.glob("*.gz")) if folder.is_dir() else []:
        try:
            text = gzip.decompress(path.read_bytes()).decode("utf-8", "replace")
        except (OSError, EOFError):
            continue
        para: list[str] = []
        for line in [*text.splitlines(), ".PP"]:
            if line.startswith((".", "'")) or not line.strip():
                joined = " ".join(_ROFF_ESCAPE.sub("", " ".join(para)).split())
                if 80 <= len(joined) <= 800 and "\\" not in joined:
                    found.append(joined)
                para = []
            else:
                para.append(line)
        if len(dict.fromkeys(found)) >= count:
            break
    return list(dict.fromkeys(found))[:count]


def public_objects(name: str) -> list[object]:
    """Module ``name``'s public objects (its ``__all__`` where it has one) and their classes'
    public methods, in a fixed order, whatever else this process imported: submodules that
    something else imported are attributes too, and other packages patch methods in
    (transformers adds ``Logger.warning_once``)."""
    module = importlib.import_module(name)
    public = getattr(module, "__all__", None)
    objs = [o for a, o in sorted(vars(module).items()) if not a.startswith("_") and (public is None or a in public)]
    return objs + [m for o in objs if inspect.isclass(o) for a, m in sorted(vars(o).items())
                   if not a.startswith("_") and getattr(m, "__module__", name) in (name, o.__module__)]


def docstring_paragraphs(count: int) -> list[str]:
    """``count`` paragraphs of :func:`labelled_paragraphs` (every module, no cap), in a fixed
    shuffled order: the texts where the man pages are missing."""
    texts, _ = labelled_paragraphs(per_module=10**6)
    order = np.random.default_rng(0).permutation(len(texts))
    return [texts[i] for i in order[:count]]


def paragraphs(count: int) -> tuple[str, list[str]]:
    texts = man_paragraphs(count)
    if len(texts) == count:
        return "man-page paragraphs", texts
    texts = docstring_paragraphs(count)
    if len(texts) < count:
        raise SystemExit(f"only {len(texts)} paragraphs found, asked for {count}")
    return "docstring paragraphs", texts


def encoder_bound(texts: list[str], templates: list[str], *, repeats: int = 2) -> list[list[object]]:
    """The client's embedding against this machine's fp32 matrix rate.

    Counts the multiply-adds of every prompt as :meth:`OnnxSentenceEncoder.embed` runs it
    (sorted by length, batches of 8, each padded to its longest): per token and layer the four
    attention projections, the two feed-forward products and the attention itself. Times that
    embedding, and an ONNX Runtime MatMul of the feed-forward shape (8 prompts of the mean
    length by the first feed-forward weight) under the same session options: the encoder
    cannot beat that rate, so ``texts/s at that rate`` bounds any fp32 client on this machine.
    """
    import json

    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from crypto.private_inference.templates import render_templates
    from models.hub import minilm_dir
    from models.sentence_onnx import OnnxSentenceEncoder

    encoder = OnnxSentenceEncoder.from_transformers_dir(minilm_dir())
    config = json.loads((minilm_dir() / "config.json").read_text())
    layers, d, ff = (int(config[k]) for k in ("num_hidden_layers", "hidden_size", "intermediate_size"))
    prompts = [p for t in texts for p in render_templates(templates, t)]
    lengths = sorted((len(i) for i in encoder.tokenizer(
        prompts, truncation=True, max_length=encoder.max_length)["input_ids"]), reverse=True)
    flops = 0
    for start in range(0, len(lengths), 8):
        batch = lengths[start:start + 8]
        tokens = batch[0]  # padded to the longest
        flops += len(batch) * tokens * layers * (2 * (4 * d * d + 2 * d * ff) + 4 * tokens * d)
    rows_m = 8 * round(float(np.mean(lengths)))
    w = np.random.default_rng(0).standard_normal((d, ff)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "ffn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", d])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", ff])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    matmul = ort.InferenceSession(model.SerializeToString(), options,
                                  providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((rows_m, d)).astype(np.float32)
    rows: list[list[object]] = []
    encoder.embed(prompts[:64])  # warm
    for _ in range(repeats):  # interleaved: the machine's speed drifts
        wall = time.perf_counter()
        encoder.embed(prompts)
        wall = time.perf_counter() - wall
        runs = 0
        gemm = time.perf_counter()
        while runs < 20 or time.perf_counter() - gemm < 1.0:
            matmul.run(None, {"x": x})
            runs += 1
        gemm = time.perf_counter() - gemm
        peak = runs * 2 * rows_m * d * ff / gemm / 1e9
        rows.append([len(prompts), sum(lengths), f"{flops / 1e9:.0f}", wall, len(texts) / wall,
                     flops / wall / 1e9, peak, peak * 1e9 * len(texts) / flops])
    return rows


def precision_rows(texts: list[str], templates: list[str], *, repeats: int = 2) -> list[list[object]]:
    """The client's embedding of every template prompt with the float and the 8-bit encoder,
    in turn (``repeats`` each), and how far apart their embeddings are."""
    from appliance.client.inference import default_text_encoder
    from crypto.private_inference.templates import render_templates

    prompts = [p for t in texts for p in render_templates(templates, t)]
    encoders = {"fp32": default_text_encoder("fp32"), "int8": default_text_encoder("int8")}
    out: dict[str, list[float]] = {name: [] for name in encoders}
    emb: dict[str, np.ndarray] = {}
    for _ in range(repeats):
        for name, encode in encoders.items():
            wall = time.perf_counter()
            emb[name] = encode(prompts)
            out[name].append(len(texts) / (time.perf_counter() - wall))
    a, b = emb["fp32"], emb["int8"]
    cosine = np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    rates = [max(r) for r in out.values()]
    return [[name, len(prompts), " / ".join(f"{r:.1f}" for r in runs)] for name, runs in out.items()] + [
        ["int8 / fp32", "", f"{rates[1] / rates[0]:.2f}x (best runs); cosine min {cosine.min():.4f}, "
                            f"median {np.median(cosine):.4f}"]]


def labelled_paragraphs(per_module: int = 80) -> tuple[list[str], np.ndarray]:
    """Every paragraph (>= 80 characters) of the docstrings of :data:`MODULES`' public objects
    and their methods, labelled by module (at most ``per_module`` each, deduplicated); the same
    set whatever else the process imported."""
    texts: dict[str, int] = {}
    for index, name in enumerate(MODULES):
        objs = public_objects(name)
        found = 0
        for obj in objs:
            for para in (inspect.getdoc(obj) or "").split("\n\n"):
                para = " ".join(para.split())
                if len(para) >= 80 and para not in texts and found < per_module:
                    texts[para] = index
                    found += 1
    return list(texts), np.asarray(list(texts.values()))


def task_rows(splits: int = 5) -> list[list[object]]:
    """A real task for both encoders: which of :data:`MODULES` a docstring paragraph documents
    (:func:`labelled_paragraphs`; a logistic regression per encoder trained on a random half
    and tested on the other, ``splits`` times). Also the float heads queried with 8-bit
    embeddings: what a client embedding at the wrong precision would get."""
    from sklearn.linear_model import LogisticRegression

    from appliance.client.inference import default_text_encoder

    texts, y = labelled_paragraphs()
    emb = {p: default_text_encoder(p)(texts) for p in ("fp32", "int8")}
    scores: dict[str, list[float]] = {"fp32": [], "int8": [], "crossed": [], "alike": []}
    for seed in range(splits):
        order = np.random.default_rng(seed).permutation(len(y))
        train, test = order[: len(y) // 2], order[len(y) // 2:]
        heads = {p: LogisticRegression(C=10.0, max_iter=5000).fit(e[train], y[train]) for p, e in emb.items()}
        for p in emb:
            scores[p].append(heads[p].score(emb[p][test], y[test]))
        crossed = heads["fp32"].predict(emb["int8"][test])
        scores["crossed"].append(float(np.mean(crossed == y[test])))
        scores["alike"].append(float(np.mean(crossed == heads["fp32"].predict(emb["fp32"][test]))))
    n = f"{len(y) // 2} / {len(y) - len(y) // 2}"

    def cell(values: list[float]) -> str:
        return f"{np.mean(values):.3f} ({min(values):.3f}-{max(values):.3f})"

    diff = np.subtract(scores["int8"], scores["fp32"])
    return [["heads trained and tested on fp32", n, cell(scores["fp32"])],
            ["heads trained and tested on int8", n, cell(scores["int8"])
             + f"; int8 - fp32 per split {diff.min():+.3f}..{diff.max():+.3f}"],
            ["fp32 heads tested on int8 embeddings", n, cell(scores["crossed"])
             + f"; same label as on fp32 {cell(scores['alike'])}"]]


def stream_rows(url: str, token: str, ensemble_id: str, art: object, counts: tuple[int, ...] = (16, 64),
                requests: int = 8) -> list[list[object]]:
    """Server throughput on wide batches (bodies encrypted beforehand): one session posting
    ``requests`` batches one after the other, then two sessions posting at once (the server's
    two workers each run their own evaluator process, so two streams can use both cores)."""
    import threading

    from appliance.client import Client
    from appliance.client.inference import _open
    from crypto.private_inference.client import PrivateClient

    sdk = Client(url, token=token, timeout=600)
    spec = sdk.ensemble_spec(ensemble_id)
    clients = [PrivateClient(spec=spec) for _ in range(2)]
    sessions = [_open(sdk, ensemble_id, c, None)["id"] for c in clients]
    rng = np.random.default_rng(1)
    rows: list[list[object]] = []
    try:
        for count in counts:
            emb = rng.normal(size=(count, int(spec["members"]), int(spec["dim"])))
            emb /= np.linalg.norm(emb, axis=2, keepdims=True)
            truth = art.plaintext_logits(emb).argmax(axis=1).tolist()  # type: ignore[attr-defined]
            bodies = [c.encrypt_wide_batch(emb) for c in clients]

            def post(k: int, bodies: list[bytes] = bodies) -> bytes:
                with Client(url, token=token, timeout=600) as own:
                    return bytes(own.request(
                        "POST", f"/v1/ensembles/{ensemble_id}/predict",
                        params={"session": sessions[k], "layout": "wide"}, content=bodies[k],
                        headers={"Content-Type": "application/octet-stream"}).content)

            for k in range(2):
                for _ in range(3):  # both workers' evaluators built and warm
                    got = clients[k].decrypt_wide_batch(post(k), count=count).labels
                    assert list(got) == truth, "wrong labels"

            def stream(k: int, post: object = post) -> None:
                for _ in range(requests):
                    post(k)  # type: ignore[operator]

            start = time.perf_counter()
            stream(0)
            one = time.perf_counter() - start
            threads = [threading.Thread(target=stream, args=(k,)) for k in range(2)]
            start = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            two = time.perf_counter() - start
            body_mb = len(bodies[0]) / 1e6
            rows.append([count, f"{body_mb:.1f}", requests * count / one, 2 * requests * count / two])
    finally:
        for session in sessions:
            sdk.request("DELETE", f"/v1/inference/sessions/{session}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--texts", type=int, default=240)
    parser.add_argument("--members", type=int, default=8)
    args = parser.parse_args()

    import torch

    from appliance.client import Client
    from appliance.client.inference import default_text_encoder
    from crypto.ensemble import MINILM_INT8, EnsembleArtifact
    from crypto.private_inference.client import PrivateClient
    from crypto.private_inference.templates import embed_with_templates
    from models.hub import load_minilm

    torch.set_num_threads(os.cpu_count() or 1)
    source, texts = paragraphs(args.texts)
    templates = [f"Paragraph from the manual, reading {i}: {{}}" for i in range(args.members)]
    rng = np.random.default_rng(0)
    art = EnsembleArtifact(templates=templates,
                           weights=rng.normal(size=(args.members, 10, 384)) / np.sqrt(384),
                           biases=np.zeros((args.members, 10)),
                           classes=[f"c{i}" for i in range(10)], encoder="all-MiniLM-L6-v2")
    # a fresh process loading each encoder (the ONNX graph exported first if not yet cached)
    import subprocess
    import sys

    loads = []
    for name, code in (("PyTorch MiniLM (load_minilm)", "from models.hub import load_minilm as f"),
                       ("ONNX MiniLM (default_text_encoder)",
                        "from appliance.client.inference import default_text_encoder as f")):
        probe = (f"import time; t = time.perf_counter(); c = time.process_time(); {code}; "
                 "f(); print(time.perf_counter() - t, time.process_time() - c)")
        for attempt in ("first", "again"):
            out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                                 check=True, cwd=ROOT).stdout.split()
            loads.append([name, attempt, float(out[-2]), float(out[-1])])
    print(table("encoder load in a fresh process (import included)",
                ["encoder", "run", "wall s", "CPU s"], loads))
    rows: list[list[object]] = []
    with tempfile.TemporaryDirectory() as tmp, \
            live_appliance(Path(tmp) / "home", port=free_port()) as (url, token):
        ens = Client(url, token=token).create_ensemble(art, name="bench").id
        # the same heads over the 8-bit encoder (an owner would train them on its embeddings)
        art8 = dataclasses.replace(art, encoder=MINILM_INT8)
        ens8 = Client(url, token=token).create_ensemble(art8, name="bench-int8").id
        # and with the label output (two rounds per request, the label alone)
        ens8l = Client(url, token=token).create_ensemble(dataclasses.replace(art8, output="label"),
                                                         name="bench-int8-label").id

        def row(name: str, run: object) -> np.ndarray:
            wall, cpu = time.perf_counter(), time.process_time()
            result = run()  # type: ignore[operator]
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            rows.append([name, len(texts), wall, cpu, len(texts) / wall])
            return np.asarray(getattr(result, "indices", None) or result.labels)

        def before() -> object:
            # the path as it was: a Client per call, PyTorch MiniLM loaded in it, keys made,
            # the session never closed
            sdk = Client(url, token=token, timeout=600)
            model = load_minilm()
            spec = sdk.ensemble_spec(ens)
            emb = embed_with_templates(texts, spec["templates"], lambda p: model.embed(list(p)))
            private = PrivateClient(spec=spec)
            from appliance.client.inference import InferenceSession

            body = sdk._json("POST", "/v1/inference/sessions", params={"ensemble_id": ens},
                             content=private.evaluation_keys(),
                             headers={"Content-Type": "application/octet-stream"})
            session = InferenceSession(sdk=sdk, ensemble_id=ens, spec=spec,
                                       private_client=private, session=body)
            return session.predict_embeddings(emb)

        with Client(url, token=token, timeout=600) as sdk:
            first = row("now, first call (ONNX encoder loaded, keys made)",
                        lambda: sdk.private_predict(ens, texts))
            warm = row("now, warm process (encoder + keys loaded)",
                       lambda: sdk.private_predict(ens, texts))
            first8 = row("8-bit encoder ensemble, first call (encoder loaded, keys made)",
                         lambda: sdk.private_predict(ens8, texts))
            warm8 = row("8-bit encoder ensemble, warm process",
                        lambda: sdk.private_predict(ens8, texts))
            sdk.private_predict(ens8l, texts[:4])  # its keys made
            label8 = row("8-bit encoder, output='label' (two rounds), warm process",
                         lambda: sdk.private_predict(ens8l, texts))
            import appliance.client as sdk_module

            chunk, sdk_module.EMBED_CHUNK = sdk_module.EMBED_CHUNK, len(texts)
            try:  # baseline: every text embedded before the first request (no overlap)
                serial = row("warm, all texts embedded first (previous path)",
                             lambda: sdk.private_predict(ens, texts))
            finally:
                sdk_module.EMBED_CHUNK = chunk
        keys = Path(tmp) / "keys"
        Client(url, token=token, key_passphrase="bench", keys_dir=keys).private_predict(
            ens, texts[:4])  # saves the keys
        with Client(url, token=token, timeout=600, key_passphrase="bench", keys_dir=keys) as sdk:
            stored = row("now, fresh Client, keys from the key store",
                         lambda: sdk.private_predict(ens, texts))
        old = row("before (PyTorch MiniLM loaded per call, keys made)", before)
        streams = stream_rows(url, token, ens, art)
    bound = encoder_bound(texts, templates)
    precision = precision_rows(texts, templates)
    task = task_rows()

    emb = embed_with_templates(texts, templates, default_text_encoder())
    logits = art.plaintext_logits(emb)
    plain = logits.argmax(axis=1)
    top2 = np.sort(logits, axis=1)[:, -2:]
    logits8 = art8.plaintext_logits(embed_with_templates(texts, templates, default_text_encoder("int8")))
    plain8 = logits8.argmax(axis=1)
    top2_8 = np.sort(logits8, axis=1)[:, -2:]
    for r, got, want in zip(rows, (first, warm, first8, warm8, label8, serial, stored, old),
                            (plain, plain, plain8, plain8, plain8, plain, plain, plain), strict=True):
        r.append(f"{int((got == want).sum())}/{len(want)}")
    print(table(f"SDK private_predict end to end, K={args.members} x 384-d, 10 classes, "
                f"{source}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores",
                ["path", "texts", "wall s", "client CPU s", "queries/s", "labels = plaintext"],
                rows))
    print(f"smallest top-2 logit gap of the plaintext ensemble: {float((top2[:, 1] - top2[:, 0]).min()):.2e} "
          f"(8-bit encoder: {float((top2_8[:, 1] - top2_8[:, 0]).min()):.2e}); the same heads label "
          f"{int((plain8 == plain).sum())}/{len(plain)} texts alike over the two encoders")
    print(table("client embedding alone, float and 8-bit encoder in turn (texts/s per run)",
                ["encoder", "prompts", "texts/s"], precision))
    print(table(f"a real task for both encoders: which of {len(MODULES)} modules a docstring paragraph "
                "documents (logistic regression; mean and range over 5 random halves)",
                ["heads", "train / test", "accuracy"], task))
    print(table("client embedding alone (ONNX MiniLM, every template prompt) against this "
                "machine's fp32 MatMul rate (ONNX Runtime, feed-forward shape)",
                ["prompts", "tokens", "GFLOP", "embed wall s", "texts/s", "GFLOP/s",
                 "MatMul GFLOP/s", "texts/s at that rate"], bound))
    print(table("live server, wide batches encrypted beforehand (wall, labels checked)",
                ["queries / batch", "body MB", "1 session q/s", "2 sessions at once q/s"], streams))


if __name__ == "__main__":
    main()
