"""Evaluation metrics against values computed by hand on a fixed example."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from torch import nn

from models.datasets import LabelledArray
from models.engine import OnnxModel, TorchModel
from models.errors import DatasetError, ModelError
from models.evaluation import (
    classification_metrics,
    evaluate_classifier,
    expected_calibration_error,
    export_embeddings,
)

# Five examples, three classes. Rows are predicted probabilities; no confidence lies on
# a bin edge of the 4-bin reliability diagram (edges 0, .25, .5, .75, 1).
PROBS = np.array(
    [
        [0.70, 0.20, 0.10],  # y=0, predicted 0, right, conf .70 -> bin 2
        [0.10, 0.60, 0.30],  # y=2, predicted 1, wrong, conf .60 -> bin 2
        [0.20, 0.20, 0.60],  # y=2, predicted 2, right, conf .60 -> bin 2
        [0.05, 0.90, 0.05],  # y=1, predicted 1, right, conf .90 -> bin 3
        [0.45, 0.35, 0.20],  # y=1, predicted 0, wrong, conf .45 -> bin 1
    ]
)
LABELS = np.array([0, 2, 2, 1, 1])
# by hand: accuracy 3/5; NLL = -(ln .7 + ln .3 + ln .6 + ln .9 + ln .35) / 5
EXPECTED_NLL = -(math.log(0.7) + math.log(0.3) + math.log(0.6) + math.log(0.9) + math.log(0.35)) / 5
# bins: 1 -> |0 - .45| ; 2 -> |2 - (.7 + .6 + .6)| ; 3 -> |1 - .9|   (sums, divided by n)
EXPECTED_ECE = (0.45 + 0.1 + 0.1) / 5
EXPECTED_CONFUSION = [[1, 0, 0], [1, 1, 0], [0, 1, 1]]


def _check(metrics: dict) -> None:
    assert metrics["n"] == 5 and metrics["num_classes"] == 3
    assert metrics["accuracy"] == pytest.approx(0.6)
    assert metrics["loss"] == pytest.approx(EXPECTED_NLL, rel=1e-6)
    assert metrics["confusion_matrix"] == EXPECTED_CONFUSION
    assert metrics["ece"] == pytest.approx(EXPECTED_ECE, rel=1e-6)
    reliability = metrics["reliability"]
    assert reliability["bin_count"] == [0, 1, 3, 1]
    assert reliability["bin_accuracy"][0] is None
    assert reliability["bin_accuracy"][1:] == pytest.approx([0.0, 2 / 3, 1.0])
    assert reliability["bin_confidence"][1:] == pytest.approx([0.45, 1.9 / 3, 0.9])
    assert reliability["bin_edges"] == pytest.approx([0, 0.25, 0.5, 0.75, 1.0])


def test_hand_computed_metrics_via_torch_model() -> None:
    # Identity module: the inputs are the logits, log(p) gives back p under softmax.
    data = LabelledArray(x=np.log(PROBS).astype(np.float32), y=LABELS)
    seen: list[float] = []
    metrics = evaluate_classifier(
        TorchModel(nn.Identity(), device="cpu"), data, batch_size=2, n_bins=4, progress=seen.append
    )
    _check(metrics)
    assert metrics["device"] == "cpu" and metrics["forward_seconds"] >= 0
    assert seen[-1] == 1.0 and len(seen) == 4  # three batches and the final call


def test_hand_computed_metrics_via_onnx_probabilities(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["p"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["n", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "id.onnx"))
    loaded = OnnxModel(tmp_path / "id.onnx", output="probabilities", device="cpu")
    _check(
        evaluate_classifier(loaded, LabelledArray(x=PROBS.astype(np.float32), y=LABELS), n_bins=4)
    )


def test_nll_is_clipped_for_zero_probability() -> None:
    logits = np.array([[0.0, -np.inf], [0.0, 0.0]])
    metrics = classification_metrics(logits, np.array([1, 0]), n_bins=10)
    assert metrics["loss"] == pytest.approx((-math.log(1e-15) + math.log(2)) / 2)


def test_ece_of_perfect_calibration_is_zero_and_edges() -> None:
    confidence = np.array([1.0, 1.0, 0.0, 0.5])
    correct = np.array([True, True, False, False])
    result = expected_calibration_error(confidence, correct, n_bins=2)
    # 1.0 belongs to the last bin (.5, 1]; 0 and .5 to the first [0, .5]
    assert result["bin_count"] == [2, 2]
    assert result["ece"] == pytest.approx(0.5 / 4)  # bin 1: |0 - (0 + .5)| / n
    with pytest.raises(ValueError):
        expected_calibration_error(confidence, correct, n_bins=0)


def test_label_out_of_range_and_missing_labels() -> None:
    model = TorchModel(nn.Identity(), device="cpu")
    with pytest.raises(DatasetError, match="out of range"):
        evaluate_classifier(
            model, LabelledArray(x=np.zeros((2, 3), np.float32), y=np.array([0, 3]))
        )
    with pytest.raises(DatasetError, match="labels"):
        evaluate_classifier(model, LabelledArray(x=np.zeros((2, 3), np.float32)))


def test_encoder_is_not_evaluated_as_classifier() -> None:
    data = LabelledArray(x=np.zeros((2, 3), np.float32), y=np.array([0, 1]))
    with pytest.raises(ModelError, match="needs a classifier"):
        evaluate_classifier(TorchModel(nn.Identity(), kind="encoder"), data)


def test_export_embeddings() -> None:
    x = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    out = export_embeddings(TorchModel(nn.Identity(), kind="encoder"), x, batch_size=3)
    np.testing.assert_array_equal(out, x)

    class Broken(nn.Module):
        def forward(self, t):  # noqa: ANN001, ANN202
            return t / 0.0

    with pytest.raises(ModelError, match="non-finite"):
        export_embeddings(TorchModel(Broken(), kind="encoder"), x)
