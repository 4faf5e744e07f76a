"""The scripts this worker offers (A1111's `script_name` and `alwayson_scripts`), described as A1111's
GET /sdapi/v1/scripts and /script-info describe them. One table, SCRIPTS: a script added there is listed
by both endpoints, for the tabs (txt2img, img2img) it shows in. None are offered yet.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

TABS = ("txt2img", "img2img")


@dataclass(frozen=True)
class ScriptArg:
    """One argument, as A1111's UI offers it: its label, default value and the bounds or choices."""

    label: str
    value: Any = None
    minimum: Any = None
    maximum: Any = None
    step: Any = None
    choices: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Script:
    name: str  # as A1111 lists it: the script's title in lower case (e.g. "prompt matrix")
    is_alwayson: bool
    args: tuple[ScriptArg, ...] = ()
    tabs: tuple[str, ...] = TABS


SCRIPTS: tuple[Script, ...] = ()
