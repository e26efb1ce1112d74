"""Errors raised by the :mod:`models` package.

Every failure a caller can cause has a named subclass of :class:`ModelError`, and
``diagnostics()`` gives the message and a hint on how to fix it (the project's one error
root, :class:`crypto.errors.Error`).
"""

from __future__ import annotations

from crypto.errors import Error


class ModelError(Error):
    """Base class of every error raised by :mod:`models`; ``diagnostics()`` gives the
    message and a hint on how to fix it."""

    hint = "check the model files and the parameters passed to the models package"


class ModelFormatError(ModelError):
    """The model file is malformed, truncated, unsupported, or a refused format (pickle)."""

    hint = (
        "upload ONNX, safetensors (with a registered architecture and config), or a tar of a "
        "transformers directory with config.json and *.safetensors weights; pickle is refused"
    )


class LimitExceeded(ModelFormatError):
    """An archive or array would expand past a configured bound (bytes or entries)."""

    hint = (
        "upload a smaller file, or ask the operator to raise the limit named in the message "
        "(APPLIANCE_MAX_EXTRACTED_BYTES, APPLIANCE_MAX_ARCHIVE_ENTRIES, "
        "APPLIANCE_MAX_DATASET_BYTES)"
    )


class UnknownArchitectureError(ModelError, ValueError):
    """The architecture name is not in the registry."""

    hint = "use one of the names returned by models.architectures.list_architectures()"


class DatasetError(ModelError):
    """The dataset file is malformed or fails validation."""

    hint = (
        "provide an .npz written by numpy.savez with a numeric, finite array 'x' and, for "
        "labelled data, a 1-d integer array 'y' of the same length"
    )


class ShapeError(ModelError):
    """An input does not have the shape or dtype the model expects."""

    hint = "reshape or cast the input to match the model's declared input"


class DeviceError(ModelError):
    """The requested compute device is unavailable or malformed."""

    hint = "use 'cpu', 'cuda' or 'cuda:N' (CUDA only where torch.cuda.is_available())"


class ManifestError(ModelError):
    """Model files do not match their manifest, or the manifest is malformed."""

    hint = "the model files changed since the manifest was built; re-upload or re-sign them"


__all__ = [
    "DatasetError",
    "DeviceError",
    "LimitExceeded",
    "ManifestError",
    "ModelError",
    "ModelFormatError",
    "ShapeError",
    "UnknownArchitectureError",
]
