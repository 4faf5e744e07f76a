"""ControlNet units applied as the sd-webui-controlnet extension applies them.

Before sampling, each unit's control image (its own, else the img2img init image, with the img2img mask for
the inpaint modules) is run through its preprocessor at its resolution (pixel perfect: the one that fits
the first pass), giving the detected map. Each pass then gets a `PassControl`: the map fitted to the
pass's size by the unit's resize mode ("Crop and Resize" covers and crops, "Just Resize" stretches,
"Resize and Fill" fits inside on the border's median colour), and at each step the ControlNet's residuals
for the UNet's skip connections, summed over the units:
- weight scales them; "My prompt is more important" and "ControlNet is more important" scale the deeper
  ones less (the extension's soft injection: weight * 0.825 ** (12 - i) for residual i), and so does a
  hires pass for canny and mlsd; "ControlNet is more important" also leaves the negative prompt's rows
  without control (the extension's CFG injection);
- a unit runs while guidance_start <= step / steps < guidance_end of the pass (the extension also runs one
  on the step at exactly guidance_end, so that guidance_end 0 still controls the first step; here 0 means
  never, and 1 every step);
- hr_option decides which passes of hires fix it applies to;
- the inpaint modules' hint carries the mask: masked pixels are -1 (the extension's inpaint protocol).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from schemas import RequestError

from ..tasks.plan import ControlPlan
from .annotators import Annotators
from .preprocessors import Params, Preprocessor, find_preprocessor, pixel_perfect_resolution

SOFT_BASE = 0.825  # the extension's soft-injection factor per level
SOFT_LEVELS = 13  # SD 1.x's residuals (12 input blocks and the middle block), which the factors count down from
SOFT_IN_HIRES = ("canny", "mlsd")  # modules whose control is soft in a hires pass, whatever the control mode


@dataclass
class PreparedUnit:
    """A unit ready to sample with: its network (None for model "None": the map only) and its detected map."""

    plan: ControlPlan
    preprocessor: Preprocessor
    params: Params  # the unit's resolution and thresholds (before pixel perfect: the infotext's, as the extension's)
    network: torch.nn.Module | None
    model_title: str  # "name [hash8]", or "None"
    detected: Image.Image  # RGB, at the preprocessor's resolution
    mask: Image.Image | None  # "L" at the control image's size, white = repaint: the inpaint modules'
    source_size: tuple[int, int]  # the control image's

    def fitted(self, size: tuple[int, int], box: tuple[int, int, int, int] | None = None) -> Image.Image:
        """The detected map at `size` (width, height) by the unit's resize mode (`box`: the region "only masked"
        cut out of the init image, which the control image is cut to first)."""
        image = self.detected
        if box is not None and self.plan.crop_to_mask:
            image = image.resize(self.source_size).crop(box)
        return fit(image, *size, self.plan.resize_mode)

    def hint(self, size: tuple[int, int], box: tuple[int, int, int, int] | None = None) -> torch.Tensor:
        """(1, 3, height, width) in [0, 1]; for the inpaint modules the masked pixels are -1."""
        pixels = torch.from_numpy(np.asarray(self.fitted(size, box).convert("RGB"), dtype=np.float32) / 255)
        hint = pixels.permute(2, 0, 1)[None]
        if self.mask is not None:
            mask = self.mask if box is None or not self.plan.crop_to_mask else self.mask.crop(box)
            mask = fit(mask.convert("RGB"), *size, self.plan.resize_mode).convert("L")
            masked = torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255 > 0.5).float()[None, None]
            hint = hint * (1 - masked) - masked
        return hint

    def infotext(self) -> str:
        """The unit as the extension writes it into the infotext (`ControlNet N: "..."`)."""
        plan, params = self.plan, self.params
        values = {"Module": plan.module, "Model": self.model_title, "Weight": plan.weight,
                  "Resize Mode": plan.resize_mode, "Processor Res": params.resolution,
                  "Threshold A": params.threshold_a, "Threshold B": params.threshold_b,
                  "Guidance Start": plan.guidance_start, "Guidance End": plan.guidance_end,
                  "Pixel Perfect": plan.pixel_perfect, "Control Mode": plan.control_mode}
        return ", ".join(f"{key}: {value}" for key, value in values.items())


def prepare(plan: ControlPlan, image: Image.Image, mask: Image.Image | None, first_size: tuple[int, int],
            annotators: Annotators, network: torch.nn.Module | None, model_title: str) -> PreparedUnit:
    """Run the unit's preprocessor on its control image (and keep the mask for an inpaint module)."""
    preprocessor = find_preprocessor(plan.module, plan.field("module"))
    if preprocessor.needs_mask and mask is None:
        raise RequestError(plan.field("image"), f"module {plan.module!r} needs a mask: send the unit's image as "
                                                "{image, mask}, or use it in img2img with a mask")
    params = preprocessor.resolve(plan.processor_res, plan.threshold_a, plan.threshold_b)
    resolution = pixel_perfect_resolution(image.size, *first_size, plan.resize_mode) if plan.pixel_perfect \
        else params.resolution
    preprocessor.check_map_size(image.size, resolution, plan.field("image"))
    detect = annotators.detector(preprocessor, plan.field("module"))
    detected = detect(image.convert("RGB"), resolution, params.threshold_a, params.threshold_b)
    if mask is not None:
        mask = mask.convert("L").resize(image.size)
    return PreparedUnit(plan, preprocessor, params, network, model_title, detected.convert("RGB"),
                        mask if preprocessor.needs_mask else None, image.size)


def fit(image: Image.Image, width: int, height: int, resize_mode: str) -> Image.Image:
    """`image` at width x height as the extension fits a control image."""
    if resize_mode == "Just Resize":
        return image.resize((width, height), Image.Resampling.LANCZOS)
    scale = (max if resize_mode == "Crop and Resize" else min)(width / image.width, height / image.height)
    scaled = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                          Image.Resampling.LANCZOS)
    left, top = (scaled.width - width) // 2, (scaled.height - height) // 2
    if resize_mode == "Crop and Resize":
        return scaled.crop((left, top, left + width, top + height))
    pixels = np.asarray(scaled.convert("RGB"))
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    canvas = Image.new("RGB", (width, height), tuple(int(v) for v in np.median(border, axis=0)))
    canvas.paste(scaled.convert("RGB"), (-left, -top))
    return canvas.convert(image.mode)


class PassControl:
    """The control of one sampling pass: the units that apply to it, their hints at its size, their scales."""

    def __init__(self, units: list[PreparedUnit], size: tuple[int, int], device: torch.device,
                 hires: bool | None = None, box: tuple[int, int, int, int] | None = None):
        """`hires`: whether this is hires fix's second pass (None: the request has no hires fix); `box`: the region
        of an img2img "only masked" pass."""
        self.units = []
        for unit in units:
            if unit.network is None or not _applies(unit.plan.hires_option, hires):
                continue
            soft = unit.plan.control_mode != "Balanced" or (bool(hires) and unit.preprocessor.name in SOFT_IN_HIRES)
            scales = [unit.plan.weight * (SOFT_BASE ** (SOFT_LEVELS - 1 - i) if soft else 1.0)
                      for i in range(SOFT_LEVELS)]
            cond_only = unit.plan.control_mode == "ControlNet is more important"
            self.units.append((unit, unit.hint(size, box).to(device), scales, cond_only))

    def __bool__(self) -> bool:
        return bool(self.units)

    def residuals(self, done: float, sample: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                  added: dict[str, torch.Tensor], uncond_rows: int) -> dict[str, object]:
        total: list[torch.Tensor] | None = None
        for unit, hint, scales, cond_only in self.units:
            if not unit.plan.guidance_start <= done < unit.plan.guidance_end:
                continue
            network = unit.network
            down, mid = network(sample.to(network.dtype), timestep, encoder_hidden_states=context.to(network.dtype),
                                controlnet_cond=hint.to(network.dtype).expand(sample.shape[0], -1, -1, -1),
                                added_cond_kwargs={k: v.to(network.dtype) for k, v in added.items()} or None,
                                return_dict=False)
            residuals = [residual * scale for residual, scale in zip([*down, mid], scales)]
            if cond_only and uncond_rows:
                for residual in residuals:
                    residual[:uncond_rows] = 0
            total = residuals if total is None else [a + b for a, b in zip(total, residuals)]
        if total is None:
            return {}
        return {"down_block_additional_residuals": tuple(total[:-1]), "mid_block_additional_residual": total[-1]}


def _applies(option: str, hires: bool | None) -> bool:
    """Whether a unit with hr_option `option` applies to a pass (the option counts only with hires fix)."""
    return hires is None or option == "Both" or (option == "High res only") == hires
