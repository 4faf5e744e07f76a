"""What every request body must be before its fields are read: JSON whose numbers are finite, whose strings
are valid Unicode, and whose nesting is shallow. Checked once for the whole body, so no field can carry
NaN into a generation, a lone surrogate into the tokenizer, or either into the response's JSON."""

from __future__ import annotations

import math
from typing import Any

from . import limits
from .errors import RequestError, cut


def check_payload(payload: Any, root: str = "") -> None:
    """Raise RequestError naming the first offending field (dotted path below `root`)."""
    todo: list[tuple[str, Any, int]] = [(root, payload, 0)]
    while todo:
        path, value, depth = todo.pop()
        if isinstance(value, float) and not math.isfinite(value):
            raise RequestError(path or "body", f"must be a finite number (got {value})")
        if isinstance(value, str):
            _check_text(path or "body", value)
        elif isinstance(value, (dict, list)):
            if depth >= limits.MAX_NESTING:
                raise RequestError(path or "body", f"nested more than {limits.MAX_NESTING} levels deep")
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(key, str):
                    _check_text(_join(path, "(key)"), key)
                todo.append((_join(path, cut(str(key))), item, depth + 1))


def _check_text(path: str, text: str) -> None:
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:
            raise RequestError(path, f"is not valid Unicode (a lone surrogate at character {error.start})") from None


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
