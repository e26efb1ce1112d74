"""The ONNX graph as a trainable module: it computes what onnxruntime computes, redraws every
weight and keeps every constant, writes its trained weights back into the same graph, and
refuses what it does not run."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper, numpy_helper
from torch import nn

from models.errors import ModelFormatError
from models.onnx_train import (
    GraphModule,
    UnsupportedGraph,
    check_graph,
    graph_summary,
    structure_digest,
    train_graph_encoder,
)


class _Encoder(nn.Module):
    """The layers exporters write for small vision encoders: an input scale, an upsampling,
    convolutions (grouped, strided), BatchNorm, GroupNorm (as InstanceNorm plus an affine),
    pooling, a dense head."""

    def __init__(self, width: int = 6) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.depthwise = nn.Conv2d(width, width, 3, stride=2, padding=1, groups=width)
        self.pointwise = nn.Conv2d(width, 2 * width, 1)
        self.norm = nn.GroupNorm(2, 2 * width)
        self.pool = nn.AvgPool2d(2)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * 9, 16), nn.GELU(), nn.Linear(16, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.interpolate(x / 16.0, size=(12, 12), mode="bilinear", align_corners=False)
        x = nn.functional.relu(self.bn(self.stem(x)))
        x = nn.functional.silu(self.norm(self.pointwise(self.depthwise(x))))
        return self.head(self.pool(x))


def _export(module: nn.Module) -> bytes:
    """ONNX as exporters write it; BatchNorm kept as its own node (not folded into the
    convolution), so its running statistics are in the graph."""
    out = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.zeros(2, 1, 8, 8),), out, input_names=["x"], output_names=["e"],
                          dynamic_axes={"x": {0: "b"}, "e": {0: "b"}}, dynamo=False,
                          training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False)
    return out.getvalue()


def _trained(seed: int, width: int = 6) -> nn.Module:
    """An encoder with weights unlike any initialisation (and BatchNorm statistics set)."""
    torch.manual_seed(seed)
    module = _Encoder(width)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.3)
        module.bn.running_mean.uniform_(-0.5, 0.5)
        module.bn.running_var.uniform_(0.5, 2.0)
    return module.eval()


def _ort(data: bytes, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {session.get_inputs()[0].name: x})[0])


def _with_graph_weights(module: GraphModule, data: bytes) -> GraphModule:
    """The module with the graph's own values put back (to compare computations, not draws)."""
    with torch.no_grad():
        for tensor in onnx.load_model_from_string(data).graph.initializer:
            key = module.names[tensor.name]
            target = module.weights[key] if key in module.weights else getattr(module, key)
            target.copy_(torch.from_numpy(numpy_helper.to_array(tensor).copy()))
    return module


X = np.random.default_rng(0).uniform(0, 16, (7, 1, 8, 8)).astype(np.float32)


def test_the_graph_computes_what_onnxruntime_computes_and_round_trips() -> None:
    data = _export(_trained(1))
    module = _with_graph_weights(GraphModule.from_bytes(data, seed=0), data).eval()
    with torch.no_grad():
        ours = module(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(ours, _ort(data, X), atol=1e-4)
    np.testing.assert_allclose(_ort(module.to_onnx(), X), _ort(data, X), atol=1e-6)


def test_every_weight_is_redrawn_and_every_constant_kept() -> None:
    data = _export(_trained(1))
    graph = onnx.load_model_from_string(data).graph
    module = GraphModule.from_bytes(data, seed=3)
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    redrawn = {name for name, key in module.names.items()
               if key in module.weights or key in module.running}
    # every float tensor of the suspect with more than one value is a weight here
    floats = {name for name, v in values.items() if v.dtype.kind == "f" and v.size > 1}
    assert floats <= redrawn, floats - redrawn
    state = {**dict(module.weights.items()), **dict(module.named_buffers())}
    for name in redrawn:
        new = state[module.names[name]].detach().numpy()
        assert not np.allclose(new, values[name]), name
    assert module.constants == 0 and module.learned >= 14 and len(module.running) == 2
    out = GraphModule.from_bytes(module.to_onnx(), seed=3)
    np.testing.assert_allclose(out.eval()(torch.from_numpy(X)).detach().numpy(),
                               module.eval()(torch.from_numpy(X)).detach().numpy(), atol=1e-6)
    # a draw is the seed's: the same seed gives the same weights, another seed others
    again = GraphModule.from_bytes(data, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(module.weights.values(), again.weights.values(), strict=True))
    other = GraphModule.from_bytes(data, seed=4)
    assert not all(torch.equal(a, b) for a, b in zip(module.weights.values(), other.weights.values(), strict=True))


def test_structure_digest_names_the_architecture_not_the_weights() -> None:
    first, second, narrow = _export(_trained(1)), _export(_trained(2)), _export(_trained(1, width=4))
    assert structure_digest(first) == structure_digest(second) != structure_digest(narrow)
    summary = graph_summary(first)
    assert summary["structure_sha256"] == structure_digest(first) and summary["learned"] >= 14


def test_training_is_deterministic_and_learns() -> None:
    data = _export(_trained(1))
    unit = np.random.default_rng(1).uniform(0, 1, (40, 1, 8, 8)).astype(np.float32)
    kwargs = {"objective": "simclr", "seed": 2, "epochs": 3, "batch_size": 16}
    one = train_graph_encoder(data, unit, (0.0, 16.0), **kwargs)  # type: ignore[arg-type]
    two = train_graph_encoder(data, unit, (0.0, 16.0), **kwargs)  # type: ignore[arg-type]
    assert one.to_onnx() == two.to_onnx()
    fresh = GraphModule.from_bytes(data, seed=2)
    assert any(not torch.equal(a, b) for a, b in zip(one.weights.values(), fresh.weights.values(), strict=True))
    # BatchNorm's running statistics moved with the batches seen in training
    assert len(one.running) == 2
    assert all(not torch.equal(getattr(one, k), getattr(fresh, k)) for k in one.running)
    # the trained graph answers on the data's own scale (0..16), as the suspect does
    np.testing.assert_allclose(_ort(one.to_onnx(), X), one(torch.from_numpy(X)).detach().numpy(), atol=1e-5)


def _graph(nodes: list, opset: int = 17, domain: str = "") -> bytes:
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, 4])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [None, 4])
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]),
                              opset_imports=[helper.make_opsetid(domain, opset)])
    return bytes(model.SerializeToString())


@pytest.mark.parametrize(("nodes", "domain", "needle"), [
    ([helper.make_node("Hardmax", ["x"], ["y"])], "", "Hardmax"),
    ([helper.make_node("Relu", ["x"], ["y"], domain="com.example")], "com.example", "domain"),
    ([helper.make_node("If", ["x"], ["y"], then_branch=helper.make_graph([], "t", [], []),
                       else_branch=helper.make_graph([], "e", [], []))], "", "subgraph"),
])
def test_what_it_does_not_run_is_refused_by_name(nodes: list, domain: str, needle: str) -> None:
    data = _graph(nodes, domain=domain)
    with pytest.raises(UnsupportedGraph, match=needle):
        check_graph(data)
    with pytest.raises(UnsupportedGraph, match=needle):
        GraphModule.from_bytes(data, seed=0)
    with pytest.raises(ModelFormatError, match="not a valid ONNX"):
        check_graph(b"\x08\x07garbage")
    check_graph(_graph([helper.make_node("Relu", ["x"], ["y"])]))


def test_shape_arithmetic_cannot_ask_for_a_memory_bomb() -> None:
    shape = numpy_helper.from_array(np.array([1 << 20, 1 << 20], np.int64), "shape")
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [None, None])
    model = helper.make_model(helper.make_graph([helper.make_node("Expand", ["x", "shape"], ["y"])], "g", [x], [y],
                                                initializer=[shape]), opset_imports=[helper.make_opsetid("", 17)])
    data = model.SerializeToString()
    assert check_graph(data) == 0  # no float weights; the operator is one it runs
    with pytest.raises(UnsupportedGraph, match="at most"):
        GraphModule.from_bytes(data, seed=0)(torch.zeros(1, 1))


def test_check_graph_counts_the_weights_a_shadow_would_train() -> None:
    module = _trained(1)
    expected = sum(p.numel() for p in module.parameters()) + 2 * module.bn.num_features
    assert check_graph(_export(module)) == expected
