"""txt2img, with A1111's hires fix (a second, img2img-style pass at a larger size)."""

from __future__ import annotations

import torch
from PIL import Image

from schemas import Options, Txt2ImgRequest

from .generation import Generation
from .job import Job
from .model import LoadedModel
from .progress import Progress
from .sampling import Inpainting, img2img_steps, set_schedule
from .tiling import tiled
from .face_restoration import FaceRestorer
from .upscalers import LATENT_MODES, PixelUpscaler, Upscalers, upscale_latents

DEFAULT_HIRES_UPSCALER = "Latent"


def txt2img(model: LoadedModel, request: Txt2ImgRequest, options: Options, upscalers: Upscalers,
            progress: Progress | None = None, faces: FaceRestorer | None = None) -> Generation:
    job = Job(model, request, options, progress, faces)
    pixel_upscaler = None  # hires fix in pixel space; found (an unknown name fails) before any work
    if request.enable_hr:
        if (request.hr_upscaler or DEFAULT_HIRES_UPSCALER) not in LATENT_MODES:
            pixel_upscaler = upscalers.find(request.hr_upscaler, "hr_upscaler", also=LATENT_MODES)
        _add_hires_params(job, request)
    images: list[Image.Image] = []
    with tiled(model.unet, model.vae, enabled=bool(request.tiling)):
        for seeds, subseeds in job.batches():
            latents = _first_pass(job, request, seeds, subseeds)
            if request.enable_hr:
                latents = _hires_pass(job, request, latents, seeds, subseeds, pixel_upscaler)
            images += job.restore_faces(model.decode_latents(latents))
    return job.result(images)


def _first_pass(job: Job, request: Txt2ImgRequest, seeds: list[int], subseeds: list[int]) -> torch.Tensor:
    noise, generators = job.noise(seeds, subseeds, request.width, request.height)
    scheduler = job.scheduler(seeds)
    timesteps = set_schedule(scheduler, request.steps, request.steps, job.model.device)
    conditioning = job.prepare(request.prompts, request.steps)
    return job.denoise(scheduler, timesteps, noise * scheduler.init_noise_sigma, conditioning, generators,
                       _inpainting_model_input(job, noise))


def _hires_pass(job: Job, request: Txt2ImgRequest, latents: torch.Tensor, seeds: list[int],
                subseeds: list[int], pixel_upscaler: PixelUpscaler | None) -> torch.Tensor:
    """Upscale the first pass (in latent space, or with `pixel_upscaler`) and re-denoise it at the hires size."""
    model = job.model
    width, height = request.hires_size
    upscale_width, upscale_height = request.hires_upscale_to
    factor = model.scale_factor
    if pixel_upscaler is None:
        init = upscale_latents(latents, request.hr_upscaler or DEFAULT_HIRES_UPSCALER,
                               upscale_height // factor, upscale_width // factor)
    else:
        init = model.encode_images([pixel_upscaler(image, upscale_width, upscale_height)
                                    for image in model.decode_latents(latents)])
    init = _centre_crop(init, height // factor, width // factor)

    steps = request.hr_second_pass_steps or request.steps
    sampler, schedule = request.hires_sampler
    scheduler = job.scheduler(seeds, sampler, schedule)
    length, run = img2img_steps(steps, request.denoising_strength, exact=True)
    timesteps = set_schedule(scheduler, length, run, model.device)
    noise, generators = job.noise(seeds, subseeds, width, height)  # fresh noise from the same seeds
    conditioning = job.prepare(request.hires_prompts, steps)
    return job.denoise(scheduler, timesteps, scheduler.add_noise(init, noise, timesteps[:1]), conditioning, generators,
                       _inpainting_model_input(job, noise), sampler)


def _centre_crop(latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
    top, left = (latents.shape[2] - height) // 2, (latents.shape[3] - width) // 2
    return latents[:, :, top:top + height, left:left + width]


def _inpainting_model_input(job: Job, noise: torch.Tensor) -> Inpainting | None:
    """txt2img on an inpainting checkpoint: everything masked, the masked image blank (as A1111)."""
    if not job.model.is_inpainting:
        return None
    batch, _, h, w = noise.shape
    factor = job.model.scale_factor
    blank = job.model.encode_images([Image.new("RGB", (w * factor, h * factor), (127, 127, 127))] * batch)
    mask = torch.ones(batch, 1, h, w, device=noise.device)
    return Inpainting(blank, mask, noise, unet_extra=torch.cat([mask, blank], dim=1))


def _add_hires_params(job: Job, request: Txt2ImgRequest) -> None:
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
    if sampler.name != job.sampler.name:
        extra["Hires sampler"] = sampler.name
    if schedule.name != job.schedule.name:
        extra["Hires schedule type"] = schedule.label
    if request.hr_prompt and request.hr_prompt != request.prompt:
        extra["Hires prompt"] = request.hr_prompt
    if request.hr_negative_prompt and request.hr_negative_prompt != request.negative_prompt:
        extra["Hires negative prompt"] = request.hr_negative_prompt
    extra["Denoising strength"] = request.denoising_strength
