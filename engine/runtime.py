"""The engine a worker holds: set up once at start (load the default checkpoint), then serve requests.

Server options (A1111's /options) live here; a request's override_settings apply to that request
only, unless it sets override_settings_restore_afterwards to false. Loaded checkpoints are kept in
a small cache (WORKER_MAX_MODELS, default 2) so switching back and forth does not reload. Each
generation sets the model's VAE from its options (sd_vae), so an override lasts one request, and a
request's LoRAs are active during that request only.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from collections.abc import Callable, Hashable, Sequence
from typing import Any, NamedTuple

import torch
from PIL import Image

from schemas import (ExtrasRequest, GenerationRequest, Img2ImgRequest, InterrogateRequest, Options, RequestError,
                     Txt2ImgRequest)
from schemas.errors import quoted

from .device import pick_device, pick_dtype
from .prompts.embeddings import Embeddings
from .postprocess.extras import Extras, extras
from .faults import out_of_memory_as_error, reraise_server_fault
from .postprocess.face_restoration import FaceRestorer, FaceRestorers, restores_faces
from .tasks.generation import Generation
from .tasks.img2img import img2img
from .postprocess.interrogate import Interrogator
from .store.fast_path import FastPath
from .store.loading import detect_architecture, load_pipeline, stored_dtype
from .prompts.lora import LoraLibrary
from .store.model import LoadedModel
from .store.models_dir import Checkpoint, default_checkpoint, find_checkpoint, list_checkpoints
from .tasks.progress import Progress
from .tasks.sd_upscale import sd_upscale
from .settings import Settings
from .prompts.styles import StyleLibrary
from .controlnet.annotators import Annotators
from .controlnet.models import ControlNets
from .controlnet.units import PreparedUnit
from .controlnet.units import prepare as prepare_unit
from .tasks.batch import batch_key, txt2img_together
from .tasks.job import Job
from .tasks.plan import Plan, plan_of
from .tasks.txt2img import txt2img
from .postprocess.upscalers import Upscalers
from .store.vae import Vaes


ControlImage = tuple["Image.Image | None", "Image.Image | None"]  # a ControlNet unit's image and mask


class Models(NamedTuple):
    """What a generation runs with: its model and options, the hires pass's model, the refiner, the face restorer."""

    model: LoadedModel
    options: Options
    hires: LoadedModel
    refiner: LoadedModel | None
    faces: FaceRestorer | None
    controls: list[PreparedUnit]  # the ControlNet units, prepared (their maps detected)


class Engine:
    def __init__(self, settings: Settings, checkpoint: Checkpoint, device: torch.device, dtype: torch.dtype):
        models_dir = settings.models_dir
        self.models_dir, self.device, self.dtype, self.max_models = models_dir, device, dtype, settings.max_models
        self.checkpoints = list_checkpoints(models_dir)
        self.upscalers = Upscalers(models_dir, device, dtype, settings.upscale_tile)  # finds files; loads on first use
        self.faces = FaceRestorers(models_dir, device)  # loads on first use
        self.interrogator = Interrogator(models_dir, device, dtype)  # the same
        self.vaes = Vaes(models_dir, device, dtype)  # the same
        self.embeddings = Embeddings(models_dir)  # read on first use
        self.loras = LoraLibrary(models_dir, settings.max_loras)  # finds files; each checkpoint loads them on first use
        self.styles = StyleLibrary(settings.styles_path)  # read again when it changes
        self.controlnets = ControlNets(models_dir, device, dtype, settings.max_controlnets)  # loads on first use
        self.annotators = Annotators(models_dir, device)  # the same
        self._loaded: OrderedDict[Path, LoadedModel] = OrderedDict()
        self.fast_path = FastPath(settings.fast_path, models_dir, device)  # WORKER_* GPU options, applied on load
        self.options = _selecting(Options(), checkpoint)  # hashes the checkpoint at start
        self.progress = Progress()
        self.model_for(checkpoint)

    @classmethod
    def start(cls, settings: Settings | None = None, *, models_dir: Path | None = None, sd_model: str | None = None,
              device: str | None = None, dtype: str | None = None) -> Engine:
        """Load the default checkpoint (sd_model, else the first) from the models directory. `settings`: read
        from the environment when not given; the keywords replace single ones."""
        settings = replace(settings or Settings.from_env(), **{key: value for key, value in (
            ("models_dir", models_dir), ("sd_model", sd_model), ("device", device), ("dtype", dtype))
            if value is not None})
        checkpoint = default_checkpoint(settings.models_dir, settings.sd_model)
        torch_device = pick_device(settings.device)
        torch_dtype = pick_dtype(torch_device, settings.dtype, stored_dtype(checkpoint))
        engine = cls(settings, checkpoint, torch_device, torch_dtype)
        if settings.warmup if settings.warmup is not None else torch_device.type == "cuda":
            engine.warm_up()
        return engine

    def warm_up(self) -> None:
        """One tiny generation at start, so the first request is as fast as the second (CUDA kernels,
        allocator, tokenizer caches); with WORKER_COMPILE, one at each compiled size. On by default on GPUs;
        WORKER_WARMUP=0/1 decides."""
        for width, height in self.fast_path.warmup_sizes(self.model.unet, self.model.scale_factor):
            self.txt2img(Txt2ImgRequest(prompt="warm-up", steps=1, width=width, height=height, seed=0))

    @property
    def model(self) -> LoadedModel:
        """The current default checkpoint, loaded."""
        return self.model_for(self.find_checkpoint(self.options.sd_model_checkpoint, "sd_model_checkpoint"))

    def find_checkpoint(self, name: str, field: str) -> Checkpoint:
        try:
            return find_checkpoint(self.checkpoints, name)
        except LookupError:
            self.checkpoints = list_checkpoints(self.models_dir)  # files may have been added
            try:
                return find_checkpoint(self.checkpoints, name)
            except LookupError:
                names = ", ".join(c.name for c in self.checkpoints) or "none"
                raise RequestError(field, f"no checkpoint {quoted(name)} in the models directory; "
                                          f"available: {names}") from None

    def model_for(self, checkpoint: Checkpoint) -> LoadedModel:
        if checkpoint.path in self._loaded:
            self._loaded.move_to_end(checkpoint.path)
        else:
            while len(self._loaded) >= self.max_models:
                self._loaded.popitem(last=False)
            architecture = detect_architecture(checkpoint)
            pipe = self.fast_path.apply(load_pipeline(checkpoint, self.device, self.dtype, architecture))
            self._loaded[checkpoint.path] = LoadedModel(checkpoint, architecture, pipe, self.loras, self.embeddings)
        return self._loaded[checkpoint.path]

    def _request_model(self, options: Options) -> LoadedModel:
        """The model a request's options (the server's with its overrides) select, checked against them; its VAE set
        from them. Nothing is stored: a request keeps its overrides only once it succeeded."""
        checkpoint = self.find_checkpoint(options.sd_model_checkpoint, "override_settings.sd_model_checkpoint")
        model = self.model_for(checkpoint)
        _check_against_model(options, model, "override_settings.")
        self._apply_vae(model, options.sd_vae, "override_settings.sd_vae")
        return model

    def _apply_vae(self, model: LoadedModel, option: str, field: str) -> None:
        """Make `model` decode and encode with the VAE the sd_vae value `option` names (given in `field`)."""
        model.use_vae(*self.vaes.find(option, model.checkpoint, model.architecture, field))

    def _generate(self, request: GenerationRequest, operation: Callable[[Plan, Models], Generation],
                  control_images: Sequence[ControlImage] = (), fallback: ControlImage = (None, None)) -> Generation:
        """Translate a txt2img or img2img request into its plan and run `operation(plan, models)`; after success keep
        its overrides when it asks to (override_settings_restore_afterwards: false). The models it needs (its own,
        hr_checkpoint_name's with the request's VAE, the refiner) count in the model cache (WORKER_MAX_MODELS), the
        request's own loaded last. `control_images`: the enabled ControlNet units' (image, mask), in order (None
        where a unit sent none: `fallback`, img2img's init image and mask, stands in)."""
        width, height = request.output_size
        with out_of_memory_as_error(self.device, f"{width}x{height}, batch {request.batch_size}"):
            options = self.options.merged(request.override_settings)
            plan = plan_of(request, options)
            refiner = self._load(plan.refiner.checkpoint, "refiner_checkpoint") if plan.refiner else None
            hires_checkpoint = plan.hires.checkpoint if plan.hires else None
            hires_model = self._load(hires_checkpoint, "hr_checkpoint_name") if hires_checkpoint else None
            model = self._request_model(options)
            if hires_model is not None:
                self._apply_vae(hires_model, options.sd_vae, "override_settings.sd_vae")
            controls = self._prepare_controls(plan, model, control_images, fallback)
            models = Models(model, options, hires_model or model, refiner, self._face_restorer(request, options),
                            controls)
            try:
                generation = operation(plan, models)
            finally:
                for used in {id(m): m for m in (model, hires_model, refiner) if m is not None}.values():
                    used.loras.deactivate()  # the next request starts from the base model
        if not request.override_settings_restore_afterwards:
            self.options = _selecting(options, model.checkpoint)
        if not options.control_net_no_detectmap:
            generation.extra_images += [unit.fitted(plan.first.size) for unit in controls if unit.plan.save_map]
        return generation

    def _prepare_controls(self, plan: Plan, model: LoadedModel, images: Sequence[ControlImage],
                          fallback: ControlImage) -> list[PreparedUnit]:
        """The plan's ControlNet units with their networks (of the model's family) loaded and their maps detected."""
        units = []
        for control, (image, mask) in zip(plan.controls, images or [(None, None)] * len(plan.controls)):
            if image is None:
                image, mask = fallback
            if image is None:
                raise RequestError(control.field("image"), "a unit needs an image in txt2img (in img2img, the init "
                                                           "image stands in)")
            found = self.controlnets.find(control.model, model.family, control.field("model"))
            network, title = (found[1], found[0].title) if found else (None, "None")
            units.append(prepare_unit(control, image, mask, plan.first.size, self.annotators, network, title))
        return units

    def _load(self, name: str, field: str) -> LoadedModel:
        return self.model_for(self.find_checkpoint(name, field))

    def _face_restorer(self, request: GenerationRequest, options: Options) -> FaceRestorer | None:
        """restore_faces' restorer, loaded before generating (a missing file fails the request first)."""
        if not restores_faces(request, options):
            return None
        return self.faces.find(options.face_restoration_model, "restore_faces").with_weight(options.code_former_weight)

    def txt2img(self, request: Txt2ImgRequest, firstpass_image: Image.Image | None = None,
                control_images: Sequence[ControlImage] = ()) -> Generation:
        """`control_images`: the enabled ControlNet units' (image, mask), in order."""
        return self._generate(request, lambda plan, m: txt2img(
            m.model, plan, m.options, self.upscalers, self.progress, m.faces, m.hires, firstpass_image, m.refiner,
            m.controls), control_images)

    def batch_key(self, request: Txt2ImgRequest) -> Hashable | None:
        """What a txt2img request must share with others for txt2img_batch to run them together; None: alone."""
        if not request.override_settings_restore_afterwards or request.script is not None:
            return None
        try:
            options = self.options.merged(request.override_settings)
            return batch_key(plan_of(request, options), options)
        except ValueError:  # a bad request fails on its own, when it runs
            return None

    def txt2img_batch(self, requests: Sequence[Txt2ImgRequest]) -> list[Generation | Exception]:
        """Requests with one batch_key, as one batch: each one's generation, or the error that failed it alone (a
        bad prompt, LoRA or face restorer fails its request before any sampling; the others run without it)."""
        model = self._request_model(self.options.merged(requests[0].override_settings))
        if len(requests) == 1 or model.is_inpainting:
            return [self._alone(request) for request in requests]
        results: list[Generation | Exception | None] = [None] * len(requests)
        width, height = requests[0].output_size
        images = sum(request.batch_size for request in requests)
        with out_of_memory_as_error(self.device, f"{width}x{height}, batch {images} of {len(requests)} requests"):
            jobs, runs = [], []
            for index, request in enumerate(requests):
                try:  # a Job checks its prompts and LoRAs as it is made, before any work
                    options = self.options.merged(request.override_settings)
                    jobs.append(Job(model, plan_of(request, options), options, self.progress,
                                    self._face_restorer(request, options)))
                except Exception as error:
                    reraise_server_fault(error)
                    results[index] = error
                    continue
                runs.append(index)
            try:
                for index, generation in zip(runs, txt2img_together(model, jobs) if jobs else []):
                    results[index] = generation
            finally:
                model.loras.deactivate()
        return results

    def _alone(self, request: Txt2ImgRequest) -> Generation | Exception:
        try:
            return self.txt2img(request)
        except Exception as error:  # handed to the caller, which answers as for its own call
            return error

    def img2img(self, request: Img2ImgRequest, init_images: list[Image.Image], mask: Image.Image | None,
                latent_mask: Image.Image | None = None, control_images: Sequence[ControlImage] = ()) -> Generation:
        """`control_images`: the enabled ControlNet units' (image, mask), in order; a unit without one uses the
        first init image (and the mask), as the extension does."""
        return self._generate(request, lambda plan, m: img2img(
            m.model, plan, m.options, init_images, mask, self.progress, m.faces, latent_mask, refiner=m.refiner,
            controls=m.controls), control_images, (init_images[0], mask))

    def sd_upscale(self, request: Img2ImgRequest, image: Image.Image, upscaler: str) -> Generation:
        """A1111's "SD upscale" script (request.script): `image` upscaled with `upscaler`, redrawn in tiles."""
        if request.control_units:
            raise RequestError("alwayson_scripts.controlnet", "ControlNet units are not offered with the SD upscale "
                                                              "script yet; send them without script_name")
        return self._generate(request, lambda plan, m: sd_upscale(
            m.model, plan, request.script, m.options, image, upscaler, self.upscalers, self.progress, m.faces,
            m.refiner))

    def extras(self, request: ExtrasRequest, images: list[Image.Image]) -> Extras:
        """Upscale images and restore faces (A1111's extra-single-image / extra-batch-images), in the server
        options' format."""
        with out_of_memory_as_error(self.device, f"extras of {len(images)} image(s)"):
            return extras(self.upscalers, self.faces, request, images, self.options)

    def interrogate(self, request: InterrogateRequest, image: Image.Image) -> str:
        """A1111's /interrogate: the caption of the image by the model the request names."""
        with out_of_memory_as_error(self.device, "interrogating an image"):
            return self.interrogator.interrogate(request.model, image)

    def set_options(self, values: dict[str, Any]) -> None:
        """POST /options: A1111's options are validated (against the checkpoint they select, which is loaded, as
        is a new sd_vae) and stored only when all of them are good; unknown keys are ignored (as A1111 does)."""
        known = {key: value for key, value in values.items() if key in Options.model_fields}
        options = self.options.merged(known)
        checkpoint = self.find_checkpoint(options.sd_model_checkpoint, "sd_model_checkpoint")
        with out_of_memory_as_error(self.device, f"loading {checkpoint.name}"):
            model = self.model_for(checkpoint)
            _check_against_model(options, model)
            self.vaes.find(options.sd_vae, checkpoint, model.architecture, "sd_vae")  # validated, loaded; applied later
        self.options = _selecting(options, checkpoint)

    def refresh_checkpoints(self) -> None:
        self.checkpoints = list_checkpoints(self.models_dir)

    def unload(self) -> None:
        """Free every loaded checkpoint, VAE, upscaler, face restorer and captioner; the next request loads what it
        needs."""
        self._loaded.clear()
        self.controlnets.unload()
        self.annotators.unload()
        self.vaes.unload()
        self.upscalers.unload()
        self.faces.unload()
        self.interrogator.unload()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def reload(self) -> LoadedModel:
        """Unload everything, then load the current checkpoint again."""
        self.unload()
        return self.model


def _selecting(options: Options, checkpoint: Checkpoint) -> Options:
    """`options` with `checkpoint` as the loaded one, named as A1111 reports it: its title and sha256."""
    return options.model_copy(update={"sd_model_checkpoint": checkpoint.title, "sd_checkpoint_hash": checkpoint.sha256})


def _check_against_model(options: Options, model: LoadedModel, prefix: str = "") -> None:
    """The option bounds that depend on the checkpoint (`prefix` completes the field's name in errors)."""
    layers = model.encoder.layer_count
    if options.CLIP_stop_at_last_layers > layers:
        raise RequestError(f"{prefix}CLIP_stop_at_last_layers", f"must be at most {layers}, the layer count of "
                           f"{model.checkpoint.name}'s text encoder (got {options.CLIP_stop_at_last_layers})")
