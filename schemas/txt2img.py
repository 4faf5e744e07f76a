"""The /sdapi/v1/txt2img request: the shared generation fields plus hires fix."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field, PrivateAttr, field_validator, model_validator
from pydantic_core import PydanticCustomError

from . import limits
from .extra_networks import LoraTag, PassPrompts
from .generation import GenerationRequest, as_custom_error, extra_networks_of
from .samplers import Sampler, Schedule, find_sampler, find_schedule, resolve
from .scripts import TXT2IMG
from .styles import PromptStyle, apply_styles


class Txt2ImgRequest(GenerationRequest):
    script_mode = TXT2IMG
    infotext_fields = {
        **GenerationRequest.infotext_fields,
        "Hires upscale": "hr_scale", "Hires upscaler": "hr_upscaler", "Hires steps": "hr_second_pass_steps",
        "Hires resize-1": "hr_resize_x", "Hires resize-2": "hr_resize_y", "Hires checkpoint": "hr_checkpoint_name",
        "Hires sampler": "hr_sampler_name", "Hires schedule type": "hr_scheduler", "Hires prompt": "hr_prompt",
        "Hires negative prompt": "hr_negative_prompt",
    }
    enable_hr: bool = False
    firstphase_width: int = 0
    firstphase_height: int = 0
    hr_scale: float = Field(2.0, gt=0, le=8)
    hr_upscaler: str | None = None
    hr_second_pass_steps: int = Field(0, ge=0, le=limits.MAX_STEPS)
    hr_resize_x: int = Field(0, ge=0, le=limits.MAX_HIRES_SIDE)
    hr_resize_y: int = Field(0, ge=0, le=limits.MAX_HIRES_SIDE)
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str = Field("", max_length=limits.MAX_PROMPT_CHARS)
    hr_negative_prompt: str = Field("", max_length=limits.MAX_PROMPT_CHARS)
    firstpass_image: str | None = Field(None, description="base64 image used as the first pass with enable_hr")
    _hires_prompts: PassPrompts | None = PrivateAttr(None)

    @field_validator("hr_sampler_name")
    @classmethod
    def _known_hr_sampler(cls, value: str | None) -> str | None:
        if value and value != "Use same sampler":
            as_custom_error(find_sampler, value)
        return value

    @field_validator("hr_scheduler")
    @classmethod
    def _known_hr_schedule(cls, value: str | None) -> str | None:
        if value and value != "Use same scheduler":
            as_custom_error(find_schedule, value)
        return value

    @model_validator(mode="after")
    def _check_hires(self) -> Txt2ImgRequest:
        if not self.enable_hr:
            return self
        if self.denoising_strength is None:
            raise PydanticCustomError(
                "hires", "denoising_strength: required with enable_hr (hires fix), as in A1111", {})
        width, height = self.hires_size
        if max(width, height) > limits.MAX_HIRES_SIDE or min(width, height) < limits.MIN_SIDE:
            raise PydanticCustomError(
                "hires", "hr_scale: the hires size {w}x{h} must be within {lo}..{hi} per side",
                {"w": width, "h": height, "lo": limits.MIN_SIDE, "hi": limits.MAX_HIRES_SIDE})
        cover_width, cover_height = self.hires_upscale_to
        if max(cover_width, cover_height) > limits.MAX_HIRES_SIDE:
            raise PydanticCustomError(
                "hires", "hr_resize_x: covering {w}x{h} at the first pass's aspect ratio needs {cw}x{ch}, over "
                "{hi} per side (WORKER_MAX_HIRES_SIDE)",
                {"w": width, "h": height, "cw": cover_width, "ch": cover_height, "hi": limits.MAX_HIRES_SIDE})
        try:
            _ = self.hires_sampler
        except ValueError as error:
            raise PydanticCustomError("sampler_schedule", "hr_scheduler: {error}", {"error": str(error)}) from None
        # A1111: an empty hr_prompt is the prompt, tags included; a given one brings its own LoRAs
        self._hires_prompts = extra_networks_of(
            self.hr_prompt or self.prompt, self.hr_negative_prompt or self.negative_prompt,
            ("hr_prompt" if self.hr_prompt else "prompt", "hr_negative_prompt" if self.hr_negative_prompt
             else "negative_prompt"), not self.disable_extra_networks)
        return self

    def styled_prompts(self, styles: Sequence[PromptStyle]) -> dict[str, str]:
        """With hires fix, also hr_prompt and hr_negative_prompt when set (an empty one is the prompt, which
        is styled already: the same result as A1111's, which styles the copied prompt)."""
        styled = super().styled_prompts(styles)
        if self.enable_hr and self.hr_prompt:
            styled["hr_prompt"] = apply_styles(self.hr_prompt, [style.prompt for style in styles])
        if self.enable_hr and self.hr_negative_prompt:
            styled["hr_negative_prompt"] = apply_styles(self.hr_negative_prompt,
                                                        [style.negative_prompt for style in styles])
        return styled

    @property
    def hires_prompts(self) -> PassPrompts | None:
        """The hires pass's prompts without extra-network tags and their LoRAs (None without enable_hr)."""
        return self._hires_prompts

    @property
    def pass_prompts(self) -> tuple[PassPrompts, ...]:
        hires = self.hires_prompts
        return (self.prompts,) if hires is None or hires == self.prompts else (self.prompts, hires)

    @property
    def lora_tags(self) -> tuple[LoraTag, ...]:
        return tuple(tag for prompts in self.pass_prompts for tag in prompts.loras)

    @property
    def hires_size(self) -> tuple[int, int]:
        """The hires pass's width and height, floored to multiples of 8.

        hr_resize_x/y when set (one of them: the other keeps the aspect ratio), else size * hr_scale.
        """
        x, y = self.hr_resize_x, self.hr_resize_y
        if x and not y:
            y = round(x * self.height / self.width)
        elif y and not x:
            x = round(y * self.width / self.height)
        elif not x and not y:
            x, y = int(self.width * self.hr_scale), int(self.height * self.hr_scale)
        multiple = limits.SIDE_MULTIPLE
        return x // multiple * multiple, y // multiple * multiple

    @property
    def output_size(self) -> tuple[int, int]:
        return self.hires_size if self.enable_hr else (self.width, self.height)

    @property
    def hires_upscale_to(self) -> tuple[int, int]:
        """The size the first pass is upscaled to before the hires pass.

        The hires size itself, except with both hr_resize_x and hr_resize_y: then the size that covers
        it at the first pass's aspect ratio (rounded up to multiples of 8), centre-cropped afterwards.
        """
        x, y = self.hires_size
        if not (self.hr_resize_x and self.hr_resize_y):
            return x, y
        if self.width / self.height < x / y:
            x, y = x, -(-x * self.height // self.width)
        else:
            x, y = -(-y * self.width // self.height), y
        multiple = limits.SIDE_MULTIPLE
        return -(-x // multiple) * multiple, -(-y // multiple) * multiple

    @property
    def hires_checkpoint(self) -> str | None:
        """hr_checkpoint_name when hires fix runs on another checkpoint ("Use same checkpoint" and "" mean none)."""
        same = (None, "", "Use same checkpoint")
        return self.hr_checkpoint_name if self.enable_hr and self.hr_checkpoint_name not in same else None

    @property
    def hires_sampler(self) -> tuple[Sampler, Schedule]:
        """hr_sampler_name / hr_scheduler, each falling back to the first pass's."""
        same = (None, "", "Use same sampler", "Use same scheduler")
        name = self.hr_sampler_name if self.hr_sampler_name not in same else self.sampler_name or self.sampler_index
        schedule = self.hr_scheduler if self.hr_scheduler not in same else self.scheduler
        return resolve(name, schedule)
