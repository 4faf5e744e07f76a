"""A1111's generation parameters text ("infotext"), as written: the PNG `parameters` chunk and `info.infotexts`
(schemas/infotext.py reads it back).

    <prompt>
    Negative prompt: <negative prompt>          (only when non-empty)
    Steps: 20, Sampler: Euler a, ..., Version: ...
"""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, version
from typing import Any


def worker_version() -> str:
    try:
        return f"a1111-worker-v{version('a1111-worker')}"
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "a1111-worker-dev"


def format_value(value: Any) -> str:
    """Numbers as A1111 prints them (7.0 -> 7); values with , : or newlines JSON-quoted."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ",:\n") else text


def build_infotext(prompt: str, negative_prompt: str, params: dict[str, Any]) -> str:
    """`params` in A1111's order; None values are left out."""
    line = ", ".join(f"{key}: {format_value(value)}" for key, value in params.items() if value is not None)
    negative = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{line}"
