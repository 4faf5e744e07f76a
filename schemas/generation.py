"""Fields txt2img and img2img share, with A1111's API defaults (../shared/a1111-api.md)."""

from __future__ import annotations

import json
from typing import Annotated, Any, ClassVar

from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationError, field_validator,
                      model_validator)
from pydantic_core import PydanticCustomError

from . import limits
from .errors import cut
from .extra_networks import LoraTag, PassPrompts, pass_prompts
from .options import Options
from .samplers import DEFAULT_SAMPLER, Sampler, Schedule, find_sampler, find_schedule, resolve


def _blank_seed_is_random(value: Any) -> Any:
    return -1 if value is None or value == "" else value


Seed = Annotated[int, BeforeValidator(_blank_seed_is_random), Field(ge=-1, lt=2**32)]


class GenerationRequest(BaseModel):
    """Every field A1111 v1.10 documents for both txt2img and img2img. Unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    # Fields accepted but not implemented yet: a value outside these is refused, never dropped.
    # Subclasses add their own; an issue that implements one removes it here.
    not_implemented: ClassVar[dict[str, tuple[Any, ...]]] = {
        "styles": (None, []),
        "refiner_checkpoint": (None, "", "None"),
        "script_name": (None, "", "None"),
        "script_args": (None, []),
        "alwayson_scripts": (None, {}),
        "infotext": (None, ""),
        "save_images": (False,),
    }

    prompt: str = Field("", max_length=limits.MAX_PROMPT_CHARS)
    negative_prompt: str = Field("", max_length=limits.MAX_PROMPT_CHARS)
    styles: list[str] | None = None
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
    def _multiple_of_8(cls, value: int) -> int:
        if value % limits.SIDE_MULTIPLE:
            raise PydanticCustomError(
                "multiple_of", "must be a multiple of {multiple} (got {value})",
                {"multiple": limits.SIDE_MULTIPLE, "value": value},
            )
        return value

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

    @field_validator("override_settings")
    @classmethod
    def _known_options(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        try:
            Options.model_validate(value or {})
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(cut(str(part)) for part in e['loc'])}: "
                + ("not supported by this worker; supported: " + ", ".join(Options.model_fields)
                   if e["type"] == "extra_forbidden" else e["msg"])
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
            self.sampler
        except ValueError as error:
            raise PydanticCustomError("sampler_schedule", "scheduler: {error}", {"error": str(error)})
        self._prompts = extra_networks_of(self.prompt, self.negative_prompt, ("prompt", "negative_prompt"),
                                          not self.disable_extra_networks)
        return self

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
