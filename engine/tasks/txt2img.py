"""txt2img, with A1111's hires fix (a second, img2img-style pass at a larger size)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from schemas import Options

from ..controlnet.units import PreparedUnit
from ..postprocess.face_restoration import FaceRestorer
from ..postprocess.upscalers import LATENT_MODES, PixelUpscaler, Upscalers, upscale_latents
from ..sampling.loop import Inpainting
from ..store.model import LoadedModel
from .generation import Generation
from .job import Job
from .plan import HiresPlan, Plan
from .progress import Progress
from .tiling import tiled


@dataclass
class FirstPass:
    """What hires fix starts from: the first pass's latents, or the request's firstpass_image (as pixels)."""

    latents: torch.Tensor | None = None
    images: list[Image.Image] | None = None

    def as_latents(self, model: LoadedModel) -> torch.Tensor:
        return self.latents if self.latents is not None else model.encode_images(self.images)

    def as_images(self, model: LoadedModel) -> list[Image.Image]:
        return self.images if self.images is not None else model.decode_latents(self.latents)


def txt2img(model: LoadedModel, plan: Plan, options: Options, upscalers: Upscalers,
            progress: Progress | None = None, faces: FaceRestorer | None = None,
            hires_model: LoadedModel | None = None, firstpass_image: Image.Image | None = None,
            refiner: LoadedModel | None = None, controls: Sequence[PreparedUnit] = ()) -> Generation:
    """`hires_model`: the model of the hires pass (default `model`); `firstpass_image`: used in place of the first
    pass when hires fix is on (A1111 ignores it otherwise); `refiner`: the plan's refiner, loaded; `controls`: its
    ControlNet units, prepared."""
    job = Job(model, plan, options, progress, faces, refiner, controls)
    hires, first = plan.hires, plan.first
    hires_model = hires_model or model
    pixel_upscaler = None  # hires fix in pixel space; found (an unknown name fails) before any work
    if hires is not None:
        if hires.upscaler not in LATENT_MODES:
            pixel_upscaler = upscalers.find(hires.upscaler, "hr_upscaler", also=LATENT_MODES)
        if hires_model is not model:
            hires_model.loras.load(hires.sampling.prompts.loras)
        head, tail = hires.infotext
        job.extra_params.update(head)
        if hires_model is not model:
            job.extra_params["Hires checkpoint"] = hires_model.checkpoint.short_title
        job.extra_params.update(tail)
        job.extra_params["Denoising strength"] = hires.sampling.strength
    first_image = firstpass_image.convert("RGB").resize(first.size, Image.Resampling.LANCZOS) \
        if firstpass_image is not None and hires is not None else None
    images: list[Image.Image] = []
    with tiled(*{model.unet, model.vae, hires_model.unet, hires_model.vae}, enabled=plan.tiling):
        for seeds, subseeds in job.batches():
            if first_image is not None:
                start = FirstPass(images=[first_image] * len(seeds))
            else:
                start = FirstPass(latents=_first_pass(job, seeds, subseeds))
            if hires is None:
                images += job.restore_faces(model.decode_latents(start.latents))
                continue
            latents = _hires_pass(job, hires, hires_model, start, seeds, subseeds, pixel_upscaler)
            images += job.restore_faces(hires_model.decode_latents(latents))
    return job.result(images)


def _first_pass(job: Job, seeds: list[int], subseeds: list[int]) -> torch.Tensor:
    sampling = job.plan.first
    noise, generators = job.noise(seeds, subseeds, sampling.size)
    scheduler, timesteps = job.scheduler(seeds, sampling)
    conditioning = job.prepare(sampling)
    switch = job.refiner_switch(sampling, hires=False)
    return job.denoise(scheduler, timesteps, noise * scheduler.init_noise_sigma, conditioning, generators, sampling,
                       inpainting=_inpainting_model_input(job.model, noise), switch=switch,
                       control=job.control(sampling, hires=False))


def _hires_pass(job: Job, hires: HiresPlan, model: LoadedModel, start: FirstPass, seeds: list[int],
                subseeds: list[int], pixel_upscaler: PixelUpscaler | None) -> torch.Tensor:
    """Upscale the first pass (in latent space, or with `pixel_upscaler`) and re-denoise it at the hires size on
    `model` (the request's, or hr_checkpoint_name's)."""
    sampling = hires.sampling
    upscale_width, upscale_height = hires.upscale_to
    factor = model.scale_factor
    if pixel_upscaler is None:
        init = upscale_latents(start.as_latents(model), hires.upscaler, upscale_height // factor,
                               upscale_width // factor)
    else:
        init = model.encode_images([pixel_upscaler(image, upscale_width, upscale_height)
                                    for image in start.as_images(job.model)])
    init = _centre_crop(init, sampling.height // factor, sampling.width // factor)

    scheduler, timesteps = job.scheduler(seeds, sampling, model)
    noise, generators = job.noise(seeds, subseeds, sampling.size)  # fresh noise from the same seeds
    conditioning = job.prepare(sampling, model)
    switch = job.refiner_switch(sampling, hires=True)
    return job.denoise(scheduler, timesteps, scheduler.add_noise(init, noise, timesteps[:1]), conditioning, generators,
                       sampling, model, _inpainting_model_input(model, noise), switch,
                       job.control(sampling, hires=True))


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
