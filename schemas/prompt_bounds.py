"""Bounds on a prompt's syntax, checked with the request, before any work: how deep brackets nest (applying
emphasis costs one pass over a group's text per level, so deep nesting is quadratic work) and how large an
emphasis or AND weight may be (past that, the text encoder's output overflows and the image is NaN)."""

from __future__ import annotations

import math
import re

from . import limits
from .errors import cut

_EMPHASIS_WEIGHT = re.compile(r":\s*([+-]?[.\d]+)\s*\)")  # "(x:1.3)"
_AND_WEIGHT = re.compile(r":\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*(?=\bAND\b|$)")  # "a cat:1.2 AND a dog"


def check_prompt(text: str, field: str) -> None:
    """Raise ValueError naming `field` when `text` nests brackets too deep or weighs too much."""
    if _deepest_nesting(text) > limits.MAX_PROMPT_NESTING:
        raise ValueError(f"{field}: brackets nested more than {limits.MAX_PROMPT_NESTING} deep")
    for match in (*_EMPHASIS_WEIGHT.finditer(text), *_AND_WEIGHT.finditer(text)):
        try:
            weight = float(match.group(1))
        except ValueError:  # not a number ("1.2.3"): the parser reads it as text
            continue
        if not math.isfinite(weight) or abs(weight) > limits.MAX_PROMPT_WEIGHT:
            raise ValueError(f"{field}: weight {cut(match.group(1))} is out of range "
                             f"(-{limits.MAX_PROMPT_WEIGHT} to {limits.MAX_PROMPT_WEIGHT})")


def _deepest_nesting(text: str) -> int:
    """How deep ( and [ nest (escaped ones are text; unmatched closers close nothing)."""
    depth = deepest = 0
    escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char in "([":
            depth += 1
            deepest = max(deepest, depth)
        elif char in ")]" and depth:
            depth -= 1
    return deepest
