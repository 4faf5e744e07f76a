"""txt2img, with A1111's hires fix (a second, img2img-style pass at a larger size)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from schemas import Options, Txt2ImgRequest

from .generation import Generation
from .job import Job
from ..store.model import LoadedModel
from .progress import Progress
from ..sampling.loop import Inpainting, img2img_steps, set_schedule
from .tiling import tiled
from ..postprocess.face_restoration import FaceRestorer
from ..postprocess.upscalers import LATENT_MODES, PixelUpscaler, Upscalers, upscale_latents

DEFAULT_HIRES_UPSCALER = "Latent"


@dataclass
class FirstPass:
    """What hires fix starts from: the first pass's latents, or the request's firstpass_image (as pixels)."""

    latents: torch.Tensor | None = None
    images: list[Image.Image] | None = None

    def as_latents(self, model: LoadedModel) -> torch.Tensor:
        return self.latents if self.latents is not None else model.encode_images(self.images)

    def as_images(self, model: LoadedModel) -> list[Image.Image]:
        return self.images if self.images is not None else model.decode_latents(self.latents)


def txt2img(model: LoadedModel, request: Txt2ImgRequest, options: Options, upscalers: Upscalers,
            progress: Progress | None = None, faces: FaceRestorer | None = None,
            hires_model: LoadedModel | None = None, firstpass_image: Image.Image | None = None,
            refiner: LoadedModel | None = None) -> Generation:
    """`hires_model`: hr_checkpoint_name's model for the hires pass (default `model`); `firstpass_image`: used in
    place of the first pass when hires fix is on (A1111 ignores it otherwise); `refiner`: refiner_checkpoint's."""
    job = Job(model, request, options, progress, faces, refiner)
    hires_model = hires_model or model
    pixel_upscaler = None  # hires fix in pixel space; found (an unknown name fails) before any work
    if request.enable_hr:
        if (request.hr_upscaler or DEFAULT_HIRES_UPSCALER) not in LATENT_MODES:
            pixel_upscaler = upscalers.find(request.hr_upscaler, "hr_upscaler", also=LATENT_MODES)
        if hires_model is not model:
            hires_model.loras.load(request.hires_prompts.loras)
        _add_hires_params(job, request, hires_model)
    first_image = firstpass_image.convert("RGB").resize((request.width, request.height), Image.Resampling.LANCZOS) \
        if firstpass_image is not None and request.enable_hr else None
    images: list[Image.Image] = []
    with tiled(*{model.unet, model.vae, hires_model.unet, hires_model.vae}, enabled=bool(request.tiling)):
        for seeds, subseeds in job.batches():
            if first_image is not None:
                first = FirstPass(images=[first_image] * len(seeds))
            else:
                first = FirstPass(latents=_first_pass(job, request, seeds, subseeds))
            if not request.enable_hr:
                images += job.restore_faces(model.decode_latents(first.latents))
                continue
            latents = _hires_pass(job, request, hires_model, first, seeds, subseeds, pixel_upscaler)
            images += job.restore_faces(hires_model.decode_latents(latents))
    return job.result(images)


def _first_pass(job: Job, request: Txt2ImgRequest, seeds: list[int], subseeds: list[int]) -> torch.Tensor:
    noise, generators = job.noise(seeds, subseeds, request.width, request.height)
    scheduler = job.scheduler(seeds)
    timesteps = set_schedule(scheduler, request.steps, request.steps, job.model.device)
    size = request.width, request.height
    conditioning = job.prepare(request.prompts, request.steps, size)
    switch = job.refiner_switch(request.prompts, request.steps, size, hires=False)
    return job.denoise(scheduler, timesteps, noise * scheduler.init_noise_sigma, conditioning, generators,
                       _inpainting_model_input(job.model, noise), switch=switch)


def _hires_pass(job: Job, request: Txt2ImgRequest, model: LoadedModel, first: FirstPass, seeds: list[int],
                subseeds: list[int], pixel_upscaler: PixelUpscaler | None) -> torch.Tensor:
    """Upscale the first pass (in latent space, or with `pixel_upscaler`) and re-denoise it at the hires size on
    `model` (the request's, or hr_checkpoint_name's)."""
    width, height = request.hires_size
    upscale_width, upscale_height = request.hires_upscale_to
    factor = model.scale_factor
    if pixel_upscaler is None:
        init = upscale_latents(first.as_latents(model), request.hr_upscaler or DEFAULT_HIRES_UPSCALER,
                               upscale_height // factor, upscale_width // factor)
    else:
        init = model.encode_images([pixel_upscaler(image, upscale_width, upscale_height)
                                    for image in first.as_images(job.model)])
    init = _centre_crop(init, height // factor, width // factor)

    steps = request.hr_second_pass_steps or request.steps
    sampler, schedule = request.hires_sampler
    scheduler = job.scheduler(seeds, sampler, schedule, model)
    length, run = img2img_steps(steps, request.denoising_strength, exact=True)
    timesteps = set_schedule(scheduler, length, run, model.device)
    noise, generators = job.noise(seeds, subseeds, width, height)  # fresh noise from the same seeds
    conditioning = job.prepare(request.hires_prompts, steps, (width, height), model)
    switch = job.refiner_switch(request.hires_prompts, steps, (width, height), hires=True)
    return job.denoise(scheduler, timesteps, scheduler.add_noise(init, noise, timesteps[:1]), conditioning, generators,
                       _inpainting_model_input(model, noise), sampler, model, switch)


def _centre_crop(latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
    top, left = (latents.shape[2] - height) // 2, (latents.shape[3] - width) // 2
    return latents[:, :, top:top + height, left:left + width]


def _inpainting_model_input(model: LoadedModel, noise: torch.Tensor) -> Inpainting | None:
    """txt2img on an inpainting checkpoint: everything masked, the masked image blank (as A1111)."""
    if not model.is_inpainting:
        return None
    batch, _, h, w = noise.shape
    factor = model.scale_factor
    blank = model.encode_images([Image.new("RGB", (w * factor, h * factor), (127, 127, 127))] * batch)
    mask = torch.ones(batch, 1, h, w, device=noise.device)
    return Inpainting(blank, mask, noise, unet_extra=torch.cat([mask, blank], dim=1))


def _add_hires_params(job: Job, request: Txt2ImgRequest, hires_model: LoadedModel) -> None:
    """A1111's Hires infotext keys, in its order."""
    width, height = request.hires_size
    sampler, schedule = request.hires_sampler
    extra = job.extra_params
    if request.hr_resize_x or request.hr_resize_y:
        extra["Hires resize"] = f"{width}x{height}"
    else:
        extra["Hires upscale"] = request.hr_scale
    if request.hr_second_pass_steps:
        extra["Hires steps"] = request.hr_second_pass_steps
    extra["Hires upscaler"] = request.hr_upscaler or DEFAULT_HIRES_UPSCALER
    if hires_model is not job.model:
        extra["Hires checkpoint"] = hires_model.checkpoint.short_title
    if sampler.name != job.sampler.name:
        extra["Hires sampler"] = sampler.name
    if schedule.name != job.schedule.name:
        extra["Hires schedule type"] = schedule.label
    if request.hr_prompt and request.hr_prompt != request.prompt:
        extra["Hires prompt"] = request.hr_prompt
    if request.hr_negative_prompt and request.hr_negative_prompt != request.negative_prompt:
        extra["Hires negative prompt"] = request.hr_negative_prompt
    extra["Denoising strength"] = request.denoising_strength
