"""Client-side embeddings of texts through an ensemble's prompt templates (no encryption).

    emb = embed_with_templates(["a photo of a cat"], art.templates, encode)   # (Q, K, d)

What :meth:`~crypto.private_inference.client.PrivateClient.encrypt_batch` takes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from crypto import packing

__all__ = ["embed_with_templates", "render_templates"]


def render_templates(templates: Sequence[str], text: str) -> list[str]:
    """Fill each template's ``{}`` with ``text`` (appended after a space if it has none)."""
    return [t.replace("{}", text) if "{}" in t else f"{t} {text}" for t in templates]


def embed_with_templates(
    texts: Sequence[str],
    templates: Sequence[str],
    encode: Callable[[list[str]], npt.ArrayLike],
    *,
    normalize: bool = True,
) -> npt.NDArray[np.float64]:
    """Client-side embeddings ``(Q, K, d)``: each text through every template, one encoder call.

    ``encode`` maps a list of strings to ``(n, d)`` embeddings (e.g. MiniLM mean pooling);
    with ``normalize`` rows are scaled to unit norm, matching ``norm_bound=1``.
    """
    prompts = [p for text in texts for p in render_templates(templates, text)]
    emb = np.asarray(encode(prompts), dtype=np.float64)
    if emb.ndim != 2 or emb.shape[0] != len(prompts):
        raise packing.LayoutError(f"encoder returned {emb.shape} for {len(prompts)} prompts")
    if normalize:
        emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    return emb.reshape(len(texts), len(templates), emb.shape[1])
