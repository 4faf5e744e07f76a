"""txt2img on a diffusers Stable Diffusion pipeline, with A1111's seed, batch and infotext rules."""

from __future__ import annotations

from datetime import datetime

import torch
from diffusers import StableDiffusionPipeline

from schemas import Txt2ImgRequest

from .generation import GeneratedImage, Generation
from .infotext import build_infotext, worker_version
from .models_dir import Checkpoint
from .noise import image_generators, initial_latents, resolve_seed
from .samplers import make_scheduler


def txt2img(pipe: StableDiffusionPipeline, scheduler_config: dict, checkpoint: Checkpoint,
            request: Txt2ImgRequest) -> Generation:
    """batch_size images per iteration, n_iter iterations; image i gets seed + i."""
    sampler, schedule = request.sampler
    pipe.scheduler = make_scheduler(scheduler_config, sampler, schedule)
    seed, subseed = resolve_seed(request.seed), resolve_seed(request.subseed)
    count = request.batch_size * request.n_iter
    all_seeds = [seed + i for i in range(count)]
    all_subseeds = [subseed + i for i in range(count)]

    params = {
        "Steps": request.steps,
        "Sampler": sampler.name,
        "Schedule type": schedule.label,
        "CFG scale": request.cfg_scale,
        "Seed": None,  # per image, below
        "Size": f"{request.width}x{request.height}",
        "Model hash": checkpoint.short_hash,
        "Model": checkpoint.model_name,
        "Eta": request.eta if sampler.name == "DDIM" and request.eta else None,
        "Version": worker_version(),
    }
    images = []
    for start in range(0, count, request.batch_size):
        seeds = all_seeds[start:start + request.batch_size]
        for image, image_seed in zip(_sample(pipe, request, seeds), seeds):
            infotext = build_infotext(request.prompt, request.negative_prompt, {**params, "Seed": image_seed})
            images.append(GeneratedImage(image, infotext))

    info = {
        "prompt": request.prompt,
        "all_prompts": [request.prompt] * count,
        "negative_prompt": request.negative_prompt,
        "all_negative_prompts": [request.negative_prompt] * count,
        "seed": seed,
        "all_seeds": all_seeds,
        "subseed": subseed,
        "all_subseeds": all_subseeds,
        "subseed_strength": request.subseed_strength,
        "width": request.width,
        "height": request.height,
        "sampler_name": sampler.name,
        "cfg_scale": request.cfg_scale,
        "steps": request.steps,
        "batch_size": request.batch_size,
        "restore_faces": False,
        "face_restoration_model": None,
        "sd_model_name": checkpoint.model_name,
        "sd_model_hash": checkpoint.short_hash,
        "sd_vae_name": None,
        "sd_vae_hash": None,
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": request.denoising_strength,
        "extra_generation_params": {"Schedule type": schedule.label},
        "index_of_first_image": 0,
        "infotexts": [image.infotext for image in images],
        "styles": [],
        "job_timestamp": datetime.now().strftime("%Y%m%d%H%M%S"),
        "clip_skip": 1,
        "is_using_inpainting_conditioning": False,
        "version": worker_version(),
    }
    return Generation(images, info)


@torch.inference_mode()
def _sample(pipe: StableDiffusionPipeline, request: Txt2ImgRequest, seeds: list[int]):
    generators = image_generators(seeds)
    latents = initial_latents(generators, request.height, request.width, pipe.vae_scale_factor)
    return pipe(
        prompt=[request.prompt] * len(seeds),
        negative_prompt=[request.negative_prompt] * len(seeds),
        height=request.height,
        width=request.width,
        num_inference_steps=request.steps,
        guidance_scale=request.cfg_scale,
        eta=request.eta or 0.0,
        latents=latents.to(pipe.device, pipe.unet.dtype),
        generator=generators,  # the same per-image generators drive ancestral samplers' noise
        output_type="pil",
    ).images
