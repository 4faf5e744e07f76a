"""Fields txt2img and img2img share, with A1111's API defaults (../shared/a1111-api.md)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Annotated, Any, ClassVar, Self

from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationError, field_validator,
                      model_validator)
from pydantic_core import PydanticCustomError

from . import limits
from .controlnet import ControlNetUnit, controlnet_units
from .errors import RequestError, cut
from .extra_networks import LoraTag, PassPrompts, pass_prompts
from .infotext import request_from_infotext
from .options import Options
from .samplers import DEFAULT_SAMPLER, Sampler, Schedule, find_sampler, find_schedule, resolve
from .styles import PromptStyle, apply_styles
from .scripts import ScriptArgs, find_script


def _blank_seed_is_random(value: Any) -> Any:
    return -1 if value == "" else value  # "" is random, as -1 and null (the default) are


Seed = Annotated[int, BeforeValidator(_blank_seed_is_random), Field(ge=-1, lt=2**32)]


class GenerationRequest(BaseModel):
    """Every field A1111 v1.10 documents for both txt2img and img2img. Unknown fields are ignored."""

    script_mode: ClassVar[str]  # the endpoint, whose scripts script_name may name (schemas/scripts.py)
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    # A1111 declares its request fields Optional (null: the default) except these, whose null it refuses.
    null_refused: ClassVar[frozenset[str]] = frozenset({"sampler_index", "script_args", "send_images", "save_images",
                                                        "alwayson_scripts"})

    # Fields accepted but not implemented yet: a value outside these is refused, never dropped.
    # Subclasses add their own; an issue that implements one removes it here.
    not_implemented: ClassVar[dict[str, tuple[Any, ...]]] = {
        "save_images": (False,),
    }

    prompt: str = Field("", max_length=limits.MAX_PROMPT_CHARS)
    negative_prompt: str = Field("", max_length=limits.MAX_PROMPT_CHARS)
    styles: list[str] | None = Field(None, max_length=limits.MAX_STYLES,
                                     description="names of prompt styles (styles.csv) applied to the prompts")
    seed: Seed = -1
    subseed: Seed = -1
    subseed_strength: float = Field(0, ge=0, le=1)
    seed_resize_from_h: int = Field(-1, ge=-1, le=limits.MAX_SIDE)
    seed_resize_from_w: int = Field(-1, ge=-1, le=limits.MAX_SIDE)
    sampler_name: str | None = None
    scheduler: str | None = None
    batch_size: int = Field(1, ge=1, le=limits.MAX_BATCH_SIZE)
    n_iter: int = Field(1, ge=1, le=limits.MAX_N_ITER)
    steps: int = Field(50, ge=1, le=limits.MAX_STEPS)
    cfg_scale: float = Field(7.0, ge=limits.MIN_CFG_SCALE, le=limits.MAX_CFG_SCALE)
    width: int = Field(512, ge=limits.MIN_SIDE, le=limits.MAX_SIDE)
    height: int = Field(512, ge=limits.MIN_SIDE, le=limits.MAX_SIDE)
    restore_faces: bool | None = Field(None, description="restore faces with the face_restoration_model option's "
                                                         "restorer; unset: the face_restoration option")
    tiling: bool | None = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    eta: float | None = Field(None, ge=0, le=1, description="null: the option eta_ancestral, or eta_ddim for DDIM")
    denoising_strength: float | None = Field(None, ge=0, le=1)
    s_min_uncond: float | None = Field(None, ge=0, description="null: the option of the same name (every s_* "
                                                                "field)")
    s_churn: float | None = Field(None, ge=0)
    s_tmax: float | None = Field(None, ge=0, description="0: infinity")
    s_tmin: float | None = Field(None, ge=0)
    s_noise: float | None = Field(None, ge=0)
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool = True
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = Field(None, ge=0, le=1)
    disable_extra_networks: bool = False
    comments: dict[str, Any] | None = None
    force_task_id: str | None = None
    sampler_index: str = DEFAULT_SAMPLER
    script_name: str | None = None
    script_args: list[Any] = Field(default_factory=list)
    send_images: bool = True
    save_images: bool = False
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict)
    infotext: str | None = None
    _prompts: PassPrompts = PrivateAttr()
    _script: ScriptArgs | None = PrivateAttr(None)
    _control_units: tuple[tuple[int, ControlNetUnit], ...] = PrivateAttr(())

    # infotext key -> request field, for the `infotext` field (A1111's paste fields); subclasses add their own
    infotext_fields: ClassVar[dict[str, str]] = {
        "Prompt": "prompt", "Negative prompt": "negative_prompt", "Steps": "steps", "Sampler": "sampler_name",
        "Schedule type": "scheduler", "CFG scale": "cfg_scale", "Seed": "seed", "Size-1": "width", "Size-2": "height",
        "Variation seed": "subseed", "Variation seed strength": "subseed_strength",
        "Seed resize from-1": "seed_resize_from_w", "Seed resize from-2": "seed_resize_from_h",
        "Denoising strength": "denoising_strength", "Refiner": "refiner_checkpoint",
        "Refiner switch at": "refiner_switch_at",
    }

    @model_validator(mode="before")
    @classmethod
    def _read_as_a1111(cls, data: Any) -> Any:
        """A body as A1111 reads it: `infotext` (1.8+) fills the fields the request leaves out (one sent, even as
        null, keeps its value); then a null stands for the field's default, except where A1111 refuses it."""
        if not isinstance(data, dict):
            return data
        infotext = data.get("infotext")
        if isinstance(infotext, str) and infotext:
            if len(infotext) > limits.MAX_INFOTEXT_CHARS:
                raise PydanticCustomError("too_long", "infotext: at most {max} characters (WORKER_MAX_INFOTEXT_CHARS)",
                                          {"max": limits.MAX_INFOTEXT_CHARS})
            data = request_from_infotext(infotext, cls.infotext_fields, data, Options.model_fields,
                                         hires="enable_hr" in cls.model_fields)
        return {key: value for key, value in data.items() if value is not None or key in cls.null_refused}

    @field_validator("*")
    @classmethod
    def _refuse_not_implemented(cls, value: Any, info) -> Any:
        allowed = cls.not_implemented.get(info.field_name)
        if allowed is not None and value not in allowed:
            raise PydanticCustomError(
                "not_implemented",
                "not supported by this worker yet; send {allowed} or leave it out (got {value})",
                {"allowed": " or ".join(json.dumps(v) for v in allowed), "value": cut(json.dumps(value, default=str))},
            )
        return value

    @field_validator("width", "height")
    @classmethod
    def _floored_to_multiple_of_8(cls, value: int) -> int:
        """As A1111 generates other sizes: floored to the VAE's multiple (its latents are size / 8)."""
        return value // limits.SIDE_MULTIPLE * limits.SIDE_MULTIPLE

    @field_validator("sampler_name", "sampler_index")
    @classmethod
    def _known_sampler(cls, value: str | None) -> str | None:
        if value is not None:
            as_custom_error(find_sampler, value)
        return value

    @field_validator("scheduler")
    @classmethod
    def _known_schedule(cls, value: str | None) -> str | None:
        as_custom_error(find_schedule, value)
        return value

    @field_validator("script_name")
    @classmethod
    def _known_script(cls, value: str | None) -> str | None:
        as_custom_error(lambda name: find_script(name, cls.script_mode), value)
        return value

    @field_validator("override_settings")
    @classmethod
    def _known_options(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        try:
            Options.model_validate(value or {})
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(cut(str(part)) for part in e['loc'])}: "
                + ("unknown option" if e["type"] == "extra_forbidden" else e["msg"])
                for e in error.errors(include_url=False)
            )
            raise PydanticCustomError("option", "{problems}", {"problems": problems}) from None
        return value

    @model_validator(mode="after")
    def _check_combination(self):
        if self.batch_size * self.n_iter > limits.MAX_IMAGES:
            raise PydanticCustomError(
                "too_many_images", "batch_size: batch_size * n_iter must be at most {max} (got {n})",
                {"max": limits.MAX_IMAGES, "n": self.batch_size * self.n_iter},
            )
        try:
            _ = self.sampler
        except ValueError as error:
            raise PydanticCustomError("sampler_schedule", "scheduler: {error}", {"error": str(error)}) from None
        self._prompts = extra_networks_of(self.prompt, self.negative_prompt, ("prompt", "negative_prompt"),
                                          not self.disable_extra_networks)
        return self

    def with_styles(self, styles: Sequence[PromptStyle]) -> Self:
        """This request with `styles` applied to its prompts, validated again, so that the styled prompts are
        what is parsed (a style's LoRA tags apply) and checked against the limits. `styles` stays as sent."""
        if not styles:
            return self
        styled = self.styled_prompts(styles)
        for field, text in styled.items():
            if len(text) > limits.MAX_PROMPT_CHARS:
                raise RequestError(field, f"{len(text)} characters with its styles applied; the limit is "
                                          f"{limits.MAX_PROMPT_CHARS} (WORKER_MAX_PROMPT_CHARS)")
        return self.model_validate({**self.model_dump(), **styled})

    def styled_prompts(self, styles: Sequence[PromptStyle]) -> dict[str, str]:
        """The prompt fields with `styles` applied, as A1111 applies them."""
        return {"prompt": apply_styles(self.prompt, [style.prompt for style in styles]),
                "negative_prompt": apply_styles(self.negative_prompt, [style.negative_prompt for style in styles])}

    @model_validator(mode="after")
    def _check_script(self):
        script = find_script(self.script_name, self.script_mode)
        if script is None:
            if self.script_args:
                raise PydanticCustomError("script", "script_args: values for a script; send them with its "
                                                    "script_name, or send [] (got {count})",
                                          {"count": len(self.script_args)})
            return self
        try:
            self._script = script.args.positional(self.script_args)
            self._script.check(self)
        except ValueError as error:
            raise PydanticCustomError("script", "{error}", {"error": str(error)}) from None
        return self

    @model_validator(mode="after")
    def _read_alwayson_scripts(self):
        try:
            self._control_units = controlnet_units(self.alwayson_scripts)
        except RequestError as error:
            raise PydanticCustomError("alwayson_scripts", "{error}", {"error": str(error)}) from None
        return self

    @property
    def control_units(self) -> tuple[tuple[int, ControlNetUnit], ...]:
        """The enabled ControlNet units (alwayson_scripts.controlnet), checked, with their places in its args."""
        return self._control_units

    @property
    def script(self) -> ScriptArgs | None:
        """The arguments of the script that script_name names, parsed and checked; None without one."""
        return self._script

    @property
    def sampler(self) -> tuple[Sampler, Schedule]:
        """The sampler (sampler_name, else sampler_index) and its schedule, Automatic resolved."""
        return resolve(self.sampler_name or self.sampler_index, self.scheduler)

    @property
    def prompts(self) -> PassPrompts:
        """The prompts without extra-network tags, and the LoRAs they name (the first pass's)."""
        return self._prompts

    @property
    def pass_prompts(self) -> tuple[PassPrompts, ...]:
        """The prompts of every sampling pass."""
        return (self.prompts,)

    @property
    def lora_tags(self) -> tuple[LoraTag, ...]:
        """The LoRA tags of every sampling pass."""
        return self.prompts.loras

    @property
    def output_size(self) -> tuple[int, int]:
        """The size of the images this request returns."""
        return self.width, self.height

    @property
    def seed_resize_from(self) -> tuple[int, int] | None:
        """(width, height) the noise is generated at before being pasted in, if both are set."""
        if self.seed_resize_from_w > 0 and self.seed_resize_from_h > 0:
            return self.seed_resize_from_w, self.seed_resize_from_h
        return None


def as_custom_error(check, value) -> None:
    try:
        check(value)
    except ValueError as error:
        raise PydanticCustomError("unknown_name", "{error}", {"error": str(error)}) from None


def extra_networks_of(prompt: str, negative_prompt: str, fields: tuple[str, str], enabled: bool) -> PassPrompts:
    """pass_prompts, its ValueError as a validation error (the message names the field)."""
    try:
        return pass_prompts(prompt, negative_prompt, fields, enabled)
    except ValueError as error:
        raise PydanticCustomError("extra_network", "{error}", {"error": str(error)}) from None
