"""Class-conditional generators: three reference families, ONNX export, a contract-checking
ONNX loader, and seeded sampling with ``z ~ N(0, t^2 I)``.

The generator contract (what an owner registers)::

    inputs:  float32 noise [batch, z_dim], int64 class index [batch]
    output:  float32 samples [batch, *sample_shape], on the scale of the suspects' inputs

Reference families, each trained here in seconds on CPU (used by the tests and benchmark)::

    gen = train_cvae(x, y, seed=0)                # conditional VAE decoder
    gen = train_moment_matching(x, y, seed=0)     # conditional generative moment-matching net
    gen = train_cgan(x, y, seed=0)                # conditional GAN (adversarial, non-saturating)
    gen = fit_linear_gaussian(x, y)               # per-class PCA / linear-Gaussian model
    export_onnx(gen, "g.onnx")
    loaded = OnnxGenerator.from_path("g.onnx")    # reads z_dim and sample_shape from the graph
    x_s = loaded.sample(labels, seed=1, temperature=1.0)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.errors import ModelError
from models.rng import isolated_global_rng, seeded_global_rng

#: Samples per generator call: bounds the memory of one ONNX run.
SAMPLE_CHUNK = 1024


class GeneratorContractError(ModelError):
    """A generator that does not follow the contract (inputs, outputs, finite samples)."""


class Generator(Protocol):
    """Anything that draws class-conditional samples reproducibly."""

    z_dim: int
    sample_shape: tuple[int, ...]

    def sample(self, labels: np.ndarray, *, seed: int, temperature: float) -> np.ndarray:
        """Samples ``[len(labels), *sample_shape]`` for ``labels`` with noise ``N(0, t^2 I)``."""
        ...


def noise(n: int, z_dim: int, *, seed: int, temperature: float) -> np.ndarray:
    """The noise the appliance feeds a generator: ``z ~ N(0, t^2 I)``, float32, from ``seed``."""
    if not (math.isfinite(temperature) and temperature > 0):
        raise GeneratorContractError(f"temperature must be a positive number, got {temperature!r}")
    rng = np.random.default_rng(int(seed))
    return (rng.standard_normal((n, z_dim)) * temperature).astype(np.float32)


def check_labels(labels: np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """Class indices as int64 ``[n]`` (in ``[0, num_classes)`` when given)."""
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise GeneratorContractError(f"labels must be a 1-D integer array, got {arr.dtype} {arr.shape}")
    if len(arr) and (arr.min() < 0 or (num_classes is not None and arr.max() >= num_classes)):
        raise GeneratorContractError(f"labels must lie in [0, {num_classes})")
    return arr.astype(np.int64)


def check_samples(out: np.ndarray, n: int, sample_shape: tuple[int, ...] | None, source: str) -> np.ndarray:
    """A generator's answer as finite float32 ``[n, *sample_shape]`` or a contract error."""
    arr = np.asarray(out)
    if arr.dtype.kind != "f":
        raise GeneratorContractError(f"{source} returned {arr.dtype} samples; float32 expected")
    if arr.ndim < 2 or arr.shape[0] != n:
        raise GeneratorContractError(f"{source} returned shape {arr.shape} for {n} labels")
    if sample_shape is not None and tuple(arr.shape[1:]) != tuple(sample_shape):
        raise GeneratorContractError(
            f"{source} returned samples of shape {tuple(arr.shape[1:])}, declared {tuple(sample_shape)}")
    if not np.isfinite(arr).all():
        raise GeneratorContractError(f"{source} returned NaN or infinite samples")
    return arr.astype(np.float32, copy=False)


# --------------------------------------------------------------------------- ONNX loader


@dataclass(frozen=True)
class OnnxSignature:
    """Names and shapes read from a generator graph."""

    noise_input: str
    label_input: str
    output: str
    z_dim: int
    sample_shape: tuple[int, ...]


def inspect_onnx_generator(path: Path) -> OnnxSignature:
    """Validate an ONNX file against the generator contract and read z_dim and sample_shape.

    Refuses anything else with :class:`GeneratorContractError` naming what is wrong; a
    sample shape the graph leaves symbolic is found by one probe run on two labels.
    """
    import onnx

    from models.formats import validate_onnx

    validate_onnx(Path(path))
    model = onnx.load_model(str(path), load_external_data=False)
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 2 or len(model.graph.output) != 1:
        raise GeneratorContractError(
            f"a generator graph has exactly two inputs (noise, class) and one output; this one has "
            f"{len(inputs)} inputs and {len(model.graph.output)} outputs")
    floats = onnx.TensorProto.FLOAT
    noise_in = [i for i in inputs if i.type.tensor_type.elem_type == floats]
    label_in = [i for i in inputs if i.type.tensor_type.elem_type == onnx.TensorProto.INT64]
    if len(noise_in) != 1 or len(label_in) != 1:
        raise GeneratorContractError("the two inputs must be one float32 noise tensor and one int64 class tensor")
    noise_dims = noise_in[0].type.tensor_type.shape.dim
    label_dims = label_in[0].type.tensor_type.shape.dim
    if len(noise_dims) != 2 or not noise_dims[1].HasField("dim_value") or noise_dims[1].dim_value <= 0:
        raise GeneratorContractError("the noise input must have shape [batch, z_dim] with a fixed z_dim")
    if len(label_dims) != 1:
        raise GeneratorContractError("the class input must have shape [batch]")
    output = model.graph.output[0]
    if output.type.tensor_type.elem_type != floats:
        raise GeneratorContractError("the generator output must be float32")
    out_dims = output.type.tensor_type.shape.dim
    if len(out_dims) < 2:
        raise GeneratorContractError("the output must have shape [batch, *sample_shape]")
    z_dim = int(noise_dims[1].dim_value)
    signature = OnnxSignature(noise_in[0].name, label_in[0].name, output.name, z_dim, ())
    if all(d.HasField("dim_value") and d.dim_value > 0 for d in out_dims[1:]):
        return OnnxSignature(**{**signature.__dict__, "sample_shape": tuple(int(d.dim_value) for d in out_dims[1:])})
    probe = OnnxGenerator(Path(path), signature)
    out = probe.raw(np.zeros((2, z_dim), np.float32), np.zeros(2, np.int64))
    return OnnxSignature(**{**signature.__dict__, "sample_shape": tuple(int(s) for s in out.shape[1:])})


class OnnxGenerator:
    """A contract-checked ONNX generator run with ONNX Runtime on the CPU."""

    def __init__(self, path: Path, signature: OnnxSignature, *, num_classes: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own types for graphs it cannot run
            raise GeneratorContractError(f"ONNX Runtime cannot load the generator: {exc}") from None
        self.signature = signature
        self.z_dim = signature.z_dim
        self.sample_shape = signature.sample_shape
        self.num_classes = num_classes

    @classmethod
    def from_path(cls, path: Path | str, *, num_classes: int | None = None) -> OnnxGenerator:
        """Inspect and load ``path``; raises :class:`GeneratorContractError` on a contract breach."""
        return cls(Path(path), inspect_onnx_generator(Path(path)), num_classes=num_classes)

    def raw(self, z: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """One run of the graph on ``(z, labels)``, without checks on the answer."""
        try:
            (out,) = self._session.run(
                [self.signature.output], {self.signature.noise_input: z, self.signature.label_input: labels})
        except Exception as exc:
            raise GeneratorContractError(f"the generator failed on a batch of {len(z)}: {exc}") from None
        return np.asarray(out)

    def sample(self, labels: np.ndarray, *, seed: int, temperature: float) -> np.ndarray:
        """Samples for ``labels`` with ``z ~ N(0, t^2 I)`` from ``seed``; contract-checked."""
        lab = check_labels(labels, self.num_classes)
        z = noise(len(lab), self.z_dim, seed=seed, temperature=temperature)
        parts = [
            check_samples(self.raw(z[i : i + SAMPLE_CHUNK], lab[i : i + SAMPLE_CHUNK]),
                          len(lab[i : i + SAMPLE_CHUNK]), self.sample_shape or None, "the generator")
            for i in range(0, len(lab), SAMPLE_CHUNK)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, *self.sample_shape), np.float32)


class TorchGenerator:
    """An in-process generator module ``(z, labels) -> samples`` behind the same contract."""

    def __init__(self, module: nn.Module, *, z_dim: int, sample_shape: tuple[int, ...]) -> None:
        self.module, self.z_dim, self.sample_shape = module.eval(), int(z_dim), tuple(sample_shape)

    def sample(self, labels: np.ndarray, *, seed: int, temperature: float) -> np.ndarray:
        """Samples for ``labels`` with ``z ~ N(0, t^2 I)`` from ``seed``."""
        lab = check_labels(labels)
        z = noise(len(lab), self.z_dim, seed=seed, temperature=temperature)
        with torch.inference_mode():
            out = self.module(torch.from_numpy(z), torch.from_numpy(lab)).numpy()
        return check_samples(out, len(lab), self.sample_shape, "the generator")


def export_onnx(generator: TorchGenerator, path: Path | str) -> Path:
    """Write ``generator`` as an ONNX graph that follows the contract (dynamic batch)."""
    target = Path(path)
    z = torch.zeros(2, generator.z_dim)
    c = torch.zeros(2, dtype=torch.int64)
    torch.onnx.export(
        generator.module.cpu().eval(), (z, c), str(target), dynamo=False,
        input_names=["noise", "label"], output_names=["sample"],
        dynamic_axes={"noise": {0: "batch"}, "label": {0: "batch"}, "sample": {0: "batch"}},
    )
    return target


# ------------------------------------------------------ safetensors + registered architecture


def _positive_int(config: dict[str, object], key: str, low: int, high: int) -> int:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise GeneratorContractError(f"generator config {key!r} must be an integer from {low} to {high}")
    return value


def _sample_shape(config: dict[str, object]) -> tuple[int, ...]:
    shape = config.get("sample_shape")
    if not isinstance(shape, list | tuple) or not 1 <= len(shape) <= 4 or not all(
            isinstance(d, int) and not isinstance(d, bool) and 0 < d <= 4096 for d in shape):
        raise GeneratorContractError("generator config 'sample_shape' must be a list of 1 to 4 positive integers")
    if math.prod(shape) > 1_000_000:
        raise GeneratorContractError("generator config 'sample_shape' holds more than 10^6 values")
    return tuple(int(d) for d in shape)


def _conditional_mlp(config: dict[str, object]) -> nn.Module:
    return ConditionalMLP(z_dim=_positive_int(config, "z_dim", 1, 4096),
                          num_classes=_positive_int(config, "num_classes", 2, 10_000),
                          sample_shape=_sample_shape(config),
                          hidden=_positive_int(config, "hidden", 1, 8192), depth=_positive_int(config, "depth", 1, 8))


def _linear_gaussian(config: dict[str, object]) -> nn.Module:
    k, z, shape = (_positive_int(config, "num_classes", 2, 10_000), _positive_int(config, "z_dim", 1, 4096),
                   _sample_shape(config))
    low, high = config.get("low", 0.0), config.get("high", 1.0)
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in (low, high)) \
            or not float(low) < float(high):  # type: ignore[arg-type]
        raise GeneratorContractError("generator config 'low' and 'high' must be finite numbers, low < high")
    d = math.prod(shape)
    return LinearGaussianNet(torch.zeros(k, d), torch.zeros(k, z, d), shape, float(low), float(high))  # type: ignore[arg-type]


#: Generator architectures a safetensors upload may name, with the config keys each takes; every
#: one is called ``(noise [batch, z_dim] float32, class [batch] int64) -> [batch, *sample_shape]``.
GENERATOR_ARCHITECTURES = {
    "conditional_mlp": (_conditional_mlp, {"z_dim", "num_classes", "sample_shape", "hidden", "depth"}),
    "linear_gaussian": (_linear_gaussian, {"z_dim", "num_classes", "sample_shape", "low", "high"}),
}


def build_generator(architecture: str, config: dict[str, object]) -> TorchGenerator:
    """An untrained generator of a registered architecture (config checked)."""
    if architecture not in GENERATOR_ARCHITECTURES:
        raise GeneratorContractError(f"unknown generator architecture {architecture!r}; registered: "
                                     f"{sorted(GENERATOR_ARCHITECTURES)}")
    builder, keys = GENERATOR_ARCHITECTURES[architecture]
    unknown = set(config) - keys - {"class_names"}
    if unknown:
        raise GeneratorContractError(f"unknown option(s) {sorted(unknown)} for generator architecture "
                                     f"{architecture!r}; accepted: {sorted(keys)}")
    with torch.device("cpu"), isolated_global_rng():
        module = builder(config)
    return TorchGenerator(module, z_dim=int(config["z_dim"]), sample_shape=_sample_shape(config))  # type: ignore[call-overload]


def load_safetensors_generator(path: Path | str, architecture: str, config: dict[str, object]) -> TorchGenerator:
    """A generator of ``architecture`` with its weights from a safetensors file (no pickle); the
    tensors must match the architecture's exactly (names, shapes), else a contract error."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    gen = build_generator(architecture, config)
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise GeneratorContractError(f"cannot read the generator's safetensors file: {exc}") from None
    try:
        gen.module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise GeneratorContractError(f"the weights do not fit generator architecture {architecture!r}: "
                                     f"{str(exc).splitlines()[0]}") from None
    gen.module.eval()
    return gen


def save_safetensors_generator(generator: TorchGenerator, path: Path | str) -> tuple[str, dict[str, object]]:
    """Write a reference family's generator as safetensors; returns ``(architecture, config)`` to
    register it with."""
    from safetensors.torch import save_file

    module = generator.module
    config: dict[str, object]
    if isinstance(module, ConditionalMLP):
        linears = [m for m in module.net if isinstance(m, nn.Linear)]
        arch, config = "conditional_mlp", {"hidden": linears[0].out_features, "depth": len(linears) - 1}
        k = int(module.onehot.shape[0])
    elif isinstance(module, LinearGaussianNet):
        arch, config = "linear_gaussian", {"low": module.low, "high": module.high}
        k = int(module.mean.shape[0])
    else:
        raise GeneratorContractError(f"no registered generator architecture for {type(module).__name__}")
    save_file({n: t.contiguous() for n, t in module.state_dict().items()}, str(path))
    return arch, {**config, "z_dim": generator.z_dim, "num_classes": k, "sample_shape": list(generator.sample_shape)}


def safetensors_generator_config(path: Path, architecture: str | None,
                                 config: dict[str, object] | None) -> dict[str, object]:
    """The stored config of a safetensors generator upload: architecture and config checked,
    weights loaded strictly, one probe run on every class giving finite samples of the declared
    shape. Raises :class:`GeneratorContractError`."""
    if not architecture:
        raise GeneratorContractError(f"a safetensors generator needs 'architecture' (one of "
                                     f"{sorted(GENERATOR_ARCHITECTURES)}) and its 'config'")
    given = dict(config or {})
    names = given.get("class_names")
    k = _positive_int(given, "num_classes", 2, 10_000)
    if names is not None and (not isinstance(names, list) or len(names) != k
                              or not all(isinstance(n, str) and 0 < len(n) <= 128 for n in names)):
        raise GeneratorContractError(f"'class_names' must be a list of {k} non-empty strings")
    gen = load_safetensors_generator(path, architecture, given)
    try:
        gen.sample(np.arange(min(k, SAMPLE_CHUNK), dtype=np.int64), seed=0, temperature=1.0)
    except RuntimeError as exc:
        raise GeneratorContractError(f"the generator failed on a probe batch: {exc}") from None
    return {**given, "sample_shape": list(gen.sample_shape)}


def registered_generator(path: Path | str, fmt: str, architecture: str | None,
                         config: dict[str, object]) -> Generator:
    """A registered generator as stored: ONNX, or safetensors + a registered architecture."""
    k = config.get("num_classes")
    if fmt == "onnx":
        return OnnxGenerator.from_path(path, num_classes=int(k) if isinstance(k, int) else None)
    if fmt == "safetensors" and architecture:
        return load_safetensors_generator(path, architecture, config)
    raise GeneratorContractError(f"generators are ONNX graphs or safetensors with an architecture, not {fmt!r}")


# --------------------------------------------------------------------- reference families


class LinearGaussianNet(nn.Module):
    """Per-class linear-Gaussian model: ``x = mean[c] + z @ basis[c]``, clipped to the data range."""

    def __init__(self, mean: torch.Tensor, basis: torch.Tensor, sample_shape: tuple[int, ...],
                 low: float, high: float) -> None:
        super().__init__()
        self.mean: torch.Tensor
        self.basis: torch.Tensor
        self.register_buffer("mean", mean)
        self.register_buffer("basis", basis)
        self.sample_shape, self.low, self.high = sample_shape, low, high

    def forward(self, z: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        flat = self.mean[label] + torch.bmm(z.unsqueeze(1), self.basis[label]).squeeze(1)
        return flat.clamp(self.low, self.high).reshape(-1, *self.sample_shape)


class ConditionalMLP(nn.Module):
    """``sigmoid(MLP([z, onehot(c)]))`` scaled to the data range: the decoder of the cVAE and the
    generator of the moment-matching net."""

    def __init__(self, *, z_dim: int, num_classes: int, sample_shape: tuple[int, ...],
                 hidden: int = 128, depth: int = 2) -> None:
        super().__init__()
        self.onehot: torch.Tensor
        self.register_buffer("onehot", torch.eye(num_classes))
        layers: list[nn.Module] = []
        width = z_dim + num_classes
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        layers.append(nn.Linear(width, int(np.prod(sample_shape))))
        self.net = nn.Sequential(*layers)
        self.sample_shape = sample_shape

    def forward(self, z: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        h = torch.cat([z, self.onehot[label]], dim=1)
        return torch.sigmoid(self.net(h)).reshape(-1, *self.sample_shape)


def _check_data(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, int]:
    if x.ndim < 2 or y.ndim != 1 or len(x) != len(y) or len(x) < 2:
        raise ValueError(f"need x [n, ...] and y [n], got {x.shape} and {y.shape}")
    if x.min() < 0 or x.max() > 1:
        raise ValueError("the reference families model data in [0, 1]")
    flat = torch.from_numpy(np.ascontiguousarray(x.reshape(len(x), -1), dtype=np.float32))
    return flat, torch.from_numpy(y.astype(np.int64)), int(y.max()) + 1


def fit_linear_gaussian(x: np.ndarray, y: np.ndarray, *, z_dim: int = 8) -> TorchGenerator:
    """Per class: the mean and the top ``z_dim`` principal directions scaled by their standard
    deviations, so that ``z ~ N(0, I)`` reproduces the class's fitted Gaussian (PCA model)."""
    flat, labels, k = _check_data(x, y)
    means, bases = [], []
    for c in range(k):
        rows = flat[labels == c]
        if len(rows) < 2:
            raise ValueError(f"class {c} needs at least two samples")
        mu = rows.mean(0)
        _, s, vh = torch.linalg.svd(rows - mu, full_matrices=False)
        r = min(z_dim, len(s))
        basis = torch.zeros(z_dim, flat.shape[1])
        basis[:r] = vh[:r] * (s[:r] / math.sqrt(len(rows) - 1)).unsqueeze(1)
        means.append(mu)
        bases.append(basis)
    net = LinearGaussianNet(torch.stack(means), torch.stack(bases), tuple(x.shape[1:]), 0.0, 1.0)
    return TorchGenerator(net, z_dim=z_dim, sample_shape=tuple(x.shape[1:]))


def train_cvae(x: np.ndarray, y: np.ndarray, *, seed: int, z_dim: int = 8, epochs: int = 300,
               batch_size: int = 64, lr: float = 2e-3) -> TorchGenerator:
    """A conditional VAE (Bernoulli likelihood on [0, 1] pixels); returns its decoder."""
    flat, labels, k = _check_data(x, y)
    d = flat.shape[1]
    with seeded_global_rng(int(seed)):
        encoder = nn.Sequential(nn.Linear(d + k, 128), nn.ReLU(), nn.Linear(128, 2 * z_dim))
        decoder = ConditionalMLP(z_dim=z_dim, num_classes=k, sample_shape=tuple(x.shape[1:]))
    gen = torch.Generator().manual_seed(int(seed))
    onehot = torch.eye(k)
    opt = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=lr)
    for _ in range(epochs):
        order = torch.randperm(len(flat), generator=gen)
        for start in range(0, len(flat), batch_size):
            idx = order[start : start + batch_size]
            xb, cb = flat[idx], labels[idx]
            mu, logvar = encoder(torch.cat([xb, onehot[cb]], 1)).chunk(2, dim=1)
            z = mu + torch.randn(mu.shape, generator=gen) * torch.exp(0.5 * logvar)
            recon = decoder(z, cb).reshape(len(idx), -1).clamp(1e-6, 1 - 1e-6)
            nll = F.binary_cross_entropy(recon, xb, reduction="sum") / len(idx)
            kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / len(idx)
            opt.zero_grad()
            (nll + kl).backward()
            opt.step()
    return TorchGenerator(decoder, z_dim=z_dim, sample_shape=tuple(x.shape[1:]))


def _mmd_kernel(a: torch.Tensor, b: torch.Tensor, bandwidths: Sequence[float]) -> torch.Tensor:
    d2 = torch.cdist(a, b).pow(2)
    return sum(torch.exp(-d2 / (2 * h * h)) for h in bandwidths)  # type: ignore[return-value]


def train_moment_matching(x: np.ndarray, y: np.ndarray, *, seed: int, z_dim: int = 8,
                          steps: int = 600, per_class: int = 32, lr: float = 2e-3) -> TorchGenerator:
    """A conditional generative moment-matching network (Li et al. 2015): a GAN-like generator
    trained without a discriminator by minimising, per class, the MMD between its samples and
    the data under a mixture of RBF kernels."""
    flat, labels, k = _check_data(x, y)
    with seeded_global_rng(int(seed)):
        net = ConditionalMLP(z_dim=z_dim, num_classes=k, sample_shape=tuple(x.shape[1:]))
    gen = torch.Generator().manual_seed(int(seed))
    scale = math.sqrt(flat.shape[1])
    bandwidths = [0.1 * scale, 0.2 * scale, 0.4 * scale, 0.8 * scale]
    real = [flat[labels == c] for c in range(k)]
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    cls = torch.arange(k).repeat_interleave(per_class)
    for _ in range(steps):
        fake = net(torch.randn(len(cls), z_dim, generator=gen), cls).reshape(len(cls), -1)
        loss = torch.zeros(())
        for c in range(k):
            f = fake[c * per_class : (c + 1) * per_class]
            loss = loss + _mmd_kernel(f, f, bandwidths).mean() - 2 * _mmd_kernel(f, real[c], bandwidths).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return TorchGenerator(net.eval(), z_dim=z_dim, sample_shape=tuple(x.shape[1:]))


def train_cgan(x: np.ndarray, y: np.ndarray, *, seed: int, z_dim: int = 8, steps: int = 3000,
               batch_size: int = 64, lr: float = 5e-4, hidden: int = 128) -> TorchGenerator:
    """A class-conditional GAN (Mirza & Osindero 2014) with the non-saturating loss of Goodfellow
    et al.: generator :class:`ConditionalMLP`, discriminator an MLP on ``[x, onehot(c)]`` (leaky
    ReLU), both trained with Adam (beta1 0.5), one discriminator step per generator step."""
    flat, labels, k = _check_data(x, y)
    d = flat.shape[1]
    with seeded_global_rng(int(seed)):
        net = ConditionalMLP(z_dim=z_dim, num_classes=k, sample_shape=tuple(x.shape[1:]), hidden=hidden)
        disc = nn.Sequential(nn.Linear(d + k, hidden), nn.LeakyReLU(0.2),
                             nn.Linear(hidden, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 1))
    gen = torch.Generator().manual_seed(int(seed))
    onehot = torch.eye(k)
    opt_g = torch.optim.Adam(net.parameters(), lr=lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=lr, betas=(0.5, 0.999))
    for _ in range(steps):
        idx = torch.randint(0, len(flat), (batch_size,), generator=gen)
        real, cls = flat[idx], labels[idx]
        fake = net(torch.randn(batch_size, z_dim, generator=gen), cls).reshape(batch_size, -1)
        d_real = disc(torch.cat([real, onehot[cls]], 1))
        d_fake = disc(torch.cat([fake.detach(), onehot[cls]], 1))
        loss_d = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
        loss_g = F.softplus(-disc(torch.cat([fake, onehot[cls]], 1))).mean()
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
    return TorchGenerator(net.eval(), z_dim=z_dim, sample_shape=tuple(x.shape[1:]))


__all__ = [
    "GENERATOR_ARCHITECTURES",
    "SAMPLE_CHUNK",
    "ConditionalMLP",
    "Generator",
    "GeneratorContractError",
    "LinearGaussianNet",
    "OnnxGenerator",
    "OnnxSignature",
    "TorchGenerator",
    "check_labels",
    "check_samples",
    "build_generator",
    "export_onnx",
    "generator_config",
    "fit_linear_gaussian",
    "inspect_onnx_generator",
    "load_safetensors_generator",
    "registered_generator",
    "safetensors_generator_config",
    "save_safetensors_generator",
    "noise",
    "train_cgan",
    "train_cvae",
    "train_moment_matching",
]


def generator_config(path: Path, config: dict[str, object] | None) -> dict[str, object]:
    """The stored config of a generator upload: the owner's ``num_classes`` (and optional
    ``class_names``) checked, plus ``z_dim`` and ``sample_shape`` read from the graph; one probe
    run on every class must give finite samples. Raises :class:`GeneratorContractError`."""
    given = dict(config or {})
    unknown = set(given) - {"num_classes", "class_names"}
    if unknown:
        raise GeneratorContractError(
            f"unknown generator option(s) {sorted(unknown)}; accepted: num_classes, class_names")
    k = given.get("num_classes")
    if isinstance(k, bool) or not isinstance(k, int) or not 2 <= k <= 10_000:
        raise GeneratorContractError("a generator needs 'num_classes' (an integer from 2 to 10000) in its config")
    names = given.get("class_names")
    if names is not None and (not isinstance(names, list) or len(names) != k
                              or not all(isinstance(n, str) and 0 < len(n) <= 128 for n in names)):
        raise GeneratorContractError(f"'class_names' must be a list of {k} non-empty strings")
    loaded = OnnxGenerator.from_path(path, num_classes=k)
    loaded.sample(np.arange(min(k, SAMPLE_CHUNK), dtype=np.int64), seed=0, temperature=1.0)
    return {**given, "z_dim": loaded.z_dim, "sample_shape": list(loaded.sample_shape)}
