"""Several txt2img requests run as one batch: their images share each denoiser call.

Requests can share the calls when everything the denoiser sees besides the prompts, the seeds and the CFG
scale is the same: the model and VAE, the LoRAs and their weights, the size, the sampler, its schedule,
steps and parameters, the text encoders' settings, tiling; and nothing runs per request inside the loop
(hires fix, a refiner, ControlNet, an inpainting model, several batches). Each request keeps its own Job:
its seeds and noise, prompts, embeddings, CFG scale, face restoration, infotext and `info`, so its images
are those it gets alone (up to the kernels' batch-size rounding).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch

from schemas import Options

from ..prompts.conditioning import ConditioningParams
from ..sampling.loop import denoise
from ..store.model import LoadedModel
from .generation import Generation
from .job import Job
from .plan import Plan
from .tiling import tiled


def batch_key(plan: Plan, options: Options) -> Hashable | None:
    """What a txt2img plan must share with others to run in one batch with them; None when it runs alone."""
    if plan.hires or plan.refiner or plan.image or plan.controls or plan.seeds.batch_count != 1:
        return None
    first = plan.first
    loras = tuple(sorted((tag.name, tag.unet_weight, tag.te_weight) for tag in plan.lora_tags))
    return (options.sd_model_checkpoint, options.sd_vae, loras, first.size, first.sampler.name, first.schedule.name,
            first.steps, first.params, plan.seeds.noise_seed_delta, plan.tiling,
            ConditioningParams.of(options, *first.size))


def txt2img_together(model: LoadedModel, jobs: Sequence[Job]) -> list[Generation]:
    """The generations of jobs whose plans have one batch_key, on `model` (not an inpainting one), sampled as one
    batch."""
    sampling = jobs[0].plan.first
    noises, generators, seeds, groups = [], [], [], []
    for job in jobs:
        job_seeds, job_subseeds = job.plan.seeds.batch(0)
        noise, job_generators = job.noise(job_seeds, job_subseeds, sampling.size)
        noises.append(noise)
        generators += job_generators
        seeds += job_seeds
        groups.append(job.group(sampling, job.prepare(job.plan.first), len(job_seeds)))
    scheduler, timesteps = jobs[0].scheduler(seeds, sampling)
    with tiled(model.unet, model.vae, enabled=jobs[0].plan.tiling):
        latents = denoise(model.unet, scheduler, timesteps, torch.cat(noises) * scheduler.init_noise_sigma, groups,
                          generators, sampling.params.eta or 0.0, progress=jobs[0].progress)
        images = model.decode_latents(latents)
    generations, start = [], 0
    for job, group in zip(jobs, groups):
        job.sampled(sampling, group)
        generations.append(job.result(job.restore_faces(images[start:start + group.rows])))
        start += group.rows
    return generations
