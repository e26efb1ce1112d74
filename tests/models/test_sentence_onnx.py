"""The ONNX Runtime sentence encoder reproduces the PyTorch MiniLM and caches its graph safely."""

from __future__ import annotations

import stat
from pathlib import Path

import numpy as np
import pytest

from models.hub import load_minilm, minilm_dir
from models.sentence_onnx import OnnxSentenceEncoder


def test_onnx_minilm_matches_pytorch_and_reuses_its_cached_graph(tmp_path: Path) -> None:
    fast = OnnxSentenceEncoder.from_transformers_dir(minilm_dir(), cache_dir=tmp_path)
    (graph,) = tmp_path.glob("*.onnx")
    assert stat.S_IMODE(graph.stat().st_mode) == 0o600
    texts = ["a cat sits on the mat", "x",
             "Return the value of the environment variable key if it exists. " * 40,
             "template 3: Split the pathname path into a pair (head, tail)."]
    got = fast.embed(texts, batch_size=2)  # batches of unequal padding, returned in order
    want = load_minilm().embed(texts)
    assert got.shape == (4, 384) and got.dtype == np.float32
    assert float(np.abs(got - want).max()) < 1e-5
    stamp = graph.stat().st_mtime_ns
    again = OnnxSentenceEncoder.from_transformers_dir(minilm_dir(), cache_dir=tmp_path)
    assert graph.stat().st_mtime_ns == stamp  # loaded, not exported again
    np.testing.assert_allclose(again.embed(texts[:1]), got[:1], atol=1e-6)
    with pytest.raises(ValueError):
        fast.embed([])


def test_a_corrupt_cached_graph_is_refused_and_removed(tmp_path: Path) -> None:
    from models.errors import ModelError
    from models.sentence_onnx import _weights_digest

    graph = tmp_path / f"{minilm_dir().name}-{_weights_digest(minilm_dir())[:32]}.onnx"
    graph.write_bytes(b"not a protobuf graph")
    with pytest.raises(ModelError):
        OnnxSentenceEncoder.from_transformers_dir(minilm_dir(), cache_dir=tmp_path)
    assert not graph.exists()


def test_the_8_bit_encoder_is_quantised_once_checked_and_close_to_the_float_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    from models.errors import ModelError
    from models.sentence_onnx import MIN_INT8_COSINE

    texts = ["a cat sits on the mat", "Split the pathname path into a pair (head, tail).",
             "template 3: Return the value of the environment variable key if it exists. " * 6]
    fast = OnnxSentenceEncoder.from_transformers_dir(minilm_dir(), cache_dir=tmp_path)
    (graph,) = tmp_path.glob("*.onnx")
    root = logging.getLogger()
    handlers, filters = list(root.handlers), list(root.filters)
    caplog.set_level(logging.INFO)
    int8 = OnnxSentenceEncoder.from_transformers_dir(minilm_dir(), cache_dir=tmp_path, precision="int8")
    (quantised,) = set(tmp_path.glob("*.onnx")) - {graph}
    # the quantiser's advice to the root logger is dropped, and the root logger is left as it was
    assert not [r for r in caplog.records if r.name == "root"]
    assert root.handlers == handlers and root.filters == filters
    assert "-int8v" in quantised.name and stat.S_IMODE(quantised.stat().st_mode) == 0o600
    assert quantised.stat().st_size < 0.4 * graph.stat().st_size  # 8-bit weights, not a copy
    got, want = int8.embed(texts, batch_size=2), fast.embed(texts)
    cosine = np.sum(got * want, axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert got.shape == (3, 384) and got.dtype == np.float32
    assert cosine.min() > max(0.95, MIN_INT8_COSINE) and float(np.abs(got - want).max()) > 1e-3
    stamp = quantised.stat().st_mtime_ns
    again = OnnxSentenceEncoder.from_transformers_dir(minilm_dir(), cache_dir=tmp_path, precision="int8")
    assert quantised.stat().st_mtime_ns == stamp  # loaded, not quantised again
    np.testing.assert_array_equal(again.embed(texts), int8.embed(texts))  # deterministic
    with pytest.raises(ValueError):
        OnnxSentenceEncoder.from_transformers_dir(minilm_dir(), cache_dir=tmp_path, precision="fp16")
    # a damaged quantised graph is refused and removed, then made again from the float graph;
    # graphs another quantiser or ONNX Runtime version made (an upgrade) are removed with it
    quantised.write_bytes(b"not a protobuf graph")
    with pytest.raises(ModelError):
        OnnxSentenceEncoder.from_transformers_dir(minilm_dir(), cache_dir=tmp_path, precision="int8")
    assert not quantised.exists()
    stale = graph.with_name(f"{graph.stem}-int8v0-ort1.0.0.onnx")
    stale.write_bytes(b"an older quantisation")
    stale.with_name(stale.name + ".json").write_text("{}")
    remade = OnnxSentenceEncoder.from_transformers_dir(minilm_dir(), cache_dir=tmp_path, precision="int8")
    np.testing.assert_array_equal(remade.embed(texts), int8.embed(texts))
    assert sorted(f.name for f in tmp_path.iterdir()) == sorted(
        [graph.name, graph.name + ".json", quantised.name, quantised.name + ".json"])
