"""img2img and inpainting, with A1111's resize modes, masks, fills, "only masked" and step count.

Masks: white = repaint. Ordinary checkpoints keep the unmasked area by blending the re-noised
original into the latents at every step; inpainting checkpoints (9-channel UNets) are conditioned on
the mask and the masked image instead. Either way the original pixels are composited back outside
the mask at the end.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from schemas import Options
from schemas.limits import MAX_SIDE

from ..controlnet.units import PreparedUnit
from ..imaging import image_ops
from ..postprocess.face_restoration import FaceRestorer
from .generation import Generation
from .job import Job
from .plan import Plan
from ..store.model import LoadedModel
from .progress import Progress
from ..sampling.loop import Inpainting
from .tiling import tiled

MASKED_CONTENT = ("fill", "original", "latent noise", "latent nothing")  # inpainting_fill 0..3
LATENT_RESIZE_MODE = 3
FILL, ORIGINAL, LATENT_NOISE, LATENT_NOTHING = range(4)


@dataclass
class FittedMask:
    """How a request's mask applies to the init images of one size (the mask is fitted to each size)."""

    repaint: Image.Image  # "L" at width x height: what is repainted, in the generated frame
    overlay: Image.Image  # "L" at the output size: where generated pixels replace the original
    box: tuple[int, int, int, int] | None  # "only masked": the region cut out of the original
    latent: Image.Image | None = None  # "L": latent_mask, which blends the latents in place of `repaint`

    @property
    def blend(self) -> Image.Image:
        """The mask that keeps the original in the latents at each step."""
        return self.repaint if self.latent is None else self.latent


def img2img(model: LoadedModel, plan: Plan, options: Options,
            init_images: list[Image.Image], mask: Image.Image | None, progress: Progress | None = None,
            faces: FaceRestorer | None = None, latent_mask: Image.Image | None = None,
            script_params: dict[str, Any] | None = None, refiner: LoadedModel | None = None,
            controls: Sequence[PreparedUnit] = ()) -> Generation:
    """`latent_mask` (with a mask): the mask that keeps the original in the latents at each step, as is (A1111's
    latent_mask), in place of the blurred repaint mask. `script_params`: infotext keys of a script that runs
    img2img, before img2img's own (as in A1111). `refiner`: the plan's refiner, loaded; `controls`: its ControlNet
    units, prepared."""
    job = Job(model, plan, options, progress, faces, refiner, controls)
    job.extra_params.update(script_params or {})
    fitted = {image.size: _fit_mask(plan, mask, image.size, latent_mask) for image in init_images} \
        if mask is not None else {}
    _add_params(job, plan, fitted.get(init_images[0].size))
    count = len(plan.seeds.seeds)
    sources = [init_images[i % len(init_images)].convert("RGB") for i in range(count)]  # A1111 cycles them
    images: list[Image.Image] = []
    with tiled(model.unet, model.vae, enabled=plan.tiling):
        for seeds, subseeds in job.batches():
            batch = [(image, fitted.get(image.size)) for image in sources[len(images):len(images) + len(seeds)]]
            images += _generate(job, batch, seeds, subseeds)
    return job.result(images)


def _fit_mask(plan: Plan, mask: Image.Image, image_size: tuple[int, int],
              latent_mask: Image.Image | None) -> FittedMask:
    settings, (width, height) = plan.image.mask, plan.first.size
    prepared = image_ops.prepare_mask(image_ops.mask_from_image(mask).resize(image_size),
                                      settings.blur_x, settings.blur_y, settings.invert)
    latent = image_ops.mask_from_image(latent_mask) if latent_mask is not None else None
    if settings.only_masked and (box := image_ops.crop_region(prepared, settings.padding)):
        box = image_ops.expand_to_aspect(box, width, height, *image_size)
        repaint = image_ops.resize_image(prepared.crop(box), width, height, 2).convert("L")
        return FittedMask(repaint, prepared, box, latent)
    # "whole picture" (or an empty mask, where "only masked" has nothing to crop: A1111 does the same)
    mode = 0 if plan.image.resize_mode == LATENT_RESIZE_MODE else plan.image.resize_mode
    repaint = image_ops.resize_image(prepared, width, height, mode).convert("L")
    return FittedMask(repaint, _strengthen(repaint), None, latent)


def _strengthen(mask: Image.Image) -> Image.Image:
    """For "whole picture", A1111 doubles the blurred mask for the overlay, so the repainted area stays solid."""
    return Image.fromarray(np.clip(np.asarray(mask, dtype=np.float32) * 2, 0, 255).astype(np.uint8))


def _frame(plan: Plan, image: Image.Image, fitted: FittedMask | None) -> tuple[Image.Image, Image.Image]:
    """(the picture the output is composed on, the picture that is encoded and denoised)."""
    width, height = plan.first.size
    mode = plan.image.resize_mode
    if fitted is not None and fitted.box is not None:
        return image, image_ops.resize_image(image.crop(fitted.box), width, height, 2)
    if mode == LATENT_RESIZE_MODE:
        resized = image_ops.resize_image(image, width, height, 0)
        return resized, image.resize(_latent_mode_size(image), Image.Resampling.LANCZOS)
    resized = image_ops.resize_image(image, width, height, mode)
    return resized, resized


def _latent_mode_size(image: Image.Image) -> tuple[int, int]:
    """The size resize mode 3 encodes an init image at before resizing its latents: its own, floored to the VAE's
    multiple, and shrunk (keeping its aspect ratio) to MAX_SIDE per side at most."""
    scale = min(1.0, MAX_SIDE / max(image.size))
    multiple = 8
    return tuple(max(int(side * scale) // multiple, 1) * multiple for side in image.size)


def _generate(job: Job, sources: list[tuple[Image.Image, FittedMask | None]], seeds: list[int],
              subseeds: list[int]) -> list[Image.Image]:
    """One batch: each source image with its fitted mask (all None without a mask)."""
    model, plan, sampling = job.model, job.plan, job.plan.first
    fill = plan.image.mask.fill
    masks = [fitted for _, fitted in sources]
    frames = [_frame(plan, image, fitted) for image, fitted in sources]
    encoded = [image_ops.fill_masked(work, fitted.repaint) if fitted and fill == FILL else work
               for (_, work), fitted in zip(frames, masks)]
    init = model.encode_images(encoded)
    latent_size = (sampling.height // model.scale_factor, sampling.width // model.scale_factor)
    if init.shape[-2:] != latent_size:
        init = F.interpolate(init, size=latent_size, mode="bilinear")
    noise, generators = job.noise(seeds, subseeds, sampling.size)
    noise = noise * plan.image.noise_multiplier
    inpainting = _inpainting(job, masks, init, noise, [work for _, work in frames])
    if inpainting is not None and not model.is_inpainting:
        init = _fill_latents(fill, init, inpainting.mask, noise)

    scheduler, timesteps = job.scheduler(seeds, sampling)
    conditioning = job.prepare(sampling)
    switch = job.refiner_switch(sampling, hires=False)
    box = next((fitted.box for fitted in masks if fitted is not None), None)
    latents = job.denoise(scheduler, timesteps, scheduler.add_noise(init, noise, timesteps[:1]), conditioning,
                          generators, sampling, inpainting=inpainting, switch=switch,
                          control=job.control(sampling, hires=False, box=box))
    generated = job.restore_faces(model.decode_latents(latents))
    return [_compose(canvas, image, fitted) for (canvas, _), image, fitted in zip(frames, generated, masks)]


def _inpainting(job: Job, masks: list[FittedMask | None], init: torch.Tensor, noise: torch.Tensor,
                pictures: list[Image.Image]) -> Inpainting | None:
    """The batch's masks (`masks`: one per image, all None without a mask) at latent size."""
    model = job.model
    masked_request = masks[0] is not None
    if not masked_request and not model.is_inpainting:
        return None
    batch, _, h, w = init.shape
    if not masked_request:  # an inpainting checkpoint without a mask: everything may change
        mask = torch.ones(batch, 1, h, w, device=init.device)
    else:
        small = np.stack([np.asarray(fitted.blend.resize((w, h)), dtype=np.float32) / 255 for fitted in masks])
        if job.plan.image.mask.round:
            small = np.around(small)
        mask = torch.from_numpy(small).to(init.device)[:, None]
    if not model.is_inpainting:
        return Inpainting(init, mask, noise)
    size = pictures[0].size  # every picture is width x height
    binaries = [fitted.repaint.point(lambda v: 255 if v >= 128 else 0) if fitted else Image.new("L", size, 255)
                for fitted in masks]
    gray = Image.new("RGB", size, (127, 127, 127))
    masked = model.encode_images([Image.composite(gray, picture, binary)
                                  for picture, binary in zip(pictures, binaries)])
    condition_mask = torch.from_numpy(np.stack([np.asarray(b, dtype=np.float32) / 255 for b in binaries]))
    condition_mask = F.interpolate(condition_mask[:, None].to(init.device), size=(h, w))
    return Inpainting(init, mask, noise, unet_extra=torch.cat([condition_mask, masked], dim=1))


def _fill_latents(fill: int, init: torch.Tensor, mask: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """inpainting_fill 2 and 3 replace the masked latents with noise or nothing before sampling."""
    if fill == LATENT_NOISE:
        return init * (1 - mask) + noise * mask
    if fill == LATENT_NOTHING:
        return init * (1 - mask)
    return init


def _compose(canvas: Image.Image, generated: Image.Image, fitted: FittedMask | None) -> Image.Image:
    if fitted is None:
        return generated
    if fitted.box is not None:
        generated = image_ops.paste_region(canvas, generated, fitted.box)
    return image_ops.composite_original(canvas, generated, fitted.overlay)


def _add_params(job: Job, plan: Plan, fitted: FittedMask | None) -> None:
    extra, image = job.extra_params, plan.image
    extra["Denoising strength"] = plan.first.strength
    if image.noise_multiplier != 1:
        extra["Noise multiplier"] = image.noise_multiplier
    if fitted is None:
        return
    mask = image.mask
    if mask.blur_x == mask.blur_y:
        extra["Mask blur"] = mask.blur_x
    else:
        extra["Mask blur x"], extra["Mask blur y"] = mask.blur_x, mask.blur_y
    if mask.invert:
        extra["Mask mode"] = "Inpaint not masked"
    extra["Masked content"] = MASKED_CONTENT[mask.fill]
    if fitted.box is not None:
        extra["Inpaint area"] = "Only masked"
        extra["Masked area padding"] = mask.padding
