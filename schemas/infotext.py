"""Reading A1111's generation parameters text ("infotext") back: png-info's `parameters`, and the `infotext`
request field (A1111 1.8+), which fills the fields a request leaves unset. Pure text;
engine/imaging/infotext.py writes it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Container
from typing import Any

# one `Key: value` pair of the parameters line; a value is JSON-quoted or runs to the next comma
# (A1111's, with keys of at most 100 characters: unbounded, a long line without ":" takes quadratic time)
_PARAM = re.compile(r'\s*(\w[\w \-/]{0,99}):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
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


# the options an infotext sets (A1111's options with an infotext label); only those this worker has are applied
INFOTEXT_OPTIONS = {"Clip skip": "CLIP_stop_at_last_layers", "ENSD": "eta_noise_seed_delta", "Eta": "eta_ancestral",
                    "Eta DDIM": "eta_ddim", "Sigma churn": "s_churn", "Sigma tmin": "s_tmin", "Sigma tmax": "s_tmax",
                    "Sigma noise": "s_noise", "NGMS": "s_min_uncond"}
_HIRES_KEYS = ("Hires upscale", "Hires upscaler", "Hires resize-1")


def request_from_infotext(text: str, fields: dict[str, str], given: dict[str, Any], options: Container[str],
                          hires: bool) -> dict[str, Any]:
    """`given` (a request body) with the fields its infotext fills, as A1111's `infotext` field does: `fields` maps
    infotext keys to request fields; a field the request sent (even as null) keeps its value, and so does an
    override it sent. With `hires`, enable_hr follows from the hires keys. The infotext's option keys become
    override_settings (`options`: the option names this worker has)."""
    parsed = parse_infotext(text)
    filled = {field: parsed[key] for key, field in fields.items() if key in parsed and field not in given}
    if hires and "enable_hr" not in given:
        filled["enable_hr"] = "Denoising strength" in parsed and any(key in parsed for key in _HIRES_KEYS)
    overrides = {option: parsed[key] for key, option in INFOTEXT_OPTIONS.items() if key in parsed and option in options}
    sent = given.get("override_settings")
    if overrides and isinstance(sent, dict | None):
        filled["override_settings"] = {**overrides, **(sent or {})}
    return {**given, **filled}
