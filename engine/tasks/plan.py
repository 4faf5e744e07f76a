"""A generation request translated once, at the engine's door, into a typed plan.

The plan holds what the generation tasks need and nothing of the request's shape: the seeds of every
image, the sampling passes (each with its size, sampler, schedule, steps, strength and prompts), hires
fix, the refiner, the img2img settings, and the values `info` and the infotext report. The tasks
(txt2img, img2img, SD upscale) and the job they share read the plan; no engine module below the
runtime reads a request field.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from schemas import GenerationRequest, Img2ImgRequest, Options, Txt2ImgRequest
from schemas.controlnet import FIELD as CONTROLNET_FIELD
from schemas.controlnet import ControlNetUnit
from schemas.extra_networks import LoraTag, PassPrompts
from schemas.sampler_params import SamplerParams, sampler_params
from schemas.samplers import Sampler, Schedule

from ..sampling.noise import resolve_seed

DEFAULT_HIRES_UPSCALER = "Latent"


@dataclass(frozen=True)
class SeedPlan:
    """The seeds of every image (batch_size * n_iter), and how their noise is drawn."""

    seed: int
    subseed: int
    seeds: tuple[int, ...]
    subseeds: tuple[int, ...]
    subseed_strength: float
    resize_from: tuple[int, int] | None  # (width, height) the noise is drawn at before being pasted in
    batch_size: int
    noise_seed_delta: int  # ENSD, where it applies (samplers that draw step noise, at eta > 0); else 0

    def batch(self, index: int) -> tuple[list[int], list[int]]:
        """(seeds, subseeds) of batch `index`."""
        start = index * self.batch_size
        return list(self.seeds[start:start + self.batch_size]), list(self.subseeds[start:start + self.batch_size])

    @property
    def batch_count(self) -> int:
        return len(self.seeds) // self.batch_size


@dataclass(frozen=True)
class PassPlan:
    """One sampling run."""

    width: int
    height: int
    sampler: Sampler
    schedule: Schedule
    params: SamplerParams
    steps: int  # the steps asked for
    prompts: PassPrompts  # the prompts without extra-network tags, and their LoRAs
    strength: float | None = None  # denoising strength from an image; None: from pure noise
    exact_steps: bool = False  # exactly `steps` run, on a stretched schedule (hires, img2img_fix_steps)

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height


@dataclass(frozen=True)
class HiresPlan:
    """Hires fix: the first pass upscaled to `upscale_to`, centre-cropped to the pass's size and denoised again."""

    sampling: PassPlan
    upscaler: str  # a latent mode ("Latent", ...) or a pixel upscaler's name
    upscale_to: tuple[int, int]
    checkpoint: str | None  # hr_checkpoint_name, when another checkpoint runs the pass
    infotext: tuple[dict[str, Any], dict[str, Any]]  # A1111's Hires keys before and after `Hires checkpoint`


@dataclass(frozen=True)
class RefinerPlan:
    """refiner_checkpoint: the run switches to it at `switch_at` (null: at once, as in A1111)."""

    checkpoint: str
    switch_at: float | None
    by_steps: bool  # refiner_switch_by_sample_steps
    hires_pass: str  # hires_fix_refiner_pass: "first pass", "second pass" or "both passes"

    def runs_in(self, hires: bool, hires_fix: bool) -> bool:
        """Whether it runs in the first (`hires` False) or the hires pass of a request with or without hires fix."""
        if not hires_fix:
            return True
        return self.hires_pass == "both passes" or (self.hires_pass == "second pass") == hires


@dataclass(frozen=True)
class MaskPlan:
    """How an img2img request's mask is read and used."""

    blur_x: int
    blur_y: int
    invert: bool
    fill: int  # inpainting_fill: 0 fill, 1 original, 2 latent noise, 3 latent nothing
    only_masked: bool  # inpaint_full_res
    padding: int
    round: bool


@dataclass(frozen=True)
class ImagePlan:
    """img2img's own settings."""

    resize_mode: int
    noise_multiplier: float  # initial_noise_multiplier
    mask: MaskPlan


@dataclass(frozen=True)
class ControlPlan:
    """An enabled ControlNet unit, as the extension applies it."""

    index: int  # its place in alwayson_scripts.controlnet.args (errors name it)
    number: int  # its place among the enabled units (the infotext's "ControlNet N")
    module: str
    model: str  # "None": the map only
    weight: float
    resize_mode: str  # "Just Resize", "Crop and Resize", "Resize and Fill"
    processor_res: int
    threshold_a: float
    threshold_b: float
    guidance_start: float
    guidance_end: float
    pixel_perfect: bool
    control_mode: str  # "Balanced", "My prompt is more important", "ControlNet is more important"
    hires_option: str  # "Both", "Low res only", "High res only"
    save_map: bool  # save_detected_map: its map is returned (unless control_net_no_detectmap)
    crop_to_mask: bool  # inpaint_crop_input_image: cropped with the init image for "only masked"

    def field(self, name: str) -> str:
        return f"{CONTROLNET_FIELD}[{self.index}].{name}"


@dataclass(frozen=True)
class Plan:
    seeds: SeedPlan
    first: PassPlan
    cfg_scale: float
    tiling: bool
    hires: HiresPlan | None = None
    refiner: RefinerPlan | None = None
    image: ImagePlan | None = None
    echo: dict[str, Any] | None = None  # the request's values `info` reports (A1111's processing fields)
    controls: tuple[ControlPlan, ...] = ()

    @property
    def output_size(self) -> tuple[int, int]:
        return self.hires.sampling.size if self.hires else self.first.size

    @property
    def passes(self) -> tuple[PassPlan, ...]:
        return (self.first, self.hires.sampling) if self.hires else (self.first,)

    @property
    def lora_tags(self) -> tuple[LoraTag, ...]:
        return tuple(tag for sampling in self.passes for tag in sampling.prompts.loras)

    def with_seeds(self, seed: int, batch_size: int) -> Plan:
        """The plan of one batch of `batch_size` images from `seed` on (SD upscale redraws tiles so)."""
        seeds = self.seeds
        varied = seeds.subseed_strength > 0
        return replace(self, seeds=replace(
            seeds, seed=seed, seeds=tuple(seed + (0 if varied else i) for i in range(batch_size)),
            subseeds=tuple(seeds.subseed + i for i in range(batch_size)), batch_size=batch_size))


def plan_of(request: GenerationRequest, options: Options) -> Plan:
    """The plan of a txt2img or img2img request under `options` (the server's with its overrides)."""
    sampler, schedule = request.sampler
    params = sampler_params(sampler, request, options)
    image = isinstance(request, Img2ImgRequest)
    first = PassPlan(request.width, request.height, sampler, schedule, params, request.steps, request.prompts,
                     request.denoising_strength if image else None, image and options.img2img_fix_steps)
    return Plan(
        seeds=_seeds(request, options, sampler, params),
        first=first,
        cfg_scale=request.cfg_scale,
        tiling=bool(request.tiling),
        hires=_hires(request, options) if isinstance(request, Txt2ImgRequest) and request.enable_hr else None,
        refiner=_refiner(request, options),
        image=_image(request) if image else None,
        echo=_echo(request),
        controls=tuple(_control(index, number, unit) for number, (index, unit) in enumerate(request.control_units)),
    )


def _control(index: int, number: int, unit: ControlNetUnit) -> ControlPlan:
    return ControlPlan(index, number, unit.module, unit.model, unit.weight, unit.resize_mode, unit.processor_res,
                       unit.threshold_a, unit.threshold_b, unit.guidance_start, unit.guidance_end, unit.pixel_perfect,
                       unit.control_mode, unit.hr_option, unit.save_detected_map, unit.inpaint_crop_input_image)


def _seeds(request: GenerationRequest, options: Options, sampler: Sampler, params: SamplerParams) -> SeedPlan:
    seed, subseed = resolve_seed(request.seed), resolve_seed(request.subseed)
    count = request.batch_size * request.n_iter
    varied = request.subseed_strength > 0  # A1111: variations share the seed, vary the subseed
    delta = options.eta_noise_seed_delta if sampler.adds_noise and params.eta != 0 else 0
    return SeedPlan(seed, subseed, tuple(seed + (0 if varied else i) for i in range(count)),
                    tuple(subseed + i for i in range(count)), request.subseed_strength, request.seed_resize_from,
                    request.batch_size, delta)


def _hires(request: Txt2ImgRequest, options: Options) -> HiresPlan:
    width, height = request.hires_size
    sampler, schedule = request.hires_sampler
    sampling = PassPlan(width, height, sampler, schedule, sampler_params(sampler, request, options),
                        request.hr_second_pass_steps or request.steps, request.hires_prompts,
                        request.denoising_strength, exact_steps=True)
    first_sampler, first_schedule = request.sampler
    upscaler = request.hr_upscaler or DEFAULT_HIRES_UPSCALER
    infotext: dict[str, Any] = {}  # A1111's Hires keys, in its order
    if request.hr_resize_x or request.hr_resize_y:
        infotext["Hires resize"] = f"{width}x{height}"
    else:
        infotext["Hires upscale"] = request.hr_scale
    if request.hr_second_pass_steps:
        infotext["Hires steps"] = request.hr_second_pass_steps
    infotext["Hires upscaler"] = upscaler
    head, infotext = infotext, {}
    if sampler.name != first_sampler.name:
        infotext["Hires sampler"] = sampler.name
    if schedule.name != first_schedule.name:
        infotext["Hires schedule type"] = schedule.label
    if request.hr_prompt and request.hr_prompt != request.prompt:
        infotext["Hires prompt"] = request.hr_prompt
    if request.hr_negative_prompt and request.hr_negative_prompt != request.negative_prompt:
        infotext["Hires negative prompt"] = request.hr_negative_prompt
    return HiresPlan(sampling, upscaler, request.hires_upscale_to, request.hires_checkpoint, (head, infotext))


def _refiner(request: GenerationRequest, options: Options) -> RefinerPlan | None:
    if request.refiner_checkpoint in (None, "", "None", "none"):
        return None
    return RefinerPlan(request.refiner_checkpoint, request.refiner_switch_at, options.refiner_switch_by_sample_steps,
                       options.hires_fix_refiner_pass)


def _image(request: Img2ImgRequest) -> ImagePlan:
    mask = MaskPlan(request.mask_blur_x, request.mask_blur_y, bool(request.inpainting_mask_invert),
                    request.inpainting_fill, request.inpaint_full_res, request.inpaint_full_res_padding,
                    request.mask_round)
    return ImagePlan(request.resize_mode, request.initial_noise_multiplier or 1.0, mask)


def _echo(request: GenerationRequest) -> dict[str, Any]:
    """The request's values that A1111's `info` and infotext report as sent."""
    return {"prompt": request.prompt, "negative_prompt": request.negative_prompt, "styles": list(request.styles or []),
            "seed_resize_from_w": request.seed_resize_from_w, "seed_resize_from_h": request.seed_resize_from_h,
            "denoising_strength": request.denoising_strength, "n_iter": request.n_iter}
