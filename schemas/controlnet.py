"""ControlNet units, as the sd-webui-controlnet extension's API takes them in a txt2img or img2img body:

    "alwayson_scripts": {"controlnet": {"args": [unit, ...]}}

and the bodies of the extension's own endpoints (/controlnet/..., outside /sdapi/v1).

A unit's fields, aliases and defaults are the extension's (internal_controlnet/args.py). As in the
extension's current API, a unit that omits `enabled` is disabled (older clients that omit it must now
send `"enabled": true`): it is read, checked and skipped. Modules and models are checked against what the
worker has by the engine; everything else is checked here, naming the field
(`alwayson_scripts.controlnet.args[0].weight`).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from . import limits
from .errors import RequestError, cut

API_VERSION = 3  # what /controlnet/version answers: the extension's current API version
SCRIPT = "controlnet"  # its key in alwayson_scripts (A1111 matches script titles case-insensitively)
FIELD = f"alwayson_scripts.{SCRIPT}.args"
RESIZE_MODES = ("Just Resize", "Crop and Resize", "Resize and Fill")  # also sent as 0, 1, 2
CONTROL_MODES = ("Balanced", "My prompt is more important", "ControlNet is more important")  # also 0, 1, 2
HIRES_OPTIONS = ("Both", "Low res only", "High res only")
_RESIZE_ALIASES = {"Inner Fit (Scale to Fit)": "Crop and Resize", "Scale to Fit (Inner Fit)": "Crop and Resize",
                   "Outer Fit (Shrink to Fit)": "Resize and Fill", "Envelope (Outer Fit)": "Resize and Fill"}
_ALIASES = {"input_image": "image", "guidance": "guidance_end", "lowvram": "low_vram", "mask_image": "mask"}


class ControlNetUnit(BaseModel):
    """One unit. `image` is a base64 image (or data: URI), `{"image": ..., "mask": ...}` or `[image, mask]`; read
    as `image` and `mask` here. Without an image, an img2img unit uses the init image, as the extension does."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    enabled: bool = False
    module: str = "none"
    model: str = "None"
    weight: float = Field(1.0, ge=0, le=2)
    image: str | None = None
    mask: str | None = None
    resize_mode: str = "Crop and Resize"
    low_vram: bool = False  # accepted; nothing to do on a worker that holds its models
    processor_res: int = -1  # -1, or out of the module's range: its default
    threshold_a: float = -1
    threshold_b: float = -1
    guidance_start: float = Field(0.0, ge=0, le=1)
    guidance_end: float = Field(1.0, ge=0, le=1)
    pixel_perfect: bool = False
    control_mode: str = "Balanced"
    hr_option: str = "Both"  # with hires fix: the passes the unit applies to
    save_detected_map: bool = True
    inpaint_crop_input_image: bool = True  # img2img "only masked": the control image is cropped like the init image

    @model_validator(mode="before")
    @classmethod
    def _aliases_and_image_forms(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise ValueError("a unit is an object of the extension's fields")
        data = dict(data)
        for alias, name in _ALIASES.items():
            if alias in data:
                if data.get(name) is not None and data[alias] is not None:
                    raise ValueError(f"{alias} and {name} name the same field: send one")
                value = data.pop(alias)
                data.setdefault(name, value)
                if data[name] is None:
                    data[name] = value
        image = data.get("image")
        if isinstance(image, dict):
            data["image"], mask = image.get("image"), image.get("mask")
            data["mask"] = mask if mask is not None else data.get("mask")
        elif isinstance(image, list | tuple):
            if len(image) == 1 and isinstance(image[0], dict):
                data["image"], data["mask"] = image[0].get("image"), image[0].get("mask")
            elif len(image) == 2 and all(isinstance(part, str | None) for part in image):
                data["image"], data["mask"] = image
            else:
                raise ValueError("image: one image (base64), {image, mask} or [image, mask]; several input "
                                 "images are for IP-Adapter modules, which this worker does not offer")
        return {key: value for key, value in data.items() if value is not None}

    @field_validator("resize_mode", mode="before")
    @classmethod
    def _resize_mode(cls, value: Any) -> str:
        return _named(value, RESIZE_MODES, _RESIZE_ALIASES)

    @field_validator("control_mode", mode="before")
    @classmethod
    def _control_mode(cls, value: Any) -> str:
        return _named(value, CONTROL_MODES)

    @field_validator("hr_option", mode="before")
    @classmethod
    def _hr_option(cls, value: Any) -> str:
        return _named(value, HIRES_OPTIONS)

    @model_validator(mode="after")
    def _guidance_order(self) -> ControlNetUnit:
        if self.guidance_start > self.guidance_end:
            raise ValueError(f"guidance_start ({self.guidance_start}) is after guidance_end ({self.guidance_end})")
        return self


def _named(value: Any, names: tuple[str, ...], aliases: dict[str, str] | None = None) -> str:
    """A name of `names`, sent as itself, an alias, or its index (the extension's enums take both)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(names):
        return names[value]
    if isinstance(value, str):
        value = (aliases or {}).get(value, value)
        if value in names:
            return value
    raise ValueError(f"one of {', '.join(repr(n) for n in names)} or 0..{len(names) - 1} (got {cut(repr(value))})")


def controlnet_units(alwayson_scripts: dict[str, Any]) -> tuple[tuple[int, ControlNetUnit], ...]:
    """The enabled units of a request's alwayson_scripts with their places in `args` (all are checked, disabled ones
    too); RequestError naming the field for anything else there or a bad unit."""
    units: tuple[ControlNetUnit, ...] = ()
    for key, value in alwayson_scripts.items():
        if key.lower() != SCRIPT:
            raise RequestError(f"alwayson_scripts.{cut(key)}", f"no always-on script {key!r} in this worker; it "
                                                               f"offers {SCRIPT!r}")
        units = _parse(value)
    return tuple((index, unit) for index, unit in enumerate(units) if unit.enabled)


def _parse(value: Any) -> tuple[ControlNetUnit, ...]:
    args = value.get("args") if isinstance(value, dict) else None
    if not isinstance(args, list):
        raise RequestError(f"alwayson_scripts.{SCRIPT}", 'an object {"args": [unit, ...]}')
    if len(args) > limits.MAX_CONTROLNET_UNITS:
        raise RequestError(FIELD, f"{len(args)} units; the limit is {limits.MAX_CONTROLNET_UNITS} "
                                  "(WORKER_MAX_CONTROLNET_UNITS)")
    units = []
    for index, arg in enumerate(args):
        try:
            units.append(ControlNetUnit.model_validate(arg))
        except ValidationError as error:
            first = error.errors(include_url=False)[0]
            where = ".".join(str(part) for part in first["loc"])
            message = first["msg"].removeprefix("Value error, ")
            raise RequestError(f"{FIELD}[{index}]" + (f".{where}" if where else ""), message) from None
    return tuple(units)


class DetectRequest(BaseModel):
    """POST /controlnet/detect: run a module on images, as a unit would (the extension's fields and defaults)."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    controlnet_module: str = Field("none", description="a module's name or label (/controlnet/module_list)")
    controlnet_input_images: list[str] = Field(min_length=1, max_length=limits.MAX_IMAGES,
                                               description="base64 PNG, JPEG or WebP images, or data: URIs")
    controlnet_masks: list[str] = Field([], max_length=limits.MAX_IMAGES,
                                        description="one per image for the inpaint modules (white = repaint); "
                                                    "other modules ignore them")
    controlnet_processor_res: int = -1  # -1, or out of the module's range: its default
    controlnet_threshold_a: float = -1
    controlnet_threshold_b: float = -1
    low_vram: bool = False  # accepted; nothing to do on a worker that holds its models


class DetectResponse(BaseModel):
    """The detected maps (an inpaint module's: the image with the mask as half transparency), "Success"."""

    images: list[str]
    info: str = "Success"


class ModelListQuery(BaseModel):
    """GET /controlnet/model_list's query: `update` looks in ControlNet/ again first (the extension's default)."""

    model_config = ConfigDict(extra="ignore")

    update: bool = True


class ModuleListQuery(BaseModel):
    """GET /controlnet/module_list's query: `alias_names` lists the modules' UI labels in place of their names."""

    model_config = ConfigDict(extra="ignore")

    alias_names: bool = False
