"""The catalog: registered models (ONNX, safetensors, transformers) and datasets (npz, JSONL)
that every other capability reads."""

from __future__ import annotations

from appliance.capabilities import Capability

CAPABILITY = Capability(name="catalog")
