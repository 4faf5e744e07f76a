"""A1111's generation parameters text ("infotext"): the PNG `parameters` chunk and `info.infotexts`.

    <prompt>
    Negative prompt: <negative prompt>          (only when non-empty)
    Steps: 20, Sampler: Euler a, ..., Version: ...
"""

from __future__ import annotations

import json
import re
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


# one `Key: value` pair of the parameters line; a value is JSON-quoted or runs to the next comma
_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_SIZE = re.compile(r"^(\d+)x(\d+)$")
_NEGATIVE = "Negative prompt:"


def parse_infotext(text: str) -> dict[str, Any]:
    """The parameters an infotext holds, as A1111's png-info parses them.

    The last line counts as parameters only when it has at least 3 `Key: value` pairs; values stay
    strings, quoted values are JSON-decoded, and `WxH` values split into `Key-1` / `Key-2`.
    """
    *lines, last = text.strip().split("\n")
    pairs = _PARAM.findall(last)
    if len(pairs) < 3:
        lines.append(last)
        pairs = []
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith(_NEGATIVE):
            in_negative = True
            line = line[len(_NEGATIVE):].strip()
        (negative if in_negative else prompt).append(line)
    parsed: dict[str, Any] = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for key, value in pairs:
        value = value.strip()
        if len(value) > 1 and value[0] == value[-1] == '"':
            value = _unquote(value)
        if size := _SIZE.match(value):
            parsed[f"{key}-1"], parsed[f"{key}-2"] = size.group(1), size.group(2)
        else:
            parsed[key] = value
    return parsed


def _unquote(value: str) -> str:
    """A JSON-quoted value decoded; one that is not valid JSON (a Windows path: "C:\\models") stays as written,
    as A1111 leaves it."""
    try:
        return json.loads(value)
    except ValueError:
        return value
