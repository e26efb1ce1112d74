"""JSON from untrusted files, parsed only after its nesting depth has been checked.

Python's JSON decoder recurses once per nesting level, so a header of a million ``[``
raises ``RecursionError`` (or exhausts the C stack) instead of a clean refusal. Every
model or dataset file the appliance parses goes through :func:`load_bounded_json`::

    config = load_bounded_json(raw_bytes, what="config.json")   # ModelFormatError if bad
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any

from models.errors import ModelFormatError

#: Deepest nesting accepted; real configs, indexes and tokenizers stay below 10.
MAX_JSON_DEPTH = 64
# A JSON string, escapes included: brackets inside strings do not nest anything.
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def json_depth_exceeds(text: str, max_depth: int) -> bool:
    """Return True when ``text`` opens more than ``max_depth`` nested arrays or objects."""
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    return max(accumulate(map(_STEP.__getitem__, brackets), initial=0)) > max_depth


def load_bounded_json(
    data: bytes | str, *, what: str, max_depth: int = MAX_JSON_DEPTH
) -> Any:
    """Parse ``data`` as UTF-8 JSON nested at most ``max_depth`` levels deep.

    Raises :class:`ModelFormatError` naming ``what`` for bad UTF-8, bad JSON or deeper
    nesting; never ``RecursionError``.
    """
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError as exc:
        raise ModelFormatError(f"{what} is not valid UTF-8: {exc}") from None
    if json_depth_exceeds(text, max_depth):
        raise ModelFormatError(f"{what} nests JSON deeper than {max_depth} levels")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelFormatError(f"{what} is not valid JSON: {exc}") from None
    except RecursionError:  # unreachable after the depth check; kept as a last guard
        raise ModelFormatError(f"{what} nests JSON too deeply") from None


__all__ = ["MAX_JSON_DEPTH", "json_depth_exceeds", "load_bounded_json"]
