"""Augmentations, vision architectures and seeded training loops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.architectures import architecture_task, create_architecture, list_architectures
from models.augment import GLOBAL_VIEW, LOCAL_VIEW, ViewSpec, augment, multi_view
from models.vision import (
    ENCODERS,
    ConvClassifier,
    accuracy,
    build_model,
    digits_splits,
    embed_fn,
    train_classifier,
    train_contrastive,
)


def test_architectures_registered():
    names = list_architectures()
    assert names["conv_encoder"] == "encoder" and names["pool_encoder"] == "encoder"
    assert architecture_task("conv_classifier") == "classifier"
    enc = create_architecture("conv_encoder", {"in_channels": 1, "image_size": 16, "embed_dim": 24})
    assert enc.eval()(torch.zeros(2, 1, 16, 16)).shape == (2, 24)
    pool = create_architecture("pool_encoder", {"image_size": 16})
    assert pool.eval()(torch.zeros(3, 256)).shape == (3, 64)


def test_scaled_encoder_is_the_shadow_it_wraps(tmp_path):
    """``scaled_encoder`` rebuilds a shadow as the ownership audit keeps it: the family's encoder,
    resized inside, answering on the data's own scale; its weights load back from safetensors
    and answer as the wrapped module does."""
    from safetensors.torch import save_file

    from models.engine import load_model
    from models.errors import ModelFormatError
    from models.vision import Rescaled, Resized, encoder_output_dim

    inner = build_model(ENCODERS["pool_encoder"], seed=3, in_channels=1, image_size=16, width=8, embed_dim=12)
    shadow = Rescaled(Resized(inner, 16), 0.0, 16.0).eval()
    config = {"family": "pool_encoder", "family_config": {"in_channels": 1, "image_size": 16, "width": 8,
                                                          "embed_dim": 12},
              "input_size": 16, "value_range": [0.0, 16.0]}
    path = tmp_path / "shadow.safetensors"
    save_file({k: v.contiguous() for k, v in shadow.state_dict().items()}, str(path))
    loaded = load_model(path, format="safetensors", architecture="scaled_encoder", config=config, device="cpu")
    x = np.random.default_rng(0).uniform(0, 16, (5, 1, 8, 8)).astype(np.float32)
    assert np.allclose(loaded.embed(x), embed_fn(shadow)(x), atol=1e-6)
    # the same numbers as the bare encoder on [0, 1] data at 16x16
    unit = torch.nn.functional.interpolate(torch.from_numpy(x / 16.0), size=(16, 16), mode="bilinear",
                                           align_corners=False)
    with torch.no_grad():
        assert np.allclose(loaded.embed(x), inner(unit).numpy(), atol=1e-5)
    with torch.device("meta"):
        meta = create_architecture("scaled_encoder", config)
    assert encoder_output_dim(meta, 1, 8) == 12
    for bad in ({**config, "family": "mlp"}, {**config, "value_range": [1.0, 1.0]},
                {**config, "value_range": [0.0]}):
        with pytest.raises(ModelFormatError):
            create_architecture("scaled_encoder", bad)


def test_digits_splits_are_disjoint_and_scaled():
    s = digits_splits(seed=0)
    sizes = [len(s.public[0]), len(s.private[0]), len(s.alternative[0])]
    assert sum(sizes) == 1797 and s.public[0].shape[1:] == (1, 16, 16)
    assert 0.0 <= s.public[0].min() and s.public[0].max() <= 1.0
    keys = [{a.tobytes() for a in part[0]} for part in (s.public, s.private, s.alternative)]
    assert not (keys[0] & keys[1]) and len(keys[0] & keys[2]) < 5  # digits has few dups


def test_augment_deterministic_shapes_and_range():
    x = torch.rand(6, 1, 16, 16)
    a = augment(x, GLOBAL_VIEW, generator=torch.Generator().manual_seed(1))
    b = augment(x, GLOBAL_VIEW, generator=torch.Generator().manual_seed(1))
    c = augment(x, GLOBAL_VIEW, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and 0.0 <= float(a.min()) and float(a.max()) <= 1.0
    digits = digits_splits(seed=0).public[0][:50]
    views = multi_view(digits, n_global=2, n_local=3, seed=0)
    assert views.shape == (50, 5, 1, 16, 16)
    # Local crops zoom in more: they differ more from the image than global ones.
    g_err = np.abs(views[:, :2] - digits[:, None]).mean()
    l_err = np.abs(views[:, 2:] - digits[:, None]).mean()
    assert l_err > g_err


def test_identity_view_is_identity():
    x = torch.rand(3, 1, 8, 8)
    spec = ViewSpec(scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0, brightness=0, contrast=0)
    out = augment(x, spec, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out, x, atol=1e-5)
    flip = ViewSpec(scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=1.0, brightness=0, contrast=0)
    out = augment(x, flip, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out, x.flip(-1), atol=1e-5)
    with pytest.raises(ValueError):
        ViewSpec(scale=(0.0, 1.0))
    assert LOCAL_VIEW.scale[1] < GLOBAL_VIEW.scale[1]


def test_contrastive_training_is_seeded_and_learns():
    torch.set_num_threads(1)
    x = digits_splits(seed=0).public[0][:64]
    encs = []
    for objective in ("simclr", "simclr", "simsiam"):
        enc = build_model(ENCODERS["conv_encoder"], seed=0, width=8)
        encs.append(train_contrastive(enc, x, objective=objective, seed=3, epochs=3, batch_size=32))
    e = [embed_fn(m)(x[:8]) for m in encs]
    assert np.array_equal(e[0], e[1]) and not np.allclose(e[0], e[2])
    assert np.isfinite(e[2]).all()
    with pytest.raises(ValueError, match="objective"):
        train_contrastive(encs[0], x, objective="barlow", seed=0)  # type: ignore[arg-type]


def test_classifier_training_reaches_useful_accuracy():
    torch.set_num_threads(1)
    s = digits_splits(seed=0)
    model = build_model(ConvClassifier, seed=0, width=16)
    train_classifier(model, *s.public, seed=0, epochs=15)
    assert accuracy(model, *s.private) > 0.85
    with pytest.raises(ValueError):
        train_classifier(model, s.public[0][:0], s.public[1][:0], seed=0)


def test_contrastive_training_reports_each_epoch():
    torch.set_num_threads(1)
    x = digits_splits(seed=0).public[0][:32]
    for objective in ("simclr", "byol"):
        calls: list[tuple[int, int]] = []
        enc = build_model(ENCODERS["conv_encoder"], seed=0, width=8)
        train_contrastive(enc, x, objective=objective, seed=1, epochs=2, batch_size=16,
                          on_epoch=lambda *a, calls=calls: calls.append(a))
        assert calls == [(1, 2), (2, 2)], objective


def _centred_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a - a.mean(axis=0), b - b.mean(axis=0)
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_distilled_encoder_answers_as_its_teacher_on_images_it_never_saw():
    """A student distilled on views of one set of digits embeds *other* digits (and views of
    them) as its teacher does, up to a shift and a scale; untrained it does not; the same seed
    gives the same student; progress is reported per epoch."""
    from models.augment import GLOBAL_VIEW
    from models.vision import distill_encoder, distillation_inputs

    torch.set_num_threads(1)
    s = digits_splits(seed=0)
    teacher = build_model(ENCODERS["conv_encoder"], seed=5, width=8, embed_dim=16)
    teacher = train_contrastive(teacher, s.public[0][:256], seed=5, epochs=3, batch_size=64)
    inputs = distillation_inputs(s.public[0][:256], views=8, view=GLOBAL_VIEW, seed=1)
    assert inputs.shape == (8 * 256, *s.public[0].shape[1:]) and np.array_equal(inputs[:256], s.public[0][:256])
    assert 0.0 <= inputs.min() and inputs.max() <= 1.0
    targets = embed_fn(teacher)(inputs)
    held_out = np.concatenate([s.private[0][:128], augment(torch.from_numpy(s.private[0][:128]), GLOBAL_VIEW,
                                                            generator=torch.Generator().manual_seed(9)).numpy()])
    calls: list[tuple[int, int]] = []
    students = []
    for _ in range(2):
        student = build_model(ENCODERS["conv_encoder"], seed=0, width=16, embed_dim=16)
        students.append(distill_encoder(student, inputs, targets, seed=3, epochs=12,
                                        on_epoch=lambda *a: calls.append(a)))
    untrained = build_model(ENCODERS["conv_encoder"], seed=0, width=16, embed_dim=16).eval()
    truth = embed_fn(teacher)(held_out)
    copied = _centred_cosines(embed_fn(students[0])(held_out), truth)
    assert np.median(copied) > 0.85, np.median(copied)  # 0.92 measured
    assert np.median(_centred_cosines(embed_fn(untrained)(held_out), truth)) < 0.3  # -0.07 measured
    assert np.array_equal(embed_fn(students[0])(held_out), embed_fn(students[1])(held_out))
    assert calls[:12] == [(k, 12) for k in range(1, 13)]
    with pytest.raises(ValueError, match="targets"):
        distill_encoder(untrained, inputs, targets[:10], seed=0)
    with pytest.raises(ValueError, match="finite"):
        distill_encoder(untrained, inputs[:2], np.full((2, 16), np.nan, np.float32), seed=0)
    with pytest.raises(ValueError, match="views"):
        distillation_inputs(s.public[0][:4], views=0, view=GLOBAL_VIEW, seed=0)
