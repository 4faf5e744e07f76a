"""/controlnet/detect: a module run on images as a unit runs it, its maps returned as the extension shows them."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image

from schemas import RequestError
from schemas.errors import quoted

from .annotators import Annotators
from .detectors import inpaint_display_map
from .preprocessors import find_preprocessor


def detect(annotators: Annotators, module: str, images: Sequence[Image.Image], masks: Sequence[Image.Image],
           processor_res: float, threshold_a: float, threshold_b: float) -> list[Image.Image]:
    """One map per image: `module` (a name or label) at the resolution and thresholds (-1, or out of range: the
    module's defaults). The inpaint modules need one mask per image and show the image with the masked area half
    transparent; the other modules ignore masks, as the extension does."""
    preprocessor = find_preprocessor(module, "controlnet_module")
    if preprocessor.needs_mask and len(masks) != len(images):
        raise RequestError("controlnet_masks", f"module {quoted(module)} needs one mask per image ({len(images)}; got "
                                               f"{len(masks)})")
    params = preprocessor.resolve(processor_res, threshold_a, threshold_b)
    for index, image in enumerate(images):
        preprocessor.check_map_size(image.size, params.resolution, f"controlnet_input_images.{index}")
    run = annotators.detector(preprocessor, "controlnet_module")
    maps = []
    for index, image in enumerate(images):
        detected = run(image.convert("RGB"), *params)
        if preprocessor.needs_mask:
            detected = inpaint_display_map(detected, masks[index].convert("L").resize(image.size))
        maps.append(detected)
    return maps
