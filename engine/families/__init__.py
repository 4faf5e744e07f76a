"""Model families: what differs between SD 1.x, SDXL and later architectures lives here, nowhere else.

`FAMILIES` lists them; a checkpoint's family is found from its tensor names (single files) or its
pipeline class (diffusers folders).
"""

from __future__ import annotations

from pathlib import Path

from .base import ModelFamily, TextEncoderSpec, UnsupportedCheckpoint
from .sd1 import SD1
from .sd2 import SD2, uses_open_clip
from .sdxl import SDXL

FAMILIES: tuple[ModelFamily, ...] = (SDXL(), SD2(), SD1())  # SDXL first: its files hold CLIP-L keys too
_BY_PIPELINE = {"StableDiffusionPipeline": "sd1", "StableDiffusionInpaintPipeline": "sd1",
                "StableDiffusionXLPipeline": "sdxl", "StableDiffusionXLImg2ImgPipeline": "sdxl",
                "StableDiffusionXLInpaintPipeline": "sdxl"}


def family_of_keys(keys: set[str], name: str) -> ModelFamily:
    """The family of a single file with these tensor names."""
    for family in FAMILIES:
        if family.recognises(keys):
            return family
    raise UnsupportedCheckpoint(f"{name}: not a checkpoint of a family this worker runs "
                                f"({', '.join(f.name for f in FAMILIES)})")


def family_of_pipeline(class_name: str, name: str, folder: Path | None = None) -> ModelFamily:
    """The family of a diffusers folder whose model_index.json names this pipeline class."""
    key = _BY_PIPELINE.get(class_name)
    if key is None:
        raise UnsupportedCheckpoint(f"{name}: a {class_name} folder; this worker runs "
                                    f"{', '.join(f.name for f in FAMILIES)} pipelines")
    if key == "sd1" and folder is not None and uses_open_clip(folder):  # SD 2.x runs SD 1.x's pipelines
        key = "sd2"
    return next(family for family in FAMILIES if family.key == key)


__all__ = ["FAMILIES", "ModelFamily", "TextEncoderSpec", "UnsupportedCheckpoint", "family_of_keys",
           "family_of_pipeline"]
