"""A1111's extra-network tags in prompts: `<lora:name>`, `<lora:name:weight>`, `<lora:name:te:unet>`.

Tags are cut out of the prompt text before it is parsed as a prompt. Arguments are separated by `:`;
`key=value` arguments are named (`te=`, `unet=`). As in A1111, a LoRA's weight defaults to 1, the UNet
weight to the text-encoder weight, and `lyco` is another name for `lora`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .errors import cut, quoted
from .prompt_bounds import check_prompt

EXTRA_NETWORK = re.compile(r"<(\w+):([^<>]+)>")  # A1111's [^>] with "<" left out: linear on "<a:<a:<a:..."
LORA_KINDS = ("lora", "lyco")
_NAMED = ("te", "unet")


@dataclass(frozen=True)
class LoraTag:
    name: str
    te_weight: float
    unet_weight: float
    field: str  # the request field the tag was written in


@dataclass(frozen=True)
class PassPrompts:
    """What one sampling pass reads from its prompts: the texts without tags, and the LoRAs they name."""

    prompt: str
    negative_prompt: str
    loras: tuple[LoraTag, ...]
    fields: tuple[str, str] = ("prompt", "negative_prompt")  # the request fields the texts came from

    def texts(self) -> tuple[tuple[str, str], tuple[str, str]]:
        """(field, text) of the prompt and the negative prompt."""
        return (self.fields[0], self.prompt), (self.fields[1], self.negative_prompt)


def pass_prompts(prompt: str, negative_prompt: str, fields: tuple[str, str], enabled: bool) -> PassPrompts:
    """Cut the tags out of a pass's prompt and negative prompt (named `fields` in errors); with
    `enabled` false (disable_extra_networks) every tag is removed and ignored, as in A1111."""
    text, loras = strip_extra_networks(prompt, fields[0], enabled)
    negative, negative_loras = strip_extra_networks(negative_prompt, fields[1], enabled)
    check_prompt(text, fields[0])
    check_prompt(negative, fields[1])
    return PassPrompts(text, negative, (*loras, *negative_loras), fields)


def strip_extra_networks(text: str, field: str, enabled: bool = True) -> tuple[str, list[LoraTag]]:
    """`text` without its extra-network tags, and the LoRA tags (none unless `enabled`).

    Raises ValueError naming `field` for a kind other than lora/lyco or a malformed LoRA tag.
    """
    loras: list[LoraTag] = []
    for match in EXTRA_NETWORK.finditer(text):
        if enabled:
            loras.append(_lora_tag(match, field))
    return EXTRA_NETWORK.sub("", text), loras


def _lora_tag(match: re.Match, field: str) -> LoraTag:
    tag, kind = cut(match.group(0)), match.group(1)
    if kind not in LORA_KINDS:
        raise ValueError(f"{field}: extra network {tag}: kind {quoted(kind)} is not supported by this worker; "
                         f"supported: {', '.join(LORA_KINDS)} (or set disable_extra_networks to ignore tags)")
    positional: list[str] = []
    named: dict[str, str] = {}
    for item in match.group(2).split(":"):
        key, equals, value = item.partition("=")
        if equals and "=" not in value:
            if key.strip() not in _NAMED:
                raise ValueError(f"{field}: {tag}: unknown argument {quoted(key.strip())}; supported: "
                                 f"{', '.join(_NAMED)} (<lora:name:te_weight:unet_weight> or te=/unet=)")
            named[key.strip()] = value
        else:
            positional.append(item)
    if not positional or not positional[0].strip():
        raise ValueError(f"{field}: {tag}: no LoRA name; write <lora:name:weight>")
    if len(positional) > 3:
        raise ValueError(f"{field}: {tag}: too many arguments; write <lora:name:te_weight:unet_weight> "
                         "(dynamic rank, the 4th argument, is not supported)")
    te = _weight(named.get("te", positional[1] if len(positional) > 1 else "1"), tag, field)
    unet = _weight(named.get("unet", positional[2] if len(positional) > 2 else str(te)), tag, field)
    return LoraTag(positional[0].strip(), te, unet, field)


def _weight(text: str, tag: str, field: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{field}: {tag}: weight {quoted(text.strip())} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{field}: {tag}: weight {quoted(text.strip())} must be finite")
    return value
