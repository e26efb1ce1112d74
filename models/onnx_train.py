"""An ONNX graph as a freshly initialised, trainable torch module: the suspect's architecture
for a DOV4CL shadow, without knowing the code that built it.

    module = GraphModule.from_bytes(onnx_bytes, seed=0)   # the graph, every weight redrawn
    train_contrastive(FromUnit(module, 0.0, 16.0), unit_images, seed=0, epochs=400)
    shadow_onnx = module.to_onnx()                        # the same graph, trained weights

Every *weight* of the graph is redrawn before training, as torch initialises a new layer
(convolution and dense kernels Kaiming-uniform on their fan-in, biases uniform on the same
bound, normalisation scales 1 and shifts 0, running statistics 0 and 1), so nothing the
suspect learned reaches the shadow. A weight is a float initializer in a learned role: the
kernel and bias of ``Conv``, ``Gemm`` and ``MatMul``, the parameters of a normalisation, the
slope of ``PRelu``, and the per-channel tensor of a ``Mul`` or ``Add`` applied to the output of
a learned layer (how exporters write a ``GroupNorm``'s affine). Every other initializer (an
input scale such as ``x / 16``, shapes, indices) is a constant of the architecture and stays
as the graph has it; :attr:`GraphModule.constants` counts them.

The interpreter runs the operators exported vision encoders use (convolutions, dense layers,
normalisations, pooling, activations, resize, shape arithmetic); a graph with any other
operator, a subgraph, a non-default domain or external data is refused with
:class:`UnsupportedGraph` naming what it met. Nothing is unpickled: the graph is protobuf, the
weights are read with ``onnx.numpy_helper``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.augment import ViewSpec
from models.errors import ModelFormatError

if TYPE_CHECKING:
    from models.vision import EpochFn

#: Operators whose listed inputs (by position) are learned weights, with how each is redrawn.
_WEIGHT_ROLES: dict[str, dict[int, str]] = {
    "Conv": {1: "kernel", 2: "bias"},
    "Gemm": {1: "kernel", 2: "bias"},
    "MatMul": {1: "kernel"},
    "BatchNormalization": {1: "ones", 2: "zeros", 3: "zeros", 4: "ones"},
    "InstanceNormalization": {1: "ones", 2: "zeros"},
    "LayerNormalization": {1: "ones", 2: "zeros"},
    "GroupNormalization": {1: "ones", 2: "zeros"},
    "PRelu": {1: "slope"},
}
#: Operators whose output is a learned layer's: a ``Mul`` / ``Add`` of it with a tensor
#: initializer is that layer's affine (``Reshape`` and ``Identity`` pass the role through).
_LEARNED = frozenset({"Conv", "Gemm", "MatMul", "BatchNormalization", "InstanceNormalization",
                      "LayerNormalization", "GroupNormalization"})
_SHAPE_ONLY = frozenset({"Reshape", "Identity", "Flatten", "Squeeze", "Unsqueeze", "Transpose"})
#: BatchNormalization's running statistics: buffers, updated in training, never optimised.
_RUNNING = {3, 4}
#: An operator: (the module, its inputs, its attributes) -> its output(s).
_Op = Callable[["GraphModule", list[Any], dict[str, Any]], Any]
#: Upper bound on the nodes of a graph this module interprets.
MAX_NODES = 4096
#: Upper bound on the values of a tensor the graph computes from its own shape arithmetic.
MAX_ELEMENTS = 1 << 28


class UnsupportedGraph(ModelFormatError):
    """The ONNX graph uses something the trainable interpreter does not run."""

    hint = ("train the shadow with one of the appliance's architectures (shadow_training."
            "architecture conv_encoder or pool_encoder), or export the suspect with standard "
            "operators (opset 13-21, no custom domains, no control flow)")


class FromUnit(nn.Module):
    """Runs ``module`` (which takes inputs on ``[lo, hi]``) on inputs in [0, 1]: the appliance's
    augmentations work on [0, 1] while a suspect's graph takes its data's own scale."""

    def __init__(self, module: nn.Module, lo: float, hi: float) -> None:
        super().__init__()
        if not hi > lo:
            raise ValueError(f"need lo < hi, got {lo}, {hi}")
        self.module, self.lo, self.hi = module, float(lo), float(hi)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cast("torch.Tensor", self.module(x * (self.hi - self.lo) + self.lo))


def _attributes(node: Any) -> dict[str, Any]:
    import onnx

    out: dict[str, Any] = {}
    for attribute in node.attribute:  # subgraphs were refused by _check_model
        value = onnx.helper.get_attribute_value(attribute)
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        elif isinstance(value, onnx.TensorProto):
            value = onnx.numpy_helper.to_array(value)
        out[attribute.name] = value
    return out


def _parse(data: bytes) -> Any:
    import onnx
    from google.protobuf.message import DecodeError

    try:
        return onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise ModelFormatError(f"not a valid ONNX model: {exc}") from exc


def _check_model(model: Any) -> None:
    """Refuse what the interpreter does not run, before any weight is read."""
    import onnx

    graph = model.graph
    if len(graph.node) > MAX_NODES:
        raise UnsupportedGraph(f"graph has {len(graph.node)} nodes (at most {MAX_NODES})")
    for opset in model.opset_import:
        if opset.domain not in ("", "ai.onnx"):
            raise UnsupportedGraph(f"graph imports the operator domain {opset.domain!r}")
    for tensor in graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            raise UnsupportedGraph("graph keeps weights in external data")
    initial = {t.name for t in graph.initializer}
    inputs = [i.name for i in graph.input if i.name not in initial]
    if len(inputs) != 1:
        raise UnsupportedGraph(f"graph must take exactly one input, takes {len(inputs)}")
    if not graph.output:
        raise UnsupportedGraph("graph declares no output")
    for node in graph.node:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            raise UnsupportedGraph(f"node {node.name or node.op_type} has a subgraph (control flow)")
    unknown = sorted({node.op_type for node in graph.node} - set(_OPS))
    if unknown:
        raise UnsupportedGraph(f"graph uses operators the trainable interpreter does not run: {', '.join(unknown)}")


def check_graph(data: bytes) -> int:
    """Raise :class:`UnsupportedGraph` (or :class:`ModelFormatError`) unless ``data`` is an ONNX
    graph :class:`GraphModule` can run; return how many float values its initializers hold
    (an upper bound on the weights a shadow of it trains). Reads no weight."""
    import onnx

    model = _parse(data)
    _check_model(model)
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16)
    return sum(math.prod(t.dims) for t in model.graph.initializer if t.data_type in floats)


@dataclass(frozen=True)
class _Role:
    """How one weight is redrawn: ``redraw`` (kernel, bias, ones, zeros, slope), the operator
    it feeds, its shape, the operator's attributes and its kernel sibling's shape (a bias's
    bound is its layer's), and whether it is a running statistic (a buffer, not optimised)."""

    redraw: str
    op: str
    shape: tuple[int, ...]
    attrs: dict[str, Any]
    sibling: tuple[int, ...]
    buffer: bool


def _source(name: str, producer: dict[str, Any], initial: dict[str, np.ndarray]) -> str | None:
    """The initializer tensor ``name`` is, through shape-only operators (an exporter writes a
    GroupNorm's scale as ``Unsqueeze(weight)``, a dense kernel as ``Transpose(weight)``)."""
    for _ in range(MAX_NODES):
        if name in initial:
            return name
        node = producer.get(name)
        if node is None or node.op_type not in _SHAPE_ONLY or not node.input:
            return None
        name = node.input[0]
    return None


def _learned_origin(name: str, producer: dict[str, Any], initial: dict[str, np.ndarray]) -> bool:
    """Whether tensor ``name`` is the output of a learned layer, through shape-only operators
    and the layer's own affine (a ``Mul`` or ``Add`` with an initializer)."""
    for _ in range(MAX_NODES):
        node = producer.get(name)
        if node is None or not node.input:
            return False
        if node.op_type in _LEARNED:
            return True
        sources = [_source(n, producer, initial) for n in node.input]
        if node.op_type in ("Mul", "Add") and len(node.input) == 2 and any(sources):
            name = node.input[0] if sources[1] else node.input[1]
        elif node.op_type in _SHAPE_ONLY:
            name = node.input[0]
        else:
            return False
    return False


def _fan_in(kind: str, op: str, shape: tuple[int, ...], attrs: dict[str, Any], sibling: tuple[int, ...]) -> int:
    """The fan-in torch's default initialisation would use for this weight's layer."""
    kernel = sibling if kind == "bias" else shape
    if op == "Conv":
        return max(1, int(np.prod(kernel[1:])) if len(kernel) > 1 else 1)
    if op == "Gemm":
        transposed = bool(attrs.get("transB", 0))
        return max(1, int(kernel[1] if transposed else kernel[0]) if len(kernel) == 2 else 1)
    return max(1, int(kernel[0]) if kernel else 1)


class GraphModule(nn.Module):
    """The first output of an ONNX graph with one float input, as a torch module whose weights
    are :class:`torch.nn.Parameter` s, redrawn from ``seed`` (see the module docstring)."""

    def __init__(self, model: Any, *, seed: int) -> None:
        super().__init__()
        from onnx import numpy_helper

        graph = model.graph
        _check_model(model)
        initial = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        self.input_name = next(i.name for i in graph.input if i.name not in initial)
        self.output_name = graph.output[0].name
        self.nodes = [(node.op_type, list(node.input), list(node.output), _attributes(node),
                       node.name or node.op_type) for node in graph.node]
        self._model = model
        roles = self._roles(graph, initial)
        gen = torch.Generator().manual_seed(int(seed))
        self.weights = nn.ParameterDict()
        self.names: dict[str, str] = {}  # initializer name -> key in weights / buffers
        self.constants = 0
        self.running: set[str] = set()
        for index, (name, array) in enumerate(initial.items()):
            key = f"w{index}"
            self.names[name] = key
            role = roles.get(name)
            tensor = torch.from_numpy(np.array(array))
            if role is None or not tensor.is_floating_point():
                self.register_buffer(key, tensor, persistent=False)
                self.constants += int(tensor.is_floating_point() and tensor.numel() > 1)
            elif role.buffer:
                self.register_buffer(key, _redrawn(tensor, role, gen))
                self.running.add(key)
            else:
                self.weights[key] = nn.Parameter(_redrawn(tensor, role, gen))

    @classmethod
    def from_bytes(cls, data: bytes, *, seed: int) -> GraphModule:
        """Parse ``data`` (an ONNX model, at most what the upload limits allowed) and build it."""
        return cls(_parse(data), seed=seed)

    @staticmethod
    def _roles(graph: Any, initial: dict[str, np.ndarray]) -> dict[str, _Role]:
        """Initializer name -> how it is redrawn (only the initializers in a learned role)."""
        producer = {out: node for node in graph.node for out in node.output}
        roles: dict[str, _Role] = {}
        for node in graph.node:
            names = [_source(n, producer, initial) or "" for n in node.input]
            attrs = {a.name: a.i for a in node.attribute if a.name == "transB"}
            sibling = tuple(initial[names[1]].shape) if len(names) > 1 and names[1] else ()
            for position, redraw in _WEIGHT_ROLES.get(node.op_type, {}).items():
                if position >= len(names) or not names[position]:
                    continue
                shape = tuple(initial[names[position]].shape)
                if node.op_type == "MatMul" and len(shape) != 2:
                    continue
                running = node.op_type == "BatchNormalization" and position in _RUNNING
                roles.setdefault(names[position], _Role(redraw, node.op_type, shape, attrs, sibling, running))
            if node.op_type in ("Mul", "Add") and len(names) == 2:
                for mine, other in ((names[0], node.input[1]), (names[1], node.input[0])):
                    if mine and initial[mine].size > 1 and _learned_origin(other, producer, initial):
                        redraw = "ones" if node.op_type == "Mul" else "zeros"
                        roles.setdefault(mine, _Role(redraw, node.op_type, tuple(initial[mine].shape), {}, (), False))
        return roles

    @property
    def learned(self) -> int:
        """The number of redrawn weights (tensors) this module trains."""
        return len(self.weights)

    def _tensor(self, name: str, env: dict[str, Any]) -> Any:
        if name in env:
            return env[name]
        key = self.names.get(name)
        if key is None:
            raise UnsupportedGraph(f"tensor {name!r} is used before it is produced")
        return self.weights[key] if key in self.weights else getattr(self, key)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        env: dict[str, Any] = {self.input_name: x}
        for op, inputs, outputs, attrs, name in self.nodes:
            args = [None if not i else self._tensor(i, env) for i in inputs]
            try:
                result = _OPS[op](self, args, attrs)
            except UnsupportedGraph:
                raise
            except (RuntimeError, ValueError, IndexError, TypeError) as exc:
                raise UnsupportedGraph(f"node {name} ({op}) failed: {exc}") from exc
            results = result if isinstance(result, tuple) else (result,)
            for out, value in zip(outputs, results, strict=False):
                if out:
                    env[out] = value
        return cast("torch.Tensor", env[self.output_name])

    def to_onnx(self) -> bytes:
        """The graph with this module's weights (trained) in its initializers, as ONNX bytes."""
        import onnx
        from onnx import numpy_helper

        model = onnx.ModelProto()
        model.CopyFrom(self._model)
        state = {**dict(self.weights.items()), **dict(self.named_buffers())}
        for tensor in model.graph.initializer:
            key = self.names[tensor.name]
            value = state[key].detach().cpu().numpy().astype(numpy_helper.to_array(tensor).dtype)
            tensor.CopyFrom(numpy_helper.from_array(value, tensor.name))
        return cast("bytes", model.SerializeToString())


def train_graph_encoder(graph: bytes, unit_images: np.ndarray, value_range: tuple[float, float], *,
                        objective: str, seed: int, epochs: int, batch_size: int,
                        view: ViewSpec | None = None, projection_head: bool = False,
                        on_epoch: EpochFn | None = None) -> GraphModule:
    """A new encoder with ``graph``'s architecture, every weight redrawn from ``seed``, trained
    self-supervised (:func:`models.vision.train_contrastive`) on ``unit_images`` (the data
    mapped to [0, 1]); it answers, as the graph does, on the data's own ``value_range``."""
    from models.vision import TRAIN_VIEW, train_contrastive

    module = GraphModule.from_bytes(graph, seed=seed)
    train_contrastive(FromUnit(module, *value_range), unit_images, objective=objective,  # type: ignore[arg-type]
                      seed=seed, epochs=epochs, batch_size=min(batch_size, len(unit_images)),
                      view=view or TRAIN_VIEW, projection_head=projection_head, on_epoch=on_epoch)
    return module.eval()


def graph_summary(data: bytes) -> dict[str, Any]:
    """What a shadow of this graph is built from: its :func:`structure_digest`, its nodes, and
    how many of its tensors are redrawn weights and kept constants."""
    module = GraphModule.from_bytes(data, seed=0)
    return {"structure_sha256": _structure(module), "nodes": len(module.nodes), "learned": module.learned,
            "constants": module.constants}


def structure_digest(data: bytes) -> str:
    """A digest of what an ONNX graph *is* without what it learned: its nodes, inputs, outputs
    and every initializer's name, type and shape, plus the values of its constants (weights
    are left out). Two suspects of one architecture share it, so their shadows are one."""
    return _structure(GraphModule.from_bytes(data, seed=0))


def _structure(module: GraphModule) -> str:
    h = hashlib.sha256()
    for op, inputs, outputs, attrs, _ in module.nodes:
        h.update(repr((op, inputs, outputs, sorted((k, _plain(v)) for k, v in attrs.items()))).encode())
    h.update(repr((module.input_name, module.output_name)).encode())
    trained = set(module.weights.keys()) | module.running
    for name, key in sorted(module.names.items()):
        tensor = module.weights[key] if key in module.weights else getattr(module, key)
        h.update(repr((name, str(tensor.dtype), tuple(tensor.shape))).encode())
        if key not in trained:
            h.update(tensor.detach().cpu().numpy().tobytes())
    return h.hexdigest()


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return (value.dtype.str, value.shape, value.tobytes())
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    return value


def _redrawn(tensor: torch.Tensor, role: _Role, gen: torch.Generator) -> torch.Tensor:
    kind, shape, dtype = role.redraw, role.shape, tensor.dtype
    if kind == "ones":
        return torch.ones(shape, dtype=dtype)
    if kind == "zeros":
        return torch.zeros(shape, dtype=dtype)
    if kind == "slope":
        return torch.full(shape, 0.25, dtype=dtype)
    bound = 1.0 / math.sqrt(_fan_in(kind, role.op, shape, role.attrs, role.sibling))
    return (torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1).mul(bound).to(dtype)


# ------------------------------------------------------------------------------ operators


def _ints(value: Any) -> list[int]:
    if isinstance(value, torch.Tensor):
        return [int(v) for v in value.reshape(-1).tolist()]
    return [int(v) for v in value]


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _pads(attrs: dict[str, Any], spatial: int) -> tuple[list[int], bool]:
    """ONNX pads (begin..., end...) as F.pad's (last dim first); True where auto_pad asks SAME."""
    auto = str(attrs.get("auto_pad", "NOTSET"))
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        return [], True
    if auto not in ("NOTSET", "VALID"):
        raise UnsupportedGraph(f"auto_pad {auto} is not supported")
    pads = list(attrs.get("pads", [0] * (2 * spatial))) if auto == "NOTSET" else [0] * (2 * spatial)
    out: list[int] = []
    for d in reversed(range(spatial)):
        out += [pads[d], pads[d + spatial]]
    return out, False


def _conv(_: GraphModule, a: list[Any], at: dict[str, Any]) -> Any:
    x, w = a[0], a[1]
    spatial = w.dim() - 2
    if spatial not in (1, 2, 3):
        raise UnsupportedGraph(f"Conv with {spatial} spatial dimensions")
    pads, same = _pads(at, spatial)
    conv = (F.conv1d, F.conv2d, F.conv3d)[spatial - 1]
    stride = at.get("strides", [1] * spatial)
    dilation = at.get("dilations", [1] * spatial)
    if same:
        return conv(x, w, a[2] if len(a) > 2 else None, stride=stride, padding="same",
                    dilation=dilation, groups=int(at.get("group", 1)))
    if any(pads):
        x = F.pad(x, pads)
    return conv(x, w, a[2] if len(a) > 2 else None, stride=stride, dilation=dilation,
                groups=int(at.get("group", 1)))


def _gemm(_: GraphModule, a: list[Any], at: dict[str, Any]) -> Any:
    x, w = a[0], a[1]
    x = x.t() if at.get("transA", 0) else x
    w = w.t() if at.get("transB", 0) else w
    out = float(at.get("alpha", 1.0)) * (x @ w)
    if len(a) > 2 and a[2] is not None:
        out = out + float(at.get("beta", 1.0)) * a[2]
    return out


def _pool(kind: str) -> _Op:
    def run(_: GraphModule, a: list[Any], at: dict[str, Any]) -> Any:
        x = a[0]
        kernel = list(at["kernel_shape"])
        spatial = len(kernel)
        pads, same = _pads(at, spatial)
        if same or spatial != 2 or at.get("ceil_mode", 0) or any(d != 1 for d in at.get("dilations", [1] * spatial)):
            raise UnsupportedGraph(f"{kind} with SAME padding, ceil mode, dilation or non-2-d kernels")
        stride = at.get("strides", [1] * spatial)
        if kind == "MaxPool":
            if any(pads):
                x = F.pad(x, pads, value=float("-inf"))
            return F.max_pool2d(x, kernel, stride)
        if any(pads):
            x = F.pad(x, pads)
            if not at.get("count_include_pad", 0):
                ones = F.pad(torch.ones_like(a[0][:1, :1]), pads)
                return F.avg_pool2d(x, kernel, stride) / F.avg_pool2d(ones, kernel, stride)
        return F.avg_pool2d(x, kernel, stride)

    return run


def _batch_norm(module: GraphModule, a: list[Any], at: dict[str, Any]) -> Any:
    momentum = 1.0 - float(at.get("momentum", 0.9))
    return F.batch_norm(a[0], a[3], a[4], a[1], a[2], training=module.training, momentum=momentum,
                        eps=float(at.get("epsilon", 1e-5)))


def _group_norm(_: GraphModule, a: list[Any], at: dict[str, Any]) -> Any:
    x, groups = a[0], int(at["num_groups"])
    scale, bias = a[1], a[2]
    if scale.numel() == groups and groups != x.shape[1]:  # opset 18: one scale per group
        scale = scale.repeat_interleave(x.shape[1] // groups)
        bias = bias.repeat_interleave(x.shape[1] // groups)
    return F.group_norm(x, groups, scale, bias, eps=float(at.get("epsilon", 1e-5)))


def _layer_norm(_: GraphModule, a: list[Any], at: dict[str, Any]) -> Any:
    x = a[0]
    axis = _axis(int(at.get("axis", -1)), x.dim())
    return F.layer_norm(x, tuple(x.shape[axis:]), a[1] if len(a) > 1 else None, a[2] if len(a) > 2 else None,
                        eps=float(at.get("epsilon", 1e-5)))


def _reshape(_: GraphModule, a: list[Any], at: dict[str, Any]) -> Any:
    x, shape = a[0], _ints(a[1])
    if not at.get("allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def _flatten(_: GraphModule, a: list[Any], at: dict[str, Any]) -> Any:
    x = a[0]
    axis = _axis(int(at.get("axis", 1)), x.dim())
    return x.reshape(int(np.prod(x.shape[:axis])), -1)


def _axes(a: list[Any], at: dict[str, Any]) -> list[int] | None:
    if len(a) > 1 and a[1] is not None:
        return _ints(a[1])
    return list(at["axes"]) if "axes" in at else None


def _squeeze(_: GraphModule, a: list[Any], at: dict[str, Any]) -> Any:
    axes = _axes(a, at)
    x = a[0]
    if axes is None:
        return x.squeeze()
    for axis in sorted((_axis(v, x.dim()) for v in axes), reverse=True):
        x = x.squeeze(axis)
    return x


def _unsqueeze(_: GraphModule, a: list[Any], at: dict[str, Any]) -> Any:
    axes = _axes(a, at) or []
    x = a[0]
    rank = x.dim() + len(axes)
    for axis in sorted(_axis(v, rank) for v in axes):
        x = x.unsqueeze(axis)
    return x


def _reduce(fn: str) -> _Op:
    def run(_: GraphModule, a: list[Any], at: dict[str, Any]) -> Any:
        x = a[0]
        axes = _axes(a, at)
        keep = bool(at.get("keepdims", 1))
        if axes is None or not axes:
            if at.get("noop_with_empty_axes", 0):
                return x
            axes = list(range(x.dim()))
        dims = tuple(_axis(v, x.dim()) for v in axes)
        if fn == "mean":
            return x.mean(dim=dims, keepdim=keep)
        if fn == "sum":
            return x.sum(dim=dims, keepdim=keep)
        return x.amax(dim=dims, keepdim=keep)

    return run


def _slice(_: GraphModule, a: list[Any], at: dict[str, Any]) -> Any:
    x = a[0]
    starts, ends = _ints(a[1]), _ints(a[2])
    axes = _ints(a[3]) if len(a) > 3 and a[3] is not None else list(range(len(starts)))
    steps = _ints(a[4]) if len(a) > 4 and a[4] is not None else [1] * len(starts)
    index: list[Any] = [slice(None)] * x.dim()
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        if step <= 0:
            raise UnsupportedGraph("Slice with a non-positive step")
        size = x.shape[_axis(axis, x.dim())]
        index[_axis(axis, x.dim())] = slice(max(-size, min(start, size)), max(-size, min(end, size)), step)
    return x[tuple(index)]


def _gather(_: GraphModule, a: list[Any], at: dict[str, Any]) -> Any:
    x, idx = a[0], a[1].long()
    axis = _axis(int(at.get("axis", 0)), x.dim())
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    return x.index_select(axis, idx.reshape(-1)).reshape(*x.shape[:axis], *idx.shape, *x.shape[axis + 1:])


def _resize(_: GraphModule, a: list[Any], at: dict[str, Any]) -> Any:
    x = a[0]
    mode = str(at.get("mode", "nearest"))
    transform = str(at.get("coordinate_transformation_mode", "half_pixel"))
    sizes = a[3] if len(a) > 3 and a[3] is not None and a[3].numel() else None
    scales = a[2] if len(a) > 2 and a[2] is not None and a[2].numel() else None
    if sizes is not None:
        size = _ints(sizes)[2:]
    elif scales is not None:
        factors = scales.reshape(-1).tolist()[2:]
        size = [int(math.floor(d * float(f))) for d, f in zip(x.shape[2:], factors, strict=True)]
    else:
        raise UnsupportedGraph("Resize without sizes or scales")
    _bounded([*x.shape[:2], *size])
    if mode == "linear" and transform in ("half_pixel", "pytorch_half_pixel", "align_corners"):
        kind = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(size)]
        return F.interpolate(x, size=size, mode=kind, align_corners=transform == "align_corners")
    if mode == "nearest" and transform == "asymmetric" and str(at.get("nearest_mode", "round_prefer_floor")) == "floor":
        return F.interpolate(x, size=size, mode="nearest")
    raise UnsupportedGraph(f"Resize mode {mode} with {transform} coordinates is not supported")


def _clip(_: GraphModule, a: list[Any], at: dict[str, Any]) -> Any:
    low = a[1] if len(a) > 1 and a[1] is not None else at.get("min")
    high = a[2] if len(a) > 2 and a[2] is not None else at.get("max")
    return torch.clamp(a[0], None if low is None else float(low), None if high is None else float(high))


def _concat(_: GraphModule, a: list[Any], at: dict[str, Any]) -> Any:
    parts = [v for v in a if v is not None]
    return torch.cat(parts, dim=_axis(int(at["axis"]), parts[0].dim()))


def _constant(_: GraphModule, a: list[Any], at: dict[str, Any]) -> Any:
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if key in at:
            return torch.as_tensor(np.array(at[key]))
    raise UnsupportedGraph("Constant without a value")


_CAST = {1: torch.float32, 6: torch.int32, 7: torch.int64, 9: torch.bool, 10: torch.float16, 11: torch.float64}


def _cast(_: GraphModule, a: list[Any], at: dict[str, Any]) -> Any:
    to = int(at["to"])
    if to not in _CAST:
        raise UnsupportedGraph(f"Cast to ONNX type {to}")
    return a[0].to(_CAST[to])


def _unary(fn: Callable[[torch.Tensor], torch.Tensor]) -> _Op:
    return lambda _, a, __: fn(a[0])


def _binary(fn: Callable[[Any, Any], torch.Tensor]) -> _Op:
    return lambda _, a, __: fn(a[0], a[1])


def _gelu(_: GraphModule, a: list[Any], at: dict[str, Any]) -> Any:
    return F.gelu(a[0], approximate="tanh" if at.get("approximate", "none") == "tanh" else "none")


def _softmax(_: GraphModule, a: list[Any], at: dict[str, Any]) -> Any:
    return F.softmax(a[0], dim=int(at.get("axis", -1)))


def _transpose(_: GraphModule, a: list[Any], at: dict[str, Any]) -> Any:
    perm = at.get("perm")
    return a[0].permute(*perm) if perm is not None else a[0].permute(*reversed(range(a[0].dim())))


def _expand(_: GraphModule, a: list[Any], __: dict[str, Any]) -> Any:
    shape = _ints(a[1])
    _bounded(shape)
    return a[0] * torch.ones(shape, dtype=a[0].dtype)


def _bounded(shape: list[int]) -> None:
    """Refuse a shape the graph computes that no encoder needs (a memory bomb in the worker)."""
    if any(d < 0 for d in shape) or math.prod(shape) > MAX_ELEMENTS:
        raise UnsupportedGraph(f"the graph asks for a tensor of shape {shape} (at most {MAX_ELEMENTS} values)")


_OPS: dict[str, Callable[[GraphModule, list[Any], dict[str, Any]], Any]] = {
    "Identity": _unary(lambda x: x),
    "Dropout": lambda _, a, __: a[0],
    "Constant": _constant,
    "Cast": _cast,
    "Add": _binary(torch.add), "Sub": _binary(torch.sub), "Mul": _binary(torch.mul), "Div": _binary(torch.div),
    "Pow": _binary(torch.pow),
    "Sqrt": _unary(torch.sqrt), "Neg": _unary(torch.neg), "Abs": _unary(torch.abs), "Exp": _unary(torch.exp),
    "Log": _unary(torch.log), "Erf": _unary(torch.erf), "Reciprocal": _unary(torch.reciprocal),
    "Relu": _unary(F.relu), "Sigmoid": _unary(torch.sigmoid), "Tanh": _unary(torch.tanh),
    "Softplus": _unary(F.softplus), "Elu": lambda _, a, at: F.elu(a[0], float(at.get("alpha", 1.0))),
    "LeakyRelu": lambda _, a, at: F.leaky_relu(a[0], float(at.get("alpha", 0.01))),
    "HardSigmoid": lambda _, a, at: torch.clamp(float(at.get("alpha", 0.2)) * a[0] + float(at.get("beta", 0.5)), 0, 1),
    "HardSwish": _unary(F.hardswish), "PRelu": lambda _, a, __: torch.where(a[0] >= 0, a[0], a[0] * a[1]),
    "Gelu": _gelu, "Softmax": _softmax, "Clip": _clip,
    "Conv": _conv, "Gemm": _gemm, "MatMul": _binary(torch.matmul),
    "BatchNormalization": _batch_norm,
    "InstanceNormalization": lambda _, a, at: F.instance_norm(a[0], weight=a[1], bias=a[2],
                                                              eps=float(at.get("epsilon", 1e-5))),
    "LayerNormalization": _layer_norm, "GroupNormalization": _group_norm,
    "MaxPool": _pool("MaxPool"), "AveragePool": _pool("AveragePool"),
    "GlobalAveragePool": lambda _, a, __: a[0].mean(dim=tuple(range(2, a[0].dim())), keepdim=True),
    "GlobalMaxPool": lambda _, a, __: a[0].amax(dim=tuple(range(2, a[0].dim())), keepdim=True),
    "Flatten": _flatten, "Reshape": _reshape, "Transpose": _transpose, "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze, "Concat": _concat, "Expand": _expand,
    "Shape": lambda _, a, at: torch.tensor(list(a[0].shape)[int(at.get("start", 0)):at.get("end")], dtype=torch.int64),
    "Gather": _gather, "Slice": _slice, "Resize": _resize,
    "ReduceMean": _reduce("mean"), "ReduceSum": _reduce("sum"), "ReduceMax": _reduce("max"),
}


def supported_operators() -> Iterable[str]:
    """The ONNX operators :class:`GraphModule` runs."""
    return sorted(_OPS)


__all__ = ["MAX_NODES", "FromUnit", "GraphModule", "UnsupportedGraph", "check_graph", "graph_summary",
           "structure_digest",
           "supported_operators", "train_graph_encoder"]
