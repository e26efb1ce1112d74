"""Demo material from real data: scikit-learn's digits and a logistic-regression classifier
exported as a real ONNX graph. Used by the README walkthrough, the benchmarks and the tests."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np


def digits_split(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Digits scaled to [0, 1], stratified 70/30 split: (x_train, x_test, y_train, y_test)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.3, random_state=seed, stratify=y)
    return x_tr, x_te, y_tr.astype(np.int64), y_te.astype(np.int64)


def linear_onnx_bytes(weights: np.ndarray, bias: np.ndarray) -> bytes:
    """An ONNX graph computing ``x @ W + b`` (logits)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    n_in, n_out = weights.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]),
         helper.make_node("Add", ["xw", "b"], ["logits"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", n_in])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", n_out])],
        initializer=[numpy_helper.from_array(weights.astype(np.float32), "W"),
                     numpy_helper.from_array(bias.astype(np.float32), "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def train_digits_classifier(seed: int = 0) -> tuple[bytes, np.ndarray, np.ndarray]:
    """Train logistic regression on digits; returns (onnx bytes, x_test, y_test)."""
    from sklearn.linear_model import LogisticRegression

    x_tr, x_te, y_tr, y_te = digits_split(seed)
    clf = LogisticRegression(max_iter=500, random_state=seed).fit(x_tr, y_tr)
    return linear_onnx_bytes(clf.coef_.T, clf.intercept_), x_te, y_te


def write_digits_demo(out: Path, seed: int = 0) -> tuple[Path, Path]:
    """Write ``digits.onnx`` and ``digits-test.npz`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    model, x_te, y_te = train_digits_classifier(seed)
    model_path = out / "digits.onnx"
    model_path.write_bytes(model)
    buf = io.BytesIO()
    np.savez(buf, x=x_te, y=y_te)
    data_path = out / "digits-test.npz"
    data_path.write_bytes(buf.getvalue())
    return model_path, data_path
