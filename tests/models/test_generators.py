"""Reference generators of four families on disjoint digits subsets, exported to ONNX and
loaded back through the contract check; seeded sampling; contract violations refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from models.generators import (
    GeneratorContractError,
    OnnxGenerator,
    export_onnx,
    fit_linear_gaussian,
    train_cgan,
    train_cvae,
    train_moment_matching,
)
from models.provenance import balanced_labels, digits_provenance_splits, draw_sets

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def parts() -> list[tuple[np.ndarray, np.ndarray]]:
    return digits_provenance_splits(seed=0)


def test_splits_are_disjoint_and_stratified(parts: list[tuple[np.ndarray, np.ndarray]]) -> None:
    flat = [x.reshape(len(x), -1) for x, _ in parts]
    assert sum(len(f) for f in flat) == 1797
    for _, y in parts:
        assert set(np.bincount(y)) <= {43, 44, 45, 46}
    seen = {row.tobytes() for row in flat[0]}
    assert not any(row.tobytes() in seen for row in flat[1])


def test_reference_families_export_and_follow_the_contract(parts, tmp_path: Path) -> None:
    generators = {
        "cvae": train_cvae(*parts[0], seed=0, epochs=5),
        "gmmn": train_moment_matching(*parts[1], seed=0, steps=10),
        "cgan": train_cgan(*parts[1], seed=0, steps=10),
        "pca": fit_linear_gaussian(*parts[2]),
    }
    labels = balanced_labels(10, 3)
    for name, torch_gen in generators.items():
        loaded = OnnxGenerator.from_path(export_onnx(torch_gen, tmp_path / f"{name}.onnx"), num_classes=10)
        assert loaded.z_dim == 8 and loaded.sample_shape == (1, 8, 8)
        a = loaded.sample(labels, seed=3, temperature=1.0)
        assert a.dtype == np.float32 and a.shape == (30, 1, 8, 8) and 0 <= a.min() and a.max() <= 1
        np.testing.assert_array_equal(a, loaded.sample(labels, seed=3, temperature=1.0))
        np.testing.assert_allclose(a, torch_gen.sample(labels, seed=3, temperature=1.0), atol=1e-5)
        assert not np.allclose(a, loaded.sample(labels, seed=4, temperature=1.0))
        with pytest.raises(GeneratorContractError):
            loaded.sample(np.array([10]), seed=0, temperature=1.0)


def test_pca_samples_carry_their_class(parts) -> None:
    from sklearn.linear_model import LogisticRegression

    gen = fit_linear_gaussian(*parts[2])
    sets = draw_sets(gen, num_classes=10, n_shadow=20, n_val=20, batches=4, seed=0)
    x_real, y_real = parts[3]
    clf = LogisticRegression(max_iter=500).fit(x_real.reshape(len(x_real), -1), y_real)
    acc = clf.score(sets.val_x.reshape(len(sets.val_x), -1), sets.val_y)
    assert acc > 0.8  # samples look like digits of the asked class to a real-data classifier
    assert [len(b) for b in sets.batches] == [50] * 4
    assert all(np.bincount(sets.val_y[b]).tolist() == [5] * 10 for b in sets.batches)


def _graph(path: Path, inputs: list, outputs: list, nodes: list) -> Path:
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs),
                              opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


def test_contract_violations_are_refused(tmp_path: Path) -> None:
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, ["b", 4])
    c = helper.make_tensor_value_info("c", TensorProto.INT64, ["b"])
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 4])
    one_input = _graph(tmp_path / "one.onnx", [z], [out], [helper.make_node("Identity", ["z"], ["y"])])
    with pytest.raises(GeneratorContractError, match="exactly two inputs"):
        OnnxGenerator.from_path(one_input)
    cf = helper.make_tensor_value_info("c", TensorProto.FLOAT, ["b"])
    float_class = _graph(tmp_path / "fc.onnx", [z, cf], [out], [helper.make_node("Identity", ["z"], ["y"])])
    with pytest.raises(GeneratorContractError, match="int64"):
        OnnxGenerator.from_path(float_class)
    nan = helper.make_node("Div", ["z", "zero"], ["y"])
    zero = helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])
    model = helper.make_model(helper.make_graph([nan, helper.make_node("Identity", ["c"], ["c2"])], "g",
                                                [z, c], [out], [zero]),
                              opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(tmp_path / "nan.onnx"))
    gen = OnnxGenerator.from_path(tmp_path / "nan.onnx")
    assert gen.z_dim == 4 and gen.sample_shape == (4,)
    with pytest.raises(GeneratorContractError, match="NaN"):
        gen.sample(np.array([0, 1]), seed=0, temperature=1.0)
    with pytest.raises(GeneratorContractError, match="temperature"):
        gen.sample(np.array([0]), seed=0, temperature=0.0)


def test_safetensors_generators_with_a_registered_architecture(parts, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from models.generators import registered_generator, safetensors_generator_config, save_safetensors_generator

    labels = balanced_labels(10, 3)
    for name, gen in (("cgan", train_cgan(*parts[1], seed=0, steps=5)), ("pca", fit_linear_gaussian(*parts[2]))):
        path = tmp_path / f"{name}.safetensors"
        arch, config = save_safetensors_generator(gen, path)
        stored = safetensors_generator_config(path, arch, config)
        assert stored["sample_shape"] == [1, 8, 8]
        loaded = registered_generator(path, "safetensors", arch, stored)
        np.testing.assert_allclose(loaded.sample(labels, seed=3, temperature=1.0),
                                   gen.sample(labels, seed=3, temperature=1.0), atol=1e-6)
    arch, config = save_safetensors_generator(fit_linear_gaussian(*parts[2]), tmp_path / "g.safetensors")
    bad = {
        "unknown architecture": ("resnet", config),
        "unknown option": (arch, {**config, "temperature": 2}),
        "wrong shape": (arch, {**config, "z_dim": 9}),
        "bad shape": (arch, {**config, "sample_shape": [0, 8]}),
        "no classes": (arch, {k: v for k, v in config.items() if k != "num_classes"}),
    }
    for why, (a, c) in bad.items():
        with pytest.raises(GeneratorContractError):
            safetensors_generator_config(tmp_path / "g.safetensors", a, c)
            pytest.fail(why)
    nan = tmp_path / "nan.safetensors"
    save_file({"mean": torch.full((10, 64), float("nan")), "basis": torch.zeros(10, 8, 64)}, str(nan))
    with pytest.raises(GeneratorContractError, match="NaN"):
        safetensors_generator_config(nan, arch, {**config, "low": -1e9, "high": 1e9})
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(GeneratorContractError):
        safetensors_generator_config(tmp_path / "junk.safetensors", arch, config)
