"""One generation request's shared state (A1111's "processing" object): seeds, noise, conditioning,
scheduler, and the infotext / `info` of the result. txt2img and img2img build on it.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import torch

from schemas import GenerationRequest, Options, RequestError, limits
from schemas.extra_networks import PassPrompts
from schemas.sampler_params import SamplerParams, infotext_params, sampler_params
from schemas.samplers import Sampler, Schedule

from ..prompts.conditioning import Conditioning, ConditioningParams
from ..prompts.embeddings import Embedding, ForeignEmbedding, ti_hashes
from ..postprocess.face_restoration import FaceRestorer
from .generation import GeneratedImage, Generation
from ..imaging.infotext import build_infotext, worker_version
from ..prompts.lora import lora_hashes
from ..store.model import LoadedModel
from ..sampling.noise import batch_noise, latent_shape, resolve_seed
from .progress import Progress
from ..prompts.parser import split_and
from ..sampling.samplers import make_scheduler
from ..sampling.loop import Guidance, Inpainting, Switch, denoise

def _check_prompt_size(model: LoadedModel, prompts: PassPrompts) -> None:
    """A pass's prompts within the limits on AND parts and 75-token chunks. The chunks are counted on the
    whole text, editing syntax included: an upper bound of what any sampling step encodes."""
    for field, text in prompts.texts():
        if len(split_and(text)) > limits.MAX_SUBPROMPTS:
            raise RequestError(field, f"{len(split_and(text))} AND parts; the limit is {limits.MAX_SUBPROMPTS} "
                                      "(WORKER_MAX_SUBPROMPTS)")
        try:
            chunks = len(model.encoder.chunks(text))
        except ForeignEmbedding as error:
            raise RequestError(field, f"{error} ({model.checkpoint.name} is {model.family.name})") from None
        if chunks > limits.MAX_PROMPT_CHUNKS:
            raise RequestError(field, f"{chunks} chunks of 75 tokens; the limit is {limits.MAX_PROMPT_CHUNKS} "
                                      "(WORKER_MAX_PROMPT_CHUNKS)")


class Job:
    def __init__(self, model: LoadedModel, request: GenerationRequest, options: Options,
                 progress: Progress | None = None, faces: FaceRestorer | None = None,
                 refiner: LoadedModel | None = None):
        """`refiner`: refiner_checkpoint's model, which sampling switches to at refiner_switch_at."""
        self.model, self.request, self.options, self.faces = model, request, options, faces
        self.refiner = refiner if refiner is not model else None  # A1111 doesn't switch to the model it runs
        self.progress = progress or Progress()
        self.progress.expect(request.n_iter)
        self.sampler, self.schedule = request.sampler
        self.seed, self.subseed = resolve_seed(request.seed), resolve_seed(request.subseed)
        count = request.batch_size * request.n_iter
        varied = request.subseed_strength > 0  # A1111: variations share the seed, vary the subseed
        self.all_seeds = [self.seed + (0 if varied else i) for i in range(count)]
        self.all_subseeds = [self.subseed + i for i in range(count)]
        self.extra_params: dict[str, Any] = {}  # infotext keys an operation adds, in order
        self.textual_inversions: dict[str, Embedding] = {}  # the embeddings the prompts used, by name
        self.timestamp = datetime.now().strftime("%Y%m%d%H%M%S")
        model.loras.load(request.lora_tags)  # unknown names and bad files fail before any work
        for prompts in request.pass_prompts:
            _check_prompt_size(model, prompts)
            if self.refiner is not None:
                _check_prompt_size(self.refiner, prompts)

    @property
    def clip_skip(self) -> int:
        return self.options.CLIP_stop_at_last_layers

    @property
    def uses_noise_seed_delta(self) -> bool:
        """ENSD reseeds the step noise of samplers that draw it; at eta 0 they draw none (as A1111 decides)."""
        return (bool(self.options.eta_noise_seed_delta) and self.sampler.adds_noise
                and self.sampler_params(self.sampler).eta != 0)

    def sampler_params(self, sampler: Sampler) -> SamplerParams:
        """The sampler parameters `sampler` runs with for this request."""
        return sampler_params(sampler, self.request, self.options)

    def batches(self) -> Iterator[tuple[list[int], list[int]]]:
        """(seeds, subseeds) of each of the n_iter batches; none after an interrupt."""
        size = self.request.batch_size
        for start in range(0, len(self.all_seeds), size):
            if self.progress.interrupted:
                return
            yield self.all_seeds[start:start + size], self.all_subseeds[start:start + size]
            self.progress.next_batch()

    def noise(self, seeds: list[int], subseeds: list[int], width: int, height: int) -> tuple[torch.Tensor, list]:
        """Starting noise for a batch at width x height, on the model's device, and step generators."""
        factor = self.model.scale_factor
        resize = self.request.seed_resize_from
        noise, generators = batch_noise(
            seeds, subseeds, self.request.subseed_strength, latent_shape(width, height, factor),
            latent_shape(*resize, factor) if resize else None,
            self.options.eta_noise_seed_delta if self.uses_noise_seed_delta else 0,
        )
        return noise.to(self.model.device), generators

    def prepare(self, prompts: PassPrompts, steps: int, size: tuple[int, int],
                model: LoadedModel | None = None) -> Conditioning:
        """Set a sampling pass of `size` (width, height) up on `model` (default: the request's): activate its LoRAs
        (exactly those) and encode its prompts. The LoRAs and embeddings used go into the infotext (Lora hashes,
        TI hashes)."""
        model = model or self.model
        applied = model.loras.activate(prompts.loras)
        if applied:  # as A1111, a pass without LoRAs keeps an earlier pass's hashes
            self.extra_params["Lora hashes"] = lora_hashes(applied)
        params = ConditioningParams.of(self.options, *size)
        conditioning = model.encoder.conditioning(prompts.prompt, prompts.negative_prompt, steps, params)
        for embedding in conditioning.textual_inversions:
            self.textual_inversions.setdefault(embedding.name, embedding)
        if self.textual_inversions:
            self.extra_params["TI hashes"] = ti_hashes(self.textual_inversions.values())
        return conditioning

    def scheduler(self, seeds: list[int], sampler: Sampler | None = None, schedule: Schedule | None = None,
                  model: LoadedModel | None = None):
        """A fresh scheduler for one batch on `model`'s noise schedule (the request's sampler and model unless
        others are given), with its parameters."""
        sampler = sampler or self.sampler
        delta = self.options.eta_noise_seed_delta if self.uses_noise_seed_delta else 0
        config = (model or self.model).scheduler_config
        seeds = [seed + delta for seed in seeds]
        return make_scheduler(config, sampler, schedule or self.schedule, seeds, self.sampler_params(sampler))

    def refiner_switch(self, prompts: PassPrompts, steps: int, size: tuple[int, int],
                       hires: bool) -> Switch | None:
        """The switch to the refiner in a first (`hires` False) or hires pass, as the option hires_fix_refiner_pass
        places it when hires fix is on; its conditioning encoded with the refiner (without the request's LoRAs)."""
        refiner = self.refiner
        if refiner is None:
            return None
        if getattr(self.request, "enable_hr", False):
            where = self.options.hires_fix_refiner_pass
            if (where == "first pass" and hires) or (where == "second pass" and not hires):
                return None
        if refiner.unet.config.in_channels != self.model.unet.config.in_channels:
            raise RequestError("refiner_checkpoint", f"{refiner.checkpoint.name} takes "
                               f"{refiner.unet.config.in_channels} latent channels, {self.model.checkpoint.name} "
                               f"{self.model.unet.config.in_channels}: an inpainting model refines only another")
        refiner.loras.deactivate()
        params = ConditioningParams.of(self.options, *size)
        conditioning = refiner.encoder.conditioning(prompts.prompt, prompts.negative_prompt, steps, params)
        # A1111 switches at once when refiner_switch_at is null
        return Switch(refiner.unet, conditioning, self.request.refiner_switch_at or 0.0,
                      self.options.refiner_switch_by_sample_steps)

    def denoise(self, scheduler, timesteps: torch.Tensor, latents: torch.Tensor, conditioning: Conditioning,
                generators: list, inpainting: Inpainting | None = None, sampler: Sampler | None = None,
                model: LoadedModel | None = None, switch: Switch | None = None) -> torch.Tensor:
        """Run a sampling pass of `sampler` on `model` (the request's unless others are given) with the request's
        guidance. Its parameters go into the infotext as A1111 adds them: when the pass starts, and NGMS once a
        negative prompt was skipped."""
        sampler = sampler or self.sampler
        params = self.sampler_params(sampler)
        self.extra_params.update(infotext_params(sampler, params))
        guidance = Guidance(self.request.cfg_scale, params.s_min_uncond, sampler.guided_by_timestep)
        latents = denoise((model or self.model).unet, scheduler, timesteps, latents, conditioning, guidance,
                          generators, params.eta or 0.0, inpainting, self.progress, switch)
        if guidance.skipped_uncond:
            self.extra_params["NGMS"] = params.s_min_uncond
        if switch is not None and switch.switched:
            self._add_refiner_params(switch)
        return latents

    def _add_refiner_params(self, switch: Switch) -> None:
        """A1111's infotext keys for a run that switched to the refiner."""
        if getattr(self.request, "enable_hr", False) and self.options.hires_fix_refiner_pass != "second pass":
            self.extra_params["Hires refiner"] = self.options.hires_fix_refiner_pass
        if switch.by_steps:
            self.extra_params["Refiner switch by sampling steps"] = True
        self.extra_params["Refiner"] = self.refiner.checkpoint.short_title
        self.extra_params["Refiner switch at"] = self.request.refiner_switch_at

    def restore_faces(self, images: list) -> list:
        """Decoded images with their faces restored when the request asks (before any inpainting overlay)."""
        return [self.faces(image) for image in images] if self.faces else images

    def params(self, index: int) -> dict[str, Any]:
        """Image `index`'s infotext parameters, in A1111's order."""
        request, checkpoint, vae = self.request, self.model.checkpoint, self.model.vae_file
        varied = request.subseed_strength > 0
        resize = request.seed_resize_from
        return {
            "Steps": request.steps,
            "Sampler": self.sampler.name,
            "Schedule type": self.schedule.label,
            "CFG scale": request.cfg_scale,
            "Seed": self.all_seeds[index],
            "Face restoration": self.faces.name if self.faces else None,
            "Size": f"{request.width}x{request.height}",
            "Model hash": checkpoint.short_hash,
            "Model": checkpoint.model_name,
            "VAE hash": vae.short_hash if vae else None,
            "VAE": vae.name if vae else None,
            "Variation seed": self.all_subseeds[index] if varied else None,
            "Variation seed strength": request.subseed_strength if varied else None,
            "Seed resize from": f"{resize[0]}x{resize[1]}" if resize else None,
            "Denoising strength": self.extra_params.get("Denoising strength"),
            "Clip skip": self.clip_skip if self.clip_skip > 1 else None,
            "ENSD": self.options.eta_noise_seed_delta if self.uses_noise_seed_delta else None,
            "Tiling": True if request.tiling else None,
            **{k: v for k, v in self.extra_params.items() if k != "Denoising strength"},
            "Version": worker_version(),
        }

    def result(self, images: list) -> Generation:
        """The generated images with their infotexts, and A1111's `info`."""
        request = self.request
        generated = [GeneratedImage(image, build_infotext(request.prompt, request.negative_prompt, self.params(i)))
                     for i, image in enumerate(images)]
        count = len(self.all_seeds)  # all_* describe the request, also when an interrupt cut it short
        info = {
            "prompt": request.prompt,
            "all_prompts": [request.prompt] * count,
            "negative_prompt": request.negative_prompt,
            "all_negative_prompts": [request.negative_prompt] * count,
            "seed": self.seed,
            "all_seeds": self.all_seeds,
            "subseed": self.subseed,
            "all_subseeds": self.all_subseeds,
            "subseed_strength": request.subseed_strength,
            "width": request.width,
            "height": request.height,
            "sampler_name": self.sampler.name,
            "cfg_scale": request.cfg_scale,
            "steps": request.steps,
            "batch_size": request.batch_size,
            "restore_faces": self.faces is not None,
            "face_restoration_model": self.faces.name if self.faces else None,
            "sd_model_name": self.model.checkpoint.model_name,
            "sd_model_hash": self.model.checkpoint.short_hash,
            "sd_vae_name": self.model.vae_file.name if self.model.vae_file else None,
            "sd_vae_hash": self.model.vae_file.short_hash if self.model.vae_file else None,
            "seed_resize_from_w": request.seed_resize_from_w,
            "seed_resize_from_h": request.seed_resize_from_h,
            "denoising_strength": request.denoising_strength,
            "extra_generation_params": {"Schedule type": self.schedule.label, **self.extra_params},
            "index_of_first_image": 0,
            "infotexts": [g.infotext for g in generated],
            "styles": list(request.styles or []),
            "job_timestamp": self.timestamp,
            "clip_skip": self.clip_skip,
            "is_using_inpainting_conditioning": self.model.is_inpainting,
            "version": worker_version(),
        }
        return Generation(generated, info, self.options)
