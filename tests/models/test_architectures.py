"""Registry of architectures: creation, validation and registration."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models.architectures import (
    architecture_task,
    create_architecture,
    list_architectures,
    register_architecture,
)
from models.errors import ModelFormatError, UnknownArchitectureError


def test_builtins_listed_with_task() -> None:
    names = list_architectures()
    assert names["mlp"] == "classifier"
    assert names["small_cnn"] == "classifier"


@pytest.mark.parametrize("image_size", [8, 16, 32])
def test_small_cnn_shapes(image_size: int) -> None:
    torch.manual_seed(0)
    model = create_architecture(
        "small_cnn", {"in_channels": 1, "image_size": image_size, "num_classes": 10, "width": 4}
    )
    image = torch.randn(3, 1, image_size, image_size)
    assert model(image).shape == (3, 10)
    # flattened input is reshaped to the declared image
    assert torch.allclose(model(image.reshape(3, -1)), model(image))


def test_mlp_hidden_int_or_list() -> None:
    one = create_architecture("mlp", {"in_features": 5, "hidden": 7, "num_classes": 3})
    two = create_architecture("mlp", {"in_features": 5, "hidden": [7, 4], "num_classes": 3})
    assert one(torch.zeros(2, 5)).shape == (2, 3)
    assert two(torch.zeros(2, 5)).shape == (2, 3)
    assert sum(isinstance(m, nn.Linear) for m in two.modules()) == 3


def test_unknown_name_lists_known() -> None:
    with pytest.raises(UnknownArchitectureError) as info:
        create_architecture("resnet9000", {})
    assert "mlp" in str(info.value) and "small_cnn" in str(info.value)
    assert isinstance(info.value, ValueError)
    assert info.value.diagnostics()


@pytest.mark.parametrize(
    "config, fragment",
    [
        ({"in_features": 4, "hidden": [3], "num_classes": 2, "dropout": 0.1}, "unknown keys"),
        ({"in_features": 4, "num_classes": 2}, "missing keys"),
        ({"in_features": -1, "hidden": [3], "num_classes": 2}, "positive integer"),
        ({"in_features": 4, "hidden": "big", "num_classes": 2}, "hidden"),
    ],
)
def test_bad_config_is_format_error(config: dict, fragment: str) -> None:
    with pytest.raises(ModelFormatError, match=fragment):
        create_architecture("mlp", config)


def test_register_custom_and_refuse_shadowing() -> None:
    def factory(*, dim: int) -> nn.Module:
        return nn.Linear(dim, dim)

    register_architecture("test_linear_encoder", factory, task="encoder")
    register_architecture("test_linear_encoder", factory, task="encoder")  # idempotent
    assert architecture_task("test_linear_encoder") == "encoder"
    assert isinstance(create_architecture("test_linear_encoder", {"dim": 3}), nn.Linear)
    with pytest.raises(ValueError, match="already registered"):
        register_architecture("test_linear_encoder", lambda **kw: nn.Identity())
    with pytest.raises(ValueError, match="task"):
        register_architecture("test_other", factory, task="regressor")
