"""A1111's built-in scripts this worker runs (`script_name`, `script_args`).

The one table of them: their titles, the endpoints that offer them, and their arguments in the order of A1111's
UI (script_args are positional), with that UI's labels, defaults and ranges, which /scripts and /script-info
list. Parsing script_args and the lines of "Prompts from file or textbox" is pure and lives here; the router
expands a script into generations and the engine does the image work.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from . import limits
from .errors import RequestError, quoted, summary

if TYPE_CHECKING:
    from .generation import GenerationRequest

TXT2IMG, IMG2IMG = "txt2img", "img2img"
NO_SCRIPT = (None, "", "None")
FIELD = "script_args"
SCRIPT_FIELDS = {"script_name", "script_args"}


def _arg(default: Any, label: str, ui: dict[str, Any] | None = None, **rules: Any) -> Any:
    """A script argument: its default and its control in A1111's UI (`label`; `ui`: minimum, maximum, step,
    choices, or upscalers=True for /upscalers' names), which /script-info lists; `rules`: what a request may send."""
    return Field(default, title=label, json_schema_extra=ui or {}, **rules)


class ScriptArgs(BaseModel):
    """A script's arguments, in the order of A1111's UI and its run()."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @classmethod
    def positional(cls, values: list[Any]) -> ScriptArgs:
        """The arguments from script_args; those left out take their defaults (ValueError: what is wrong)."""
        names = list(cls.model_fields)
        if len(values) > len(names):
            raise ValueError(f"{FIELD}: takes at most {len(names)} values ({', '.join(names)}); got {len(values)}")
        try:
            return cls.model_validate(dict(zip(names, values)))
        except ValidationError as error:
            raise ValueError("; ".join(f"{cls.field(str(item['loc'][0]))}: {item['msg'].removeprefix('Value error, ')}"
                                       for item in error.errors(include_url=False))) from None

    @classmethod
    def field(cls, name: str, with_name: bool = True) -> str:
        """How errors name an argument: its place in script_args, and its name."""
        place = f"{FIELD}.{list(cls.model_fields).index(name)}"
        return f"{place} ({name})" if with_name else place

    @classmethod
    def ui(cls, upscalers: Sequence[str]) -> list[dict[str, Any]]:
        """A1111's /script-info `args`: each argument's UI control."""
        items = []
        for field in cls.model_fields.values():
            extra = field.json_schema_extra
            item = {"label": field.title, "value": field.default, **{key: extra.get(key) for key in
                                                                      ("minimum", "maximum", "step", "choices")}}
            if extra.get("upscalers"):
                item.update(value=upscalers[0], choices=list(upscalers))
            items.append(item)
        return items

    def check(self, request: GenerationRequest) -> None:
        """Check the arguments against the rest of the request's fields (ValueError: what is wrong)."""


# ---------------------------------------------------------------- Prompts from file or textbox

def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"must be a whole number (got {quoted(text)})") from None


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"must be a number (got {quoted(text)})") from None


def _boolean(text: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise ValueError(f"must be true or false (got {quoted(text)})")
    return text.lower() == "true"


# A1111's line options and how each value is read
LINE_OPTIONS: dict[str, Callable[[str], Any]] = {
    "sd_model": str, "outpath_samples": str, "outpath_grids": str, "prompt_for_display": str, "prompt": str,
    "negative_prompt": str, "styles": str, "seed": _whole, "subseed_strength": _number, "subseed": _whole,
    "seed_resize_from_h": _whole, "seed_resize_from_w": _whole, "sampler_index": _whole, "sampler_name": str,
    "batch_size": _whole, "n_iter": _whole, "steps": _whole, "cfg_scale": _number, "width": _whole,
    "height": _whole, "restore_faces": _boolean, "tiling": _boolean, "do_not_save_samples": _boolean,
    "do_not_save_grid": _boolean,
}
# options that change nothing in an API generation (A1111's output folders, a display prompt, a sampler's
# index, where the API takes samplers by name): accepted and left out
INERT_OPTIONS = {"outpath_samples", "outpath_grids", "prompt_for_display", "sampler_index"}
PROMPT_OPTIONS = ("prompt", "negative_prompt")  # their value runs to the next --option, words joined by spaces


def parse_line(line: str) -> dict[str, Any]:
    """A line's options: the line as the prompt, or, when it starts with `--`, A1111's options
    (`--prompt "a cat" --steps 10`), split into words as a shell does (ValueError: what is wrong)."""
    if not line.startswith("--"):
        return {"prompt": line}
    try:
        words = shlex.split(line)
    except ValueError as error:
        raise ValueError(f"can't be split into --options: {error}") from None
    options: dict[str, Any] = {}
    position = 0
    while position < len(words):
        option = words[position]
        key = option[2:]
        if not option.startswith("--"):
            raise ValueError(f"expected an --option, got {quoted(option)}")
        if key not in LINE_OPTIONS:
            raise ValueError(f"unknown option {quoted(option)}; valid: --{', --'.join(LINE_OPTIONS)}")
        if position + 1 == len(words):
            raise ValueError(f"{option} needs a value")
        end = position + 2
        while key in PROMPT_OPTIONS and end < len(words) and not words[end].startswith("--"):
            end += 1
        try:
            options[key] = LINE_OPTIONS[key](" ".join(words[position + 1:end]))
        except ValueError as error:
            raise ValueError(f"{option}: {error}") from None
        position = end
    return options


def line_fields(options: dict[str, Any], request: GenerationRequest, position: str) -> dict[str, Any]:
    """The request fields a line's options set. A line's prompt goes before (position "start") or after ("end")
    the request's own, and likewise its negative prompt, as in A1111."""
    fields = {key: value for key, value in options.items() if key not in INERT_OPTIONS}
    if "sd_model" in fields:
        checkpoint = fields.pop("sd_model")
        fields["override_settings"] = {**(request.override_settings or {}), "sd_model_checkpoint": checkpoint}
    if "styles" in fields:
        fields["styles"] = [fields["styles"]]
    for key in PROMPT_OPTIONS:
        own, text = getattr(request, key), fields.get(key)
        if own and text:
            fields[key] = f"{text} {own}" if position == "start" else f"{own} {text}"
    return fields


@dataclass(frozen=True)
class PromptLine:
    number: int  # in prompt_txt, from 1
    text: str
    request: GenerationRequest  # the script's request with the line's fields, validated
    sets_seed: bool  # --seed: the line's own seed, whatever the checkboxes


class PromptsFromFileArgs(ScriptArgs):
    checkbox_iterate: bool = _arg(False, "Iterate seed every line")
    checkbox_iterate_batch: bool = _arg(False, "Use same random seed for all lines")
    prompt_position: Literal["start", "end"] = _arg("start", "Insert prompts at the", {"choices": ["start", "end"]})
    prompt_txt: str = _arg("", "List of prompt inputs")

    @property
    def texts(self) -> list[tuple[int, str]]:
        """The non-empty lines, stripped, with their numbers in prompt_txt (from 1)."""
        return [(number, line.strip()) for number, line in enumerate(self.prompt_txt.splitlines(), 1) if line.strip()]

    @property
    def fixes_seed(self) -> bool:
        """Whether a random seed (-1) is picked once, before the first line (as A1111 does with either checkbox)."""
        return self.checkbox_iterate or self.checkbox_iterate_batch

    def check(self, request: GenerationRequest) -> None:
        count = len(self.texts)
        if not count:
            raise ValueError(f"{self.field('prompt_txt')}: has no lines; send a prompt or a line of --options per line")
        if count > limits.MAX_PROMPT_LINES:
            raise ValueError(f"{self.field('prompt_txt')}: {count} lines; the limit is {limits.MAX_PROMPT_LINES} "
                             "(WORKER_MAX_PROMPT_LINES)")

    def line_requests(self, request: GenerationRequest) -> tuple[PromptLine, ...]:
        """Each line as a request: `request` with the line's fields, validated like a request. RequestError names
        the line that is bad."""
        field = self.field("prompt_txt", with_name=False)
        base = request.model_dump(exclude=SCRIPT_FIELDS)
        lines = []
        for number, text in self.texts:
            try:
                fields = line_fields(parse_line(text), request, self.prompt_position)
                line_request = type(request).model_validate({**base, **fields})
                lines.append(PromptLine(number, text, line_request, "seed" in fields))
            except ValidationError as error:
                raise RequestError(field, f"line {number} ({quoted(text)}): {summary(error)}") from None
            except ValueError as error:
                raise RequestError(field, f"line {number} ({quoted(text)}): {error}") from None
        images = sum(line.request.batch_size * line.request.n_iter for line in lines)
        if images > limits.MAX_IMAGES:
            raise RequestError(field, f"the lines make {images} images (batch_size * n_iter each); the limit is "
                                      f"{limits.MAX_IMAGES} (WORKER_MAX_IMAGES)")
        return tuple(lines)

    def seeded(self, lines: Sequence[PromptLine], seed: int, step: int) -> list[GenerationRequest]:
        """The lines' requests with their seeds: `seed` (the caller picked it if fixes_seed and it was -1), plus
        `step` per line with checkbox_iterate (A1111 steps by the request's batch_size * n_iter); a line's own
        --seed wins."""
        return [line.request if line.sets_seed else line.request.model_copy(
            update={"seed": seed + (index * step if self.checkbox_iterate else 0)}) for index, line in enumerate(lines)]


# ---------------------------------------------------------------- SD upscale

class SdUpscaleArgs(ScriptArgs):
    info: Any = _arg("<p>Upscales the image by the scale factor; width and height set the size of the tiles</p>", "")
    overlap: int = _arg(64, "Tile overlap", {"minimum": 0, "maximum": 256, "step": 16}, ge=0)
    upscaler_index: int | str = _arg(0, "Upscaler", {"upscalers": True})  # /upscalers' index, or a name
    scale_factor: float = _arg(2.0, "Scale Factor", {"minimum": 1.0, "maximum": 4.0, "step": 0.05},
                               ge=1, le=limits.MAX_UPSCALE)

    @field_validator("upscaler_index", mode="before")
    @classmethod
    def _index_or_name(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ValueError("must be an index into /sdapi/v1/upscalers' list, or an upscaler's name")
        return value

    def check(self, request: GenerationRequest) -> None:
        if self.overlap >= min(request.width, request.height):
            raise ValueError(f"{self.field('overlap')}: must be less than width and height, the size of a tile "
                             f"({request.width}x{request.height}) (got {self.overlap})")
        if getattr(request, "mask", None):
            raise ValueError("mask: SD upscale redraws the whole image; send no mask with it")

    def upscaler_name(self, names: Sequence[str]) -> str:
        """The upscaler upscaler_index names: an index into `names` (/upscalers' list), or a name in any case, as
        A1111 takes it. A name not in `names` comes back as sent, for the engine to look for (and refuse)."""
        value = self.upscaler_index
        if isinstance(value, str):
            return next((name for name in names if name.lower() == value.lower()), value)
        if not 0 <= value < len(names):
            raise RequestError(self.field("upscaler_index", with_name=False),
                               f"upscaler index {value} is out of range; /sdapi/v1/upscalers lists "
                               f"{', '.join(f'{index}: {name}' for index, name in enumerate(names))}")
        return names[value]

    def output_size(self, size: tuple[int, int], upscaler: str) -> tuple[int, int]:
        """The size of the result for an init image of `size`: times scale_factor, floored to multiples of 8 as
        A1111's upscalers give it; with the "None" upscaler the image's own (A1111 does not upscale then)."""
        if upscaler == "None":
            return size
        width, height = (int(side * self.scale_factor) // 8 * 8 for side in size)
        if max(width, height) > limits.MAX_EXTRAS_SIDE:
            raise RequestError(self.field("scale_factor", with_name=False),
                               f"the upscaled image would be {width}x{height}, over the limit of "
                               f"{limits.MAX_EXTRAS_SIDE} per side (WORKER_MAX_EXTRAS_SIDE)")
        return width, height


# ---------------------------------------------------------------- the table

@dataclass(frozen=True)
class Script:
    title: str  # A1111's; script_name matches it in any case
    modes: tuple[str, ...]  # the endpoints that offer it
    args: type[ScriptArgs]

    @property
    def name(self) -> str:
        """As A1111 lists it: the title in lower case."""
        return self.title.lower()


SCRIPTS = (
    Script("Prompts from file or textbox", (TXT2IMG, IMG2IMG), PromptsFromFileArgs),
    Script("SD upscale", (IMG2IMG,), SdUpscaleArgs),
)


def offered(mode: str) -> list[Script]:
    return [script for script in SCRIPTS if mode in script.modes]


def find_script(name: str | None, mode: str) -> Script | None:
    """The script `name` names (in any case, as A1111 matches it), None for none (ValueError if unknown)."""
    if name in NO_SCRIPT:
        return None
    for script in offered(mode):
        if script.name == name.lower():
            return script
    raise ValueError(f"unknown script {quoted(name)} for {mode}; offered: "
                     f"{', '.join(repr(script.name) for script in offered(mode))}")


def scripts_listing() -> dict[str, list[str]]:
    """A1111's /scripts: the scripts' names per endpoint."""
    return {mode: [script.name for script in offered(mode)] for mode in (TXT2IMG, IMG2IMG)}


def script_info_listing(upscalers: Sequence[str]) -> list[dict[str, Any]]:
    """A1111's /script-info: each script once per endpoint that offers it, with its arguments' UI controls
    (the upscaler choices are `upscalers`, /upscalers' names)."""
    return [{"name": script.name, "is_alwayson": False, "is_img2img": mode == IMG2IMG,
             "args": script.args.ui(upscalers)} for mode in (TXT2IMG, IMG2IMG) for script in offered(mode)]
