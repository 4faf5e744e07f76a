"""One generation's shared state (A1111's "processing" object), built from its plan: seeds, noise,
conditioning, scheduler, the sampling passes, and the infotext / `info` of the result. txt2img and
img2img build on it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

import torch

from schemas import Options, RequestError, limits
from schemas.extra_networks import PassPrompts
from schemas.sampler_params import infotext_params

from ..controlnet.units import PassControl, PreparedUnit
from ..imaging.infotext import build_infotext, worker_version
from ..postprocess.face_restoration import FaceRestorer
from ..prompts.conditioning import Conditioning, ConditioningParams
from ..prompts.embeddings import Embedding, ForeignEmbedding, ti_hashes
from ..prompts.lora import lora_hashes
from ..prompts.parser import split_and
from ..sampling.loop import Group, Guidance, Inpainting, Switch, denoise, img2img_steps, set_schedule
from ..sampling.noise import batch_noise, latent_shape
from ..sampling.samplers import make_scheduler
from ..store.model import LoadedModel
from .generation import GeneratedImage, Generation
from .plan import PassPlan, Plan
from .progress import Progress


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
    def __init__(self, model: LoadedModel, plan: Plan, options: Options, progress: Progress | None = None,
                 faces: FaceRestorer | None = None, refiner: LoadedModel | None = None,
                 controls: Sequence[PreparedUnit] = ()):
        """`refiner`: the plan's refiner checkpoint, loaded; `controls`: its ControlNet units, prepared."""
        self.model, self.plan, self.options, self.faces, self.controls = model, plan, options, faces, list(controls)
        self.refiner = refiner if refiner is not model else None  # A1111 doesn't switch to the model it runs
        self.progress = progress or Progress()
        self.progress.expect(plan.seeds.batch_count, model.family.preview_coefficients)
        self.extra_params: dict[str, Any] = {}  # infotext keys an operation adds, in order
        for unit in self.controls:
            self.extra_params[f"ControlNet {unit.plan.number}"] = unit.infotext()
        self.textual_inversions: dict[str, Embedding] = {}  # the embeddings the prompts used, by name
        self.timestamp = datetime.now().strftime("%Y%m%d%H%M%S")
        model.loras.load(plan.lora_tags)  # unknown names and bad files fail before any work
        for sampling in plan.passes:
            _check_prompt_size(model, sampling.prompts)
            if self.refiner is not None:
                _check_prompt_size(self.refiner, sampling.prompts)

    @property
    def clip_skip(self) -> int:
        return self.options.CLIP_stop_at_last_layers

    def batches(self) -> Iterator[tuple[list[int], list[int]]]:
        """(seeds, subseeds) of each of the n_iter batches; none after an interrupt."""
        for index in range(self.plan.seeds.batch_count):
            if self.progress.interrupted:
                return
            yield self.plan.seeds.batch(index)
            self.progress.next_batch()

    def noise(self, seeds: list[int], subseeds: list[int], size: tuple[int, int]) -> tuple[torch.Tensor, list]:
        """Starting noise for a batch at `size` (width, height), on the model's device, and step generators."""
        factor = self.model.scale_factor
        plan = self.plan.seeds
        resize = plan.resize_from
        noise, generators = batch_noise(seeds, subseeds, plan.subseed_strength, latent_shape(*size, factor),
                                        latent_shape(*resize, factor) if resize else None, plan.noise_seed_delta)
        return noise.to(self.model.device), generators

    def prepare(self, sampling: PassPlan, model: LoadedModel | None = None) -> Conditioning:
        """Set a sampling pass up on `model` (default: the request's): activate its LoRAs (exactly those) and encode
        its prompts. The LoRAs and embeddings used go into the infotext (Lora hashes, TI hashes)."""
        model = model or self.model
        prompts = sampling.prompts
        applied = model.loras.activate(prompts.loras)
        if applied:  # as A1111, a pass without LoRAs keeps an earlier pass's hashes
            self.extra_params["Lora hashes"] = lora_hashes(applied)
        params = ConditioningParams.of(self.options, *sampling.size)
        conditioning = model.encoder.conditioning(prompts.prompt, prompts.negative_prompt, sampling.steps, params)
        for embedding in conditioning.textual_inversions:
            self.textual_inversions.setdefault(embedding.name, embedding)
        if self.textual_inversions:
            self.extra_params["TI hashes"] = ti_hashes(self.textual_inversions.values())
        return conditioning

    def scheduler(self, seeds: list[int], sampling: PassPlan, model: LoadedModel | None = None):
        """A fresh scheduler for one batch of a pass on `model`'s noise schedule, with the pass's sampler and
        its parameters, and the timesteps it runs (A1111's step count for a pass from an image)."""
        model = model or self.model
        seeds = [seed + self.plan.seeds.noise_seed_delta for seed in seeds]
        scheduler = make_scheduler(model.scheduler_config, sampling.sampler, sampling.schedule, seeds,
                                   sampling.params)
        length, run = (sampling.steps, sampling.steps) if sampling.strength is None else \
            img2img_steps(sampling.steps, sampling.strength, sampling.exact_steps)
        return scheduler, set_schedule(scheduler, length, run, model.device)

    def control(self, sampling: PassPlan, hires: bool,
                box: tuple[int, int, int, int] | None = None) -> PassControl | None:
        """The ControlNet units' control of a first (`hires` False) or hires pass (`box`: an img2img "only masked"
        region); None without units that apply to it."""
        if not self.controls:
            return None
        control = PassControl(self.controls, sampling.size, self.model.device,
                              hires if self.plan.hires is not None else None, box)
        return control or None

    def refiner_switch(self, sampling: PassPlan, hires: bool) -> Switch | None:
        """The switch to the refiner in a first (`hires` False) or hires pass, where the plan runs it; its
        conditioning encoded with the refiner (without the request's LoRAs)."""
        plan, refiner = self.plan.refiner, self.refiner
        if refiner is None or not plan.runs_in(hires, self.plan.hires is not None):
            return None
        if refiner.unet.config.in_channels != self.model.unet.config.in_channels:
            raise RequestError("refiner_checkpoint", f"{refiner.checkpoint.name} takes "
                               f"{refiner.unet.config.in_channels} latent channels, {self.model.checkpoint.name} "
                               f"{self.model.unet.config.in_channels}: an inpainting model refines only another")
        refiner.loras.deactivate()
        prompts = sampling.prompts
        params = ConditioningParams.of(self.options, *sampling.size)
        conditioning = refiner.encoder.conditioning(prompts.prompt, prompts.negative_prompt, sampling.steps, params)
        return Switch(refiner.unet, conditioning, plan.switch_at or 0.0, plan.by_steps)  # null: at once

    def denoise(self, scheduler, timesteps: torch.Tensor, latents: torch.Tensor, conditioning: Conditioning,
                generators: list, sampling: PassPlan, model: LoadedModel | None = None,
                inpainting: Inpainting | None = None, switch: Switch | None = None,
                control: PassControl | None = None) -> torch.Tensor:
        """Run a sampling pass on `model` (the request's unless another is given) with the plan's guidance. Its
        sampler parameters go into the infotext as A1111 adds them: when the pass starts, and NGMS once a negative
        prompt was skipped; the refiner's keys once the run switched to it."""
        group = self.group(sampling, conditioning, latents.shape[0])
        latents = denoise((model or self.model).unet, scheduler, timesteps, latents, [group], generators,
                          sampling.params.eta or 0.0, inpainting, self.progress, switch, control)
        self.sampled(sampling, group)
        if switch is not None and switch.switched:
            self._add_refiner_params()
        return latents

    def group(self, sampling: PassPlan, conditioning: Conditioning, rows: int) -> Group:
        """The job's rows of a sampling pass with their guidance; the sampler parameters go into the infotext as A1111
        adds them, when the pass starts."""
        params = sampling.params
        self.extra_params.update(infotext_params(sampling.sampler, params))
        return Group(rows, conditioning, Guidance(self.plan.cfg_scale, params.s_min_uncond,
                                                  sampling.sampler.guided_by_timestep))

    def sampled(self, sampling: PassPlan, group: Group) -> None:
        """After a pass: NGMS in the infotext once a negative prompt was skipped, as A1111 adds it."""
        if group.guidance.skipped_uncond:
            self.extra_params["NGMS"] = sampling.params.s_min_uncond

    def _add_refiner_params(self) -> None:
        """A1111's infotext keys for a run that switched to the refiner."""
        plan = self.plan.refiner
        if self.plan.hires is not None and plan.hires_pass != "second pass":
            self.extra_params["Hires refiner"] = plan.hires_pass
        if plan.by_steps:
            self.extra_params["Refiner switch by sampling steps"] = True
        self.extra_params["Refiner"] = self.refiner.checkpoint.short_title
        self.extra_params["Refiner switch at"] = plan.switch_at

    def restore_faces(self, images: list) -> list:
        """Decoded images with their faces restored when the request asks (before any inpainting overlay)."""
        return [self.faces(image) for image in images] if self.faces else images

    def params(self, index: int) -> dict[str, Any]:
        """Image `index`'s infotext parameters, in A1111's order."""
        plan, first, seeds = self.plan, self.plan.first, self.plan.seeds
        checkpoint, vae = self.model.checkpoint, self.model.vae_file
        varied = seeds.subseed_strength > 0
        resize = seeds.resize_from
        return {
            "Steps": first.steps,
            "Sampler": first.sampler.name,
            "Schedule type": first.schedule.label,
            "CFG scale": plan.cfg_scale,
            "Seed": seeds.seeds[index],
            "Face restoration": self.faces.name if self.faces else None,
            "Size": f"{first.width}x{first.height}",
            "Model hash": checkpoint.short_hash,
            "Model": checkpoint.model_name,
            "VAE hash": vae.short_hash if vae else None,
            "VAE": vae.name if vae else None,
            "Variation seed": seeds.subseeds[index] if varied else None,
            "Variation seed strength": seeds.subseed_strength if varied else None,
            "Seed resize from": f"{resize[0]}x{resize[1]}" if resize else None,
            "Denoising strength": self.extra_params.get("Denoising strength"),
            "Clip skip": self.clip_skip if self.clip_skip > 1 else None,
            "ENSD": seeds.noise_seed_delta or None,
            "Tiling": True if plan.tiling else None,
            **{k: v for k, v in self.extra_params.items() if k != "Denoising strength"},
            "Version": worker_version(),
        }

    def result(self, images: list) -> Generation:
        """The generated images with their infotexts, and A1111's `info`."""
        plan, first, seeds, echo = self.plan, self.plan.first, self.plan.seeds, self.plan.echo
        prompt, negative_prompt = echo["prompt"], echo["negative_prompt"]
        generated = [GeneratedImage(image, build_infotext(prompt, negative_prompt, self.params(i)))
                     for i, image in enumerate(images)]
        count = len(seeds.seeds)  # all_* describe the request, also when an interrupt cut it short
        info = {
            "prompt": prompt,
            "all_prompts": [prompt] * count,
            "negative_prompt": negative_prompt,
            "all_negative_prompts": [negative_prompt] * count,
            "seed": seeds.seed,
            "all_seeds": list(seeds.seeds),
            "subseed": seeds.subseed,
            "all_subseeds": list(seeds.subseeds),
            "subseed_strength": seeds.subseed_strength,
            "width": first.width,
            "height": first.height,
            "sampler_name": first.sampler.name,
            "cfg_scale": plan.cfg_scale,
            "steps": first.steps,
            "batch_size": seeds.batch_size,
            "restore_faces": self.faces is not None,
            "face_restoration_model": self.faces.name if self.faces else None,
            "sd_model_name": self.model.checkpoint.model_name,
            "sd_model_hash": self.model.checkpoint.short_hash,
            "sd_vae_name": self.model.vae_file.name if self.model.vae_file else None,
            "sd_vae_hash": self.model.vae_file.short_hash if self.model.vae_file else None,
            "seed_resize_from_w": echo["seed_resize_from_w"],
            "seed_resize_from_h": echo["seed_resize_from_h"],
            "denoising_strength": echo["denoising_strength"],
            "extra_generation_params": {"Schedule type": first.schedule.label, **self.extra_params},
            "index_of_first_image": 0,
            "infotexts": [g.infotext for g in generated],
            "styles": echo["styles"],
            "job_timestamp": self.timestamp,
            "clip_skip": self.clip_skip,
            "is_using_inpainting_conditioning": self.model.is_inpainting,
            "version": worker_version(),
        }
        return Generation(generated, info, self.options)
