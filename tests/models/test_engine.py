"""Torch, ONNX and safetensors backends on a small classifier trained on sklearn digits."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from safetensors.torch import save_file
from sklearn.datasets import load_digits

from models.architectures import create_architecture
from models.datasets import LabelledArray
from models.device import choose_device, onnx_providers
from models.engine import OnnxModel, TorchModel, load_model
from models.errors import DeviceError, ModelError, ModelFormatError, ShapeError
from models.evaluation import evaluate_classifier

CONFIG = {"in_features": 64, "hidden": [32], "num_classes": 10}


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    return x, data.target.astype(np.int64)


@pytest.fixture(scope="module")
def trained(digits: tuple[np.ndarray, np.ndarray]) -> torch.nn.Module:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    x, y = digits
    module = create_architecture("mlp", CONFIG)
    optimiser = torch.optim.Adam(module.parameters(), lr=1e-2)
    xt, yt = torch.from_numpy(x[:1400]), torch.from_numpy(y[:1400])
    for _ in range(150):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(module(xt), yt).backward()
        optimiser.step()
    return module.eval()


def _export(module: torch.nn.Module, path: Path, example: torch.Tensor) -> Path:
    # A copy on the CPU: on a GPU machine an earlier TorchModel(device=auto) moved the shared fixture.
    torch.onnx.export(
        copy.deepcopy(module).cpu(),
        (example,),
        str(path),
        dynamo=False,
        input_names=["x"],
        output_names=["logits"],
        dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
    )
    return path


def test_torch_model_learns_and_predicts(trained, digits) -> None:
    x, y = digits
    model = TorchModel(trained, device="cpu")
    probs = model.predict(x[1400:], batch_size=37)
    assert probs.dtype == np.float32 and probs.shape == (len(x) - 1400, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert (probs.argmax(axis=1) == y[1400:]).mean() > 0.85
    with torch.inference_mode():
        reference = torch.softmax(trained(torch.from_numpy(x[1400:])), dim=1).numpy()
    np.testing.assert_allclose(probs, reference, atol=1e-6)


def test_onnx_matches_torch(trained, digits, tmp_path: Path) -> None:
    x, _ = digits
    path = _export(trained, tmp_path / "clf.onnx", torch.zeros(2, 64))
    onnx_model = load_model(path, format="onnx", device="cpu")
    torch_model = TorchModel(trained, device="cpu")
    assert onnx_model.backend == "onnx" and onnx_model.device == "cpu"
    np.testing.assert_allclose(
        onnx_model.logits(x, batch_size=100), torch_model.logits(x), atol=1e-4
    )
    np.testing.assert_allclose(onnx_model.predict(x), torch_model.predict(x), atol=1e-5)
    # float64 inputs are cast to the graph's float32
    np.testing.assert_allclose(
        onnx_model.predict(x[:5].astype(np.float64)), onnx_model.predict(x[:5]), atol=1e-7
    )


def test_onnx_cnn_accepts_flat_and_rejects_bad_shapes(digits, tmp_path: Path) -> None:
    x, _ = digits
    torch.manual_seed(1)
    cnn = create_architecture(
        "small_cnn", {"in_channels": 1, "image_size": 8, "num_classes": 10, "width": 4}
    ).eval()
    path = _export(cnn, tmp_path / "cnn.onnx", torch.zeros(2, 1, 8, 8))
    model = OnnxModel(path, device="cpu")
    images = x[:20].reshape(20, 1, 8, 8)
    np.testing.assert_allclose(model.logits(images), model.logits(x[:20]), atol=1e-6)
    np.testing.assert_allclose(
        model.logits(images), TorchModel(cnn, device="cpu").logits(images), atol=1e-4
    )
    with pytest.raises(ShapeError, match="axis 2"):
        model.predict(np.zeros((2, 1, 7, 8), np.float32))
    with pytest.raises(ShapeError):
        model.predict(np.zeros((2, 63), np.float32))
    with pytest.raises(ShapeError, match="numeric"):
        model.predict(np.array([["a"] * 64]))
    with pytest.raises(ShapeError):
        model.predict(np.zeros((0, 64), np.float32))


def _softmax_graph(path: Path, *, static_batch: int | None) -> Path:
    batch = static_batch if static_batch is not None else "batch"
    graph = helper.make_graph(
        [helper.make_node("Softmax", ["x"], ["probabilities"], axis=1)],
        "softmax",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [batch, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_onnx_probability_output_and_static_batch(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(7, 3)).astype(np.float32)
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    path = _softmax_graph(tmp_path / "p.onnx", static_batch=4)
    model = load_model(path, format="onnx", config={"output": "probabilities"}, device="cpu")
    np.testing.assert_allclose(model.predict(logits), expected, atol=1e-6)
    np.testing.assert_allclose(model.logits(logits), np.log(expected), atol=1e-5)
    with pytest.raises(ModelFormatError, match="unknown ONNX options"):
        load_model(path, format="onnx", config={"outputs": "probabilities"})


def test_safetensors_round_trip(trained, digits, tmp_path: Path) -> None:
    x, _ = digits
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, str(path))
    model = load_model(path, format="safetensors", architecture="mlp", config=CONFIG, device="cpu")
    assert model.kind == "classifier" and model.backend == "torch"
    np.testing.assert_allclose(model.predict(x), TorchModel(trained).predict(x), atol=1e-6)

    with pytest.raises(ModelFormatError, match="shape mismatches"):
        load_model(path, format="safetensors", architecture="mlp", config={**CONFIG, "hidden": 16})
    with pytest.raises(ModelFormatError, match="missing tensors"):
        load_model(
            path, format="safetensors", architecture="mlp", config={**CONFIG, "hidden": [32, 32]}
        )
    with pytest.raises(ModelFormatError, match="architecture"):
        load_model(path, format="safetensors")
    with pytest.raises(ValueError, match="unknown architecture"):
        load_model(path, format="safetensors", architecture="nope", config={})


def test_evaluation_agrees_across_backends(trained, digits, tmp_path: Path) -> None:
    x, y = digits
    data = LabelledArray(x=x[1400:], y=y[1400:])
    path = _export(trained, tmp_path / "clf.onnx", torch.zeros(2, 64))
    seen: list[float] = []
    via_onnx = evaluate_classifier(
        load_model(path, format="onnx"), data, batch_size=64, progress=seen.append
    )
    via_torch = evaluate_classifier(TorchModel(trained), data)
    assert via_onnx["confusion_matrix"] == via_torch["confusion_matrix"]
    assert via_onnx["accuracy"] == pytest.approx(via_torch["accuracy"])
    assert via_onnx["loss"] == pytest.approx(via_torch["loss"], rel=1e-4)
    assert seen == sorted(seen) and seen[-1] == 1.0 and len(seen) >= 7


def test_device_choice() -> None:
    assert choose_device("cpu") == "cpu"
    assert choose_device(None) == ("cuda" if torch.cuda.is_available() else "cpu")
    assert onnx_providers("cpu") == ["CPUExecutionProvider"]
    assert onnx_providers("cuda")[-1] == "CPUExecutionProvider"
    with pytest.raises(DeviceError):
        choose_device("tpu")
    if not torch.cuda.is_available():
        for wanted in ("cuda", "cuda:0", " CUDA:1 "):
            with pytest.raises(DeviceError, match="CUDA is not available") as caught:
                choose_device(wanted)
            assert "'cpu'" in caught.value.diagnostics()


def test_logprobs_refused_for_classifier(trained) -> None:
    with pytest.raises(ModelError, match="causal"):
        TorchModel(trained).logprobs(["hello"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_evaluation_matches_cpu(trained, digits, tmp_path: Path) -> None:
    x, y = digits
    data = LabelledArray(x=x, y=y)
    cpu = evaluate_classifier(TorchModel(trained, device="cpu"), data)
    gpu = evaluate_classifier(TorchModel(copy.deepcopy(trained), device="cuda"), data)
    assert gpu["device"].startswith("cuda")
    assert gpu["accuracy"] == pytest.approx(cpu["accuracy"], abs=2 / len(x))
    assert gpu["loss"] == pytest.approx(cpu["loss"], rel=1e-3)


def _onnx_has_cuda() -> bool:
    import onnxruntime as ort

    return torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.mark.gpu
@pytest.mark.skipif(not _onnx_has_cuda(), reason="needs CUDA and onnxruntime's CUDA provider")
def test_onnx_on_cuda_matches_cpu(trained, digits, tmp_path: Path) -> None:
    x, _ = digits
    onnx_gpu = load_model(
        _export(trained, tmp_path / "g.onnx", torch.zeros(2, 64)), format="onnx", device="cuda"
    )
    assert onnx_gpu.device == "cuda"
    np.testing.assert_allclose(onnx_gpu.predict(x), cpu_probs(trained, x), atol=1e-4)


def cpu_probs(module: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    return TorchModel(module, device="cpu").predict(x)
