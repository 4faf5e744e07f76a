"""What an engine operation returns: images with their infotexts, and A1111's `info` dict."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from schemas import Options


@dataclass
class GeneratedImage:
    image: Image.Image
    infotext: str


@dataclass
class Generation:
    images: list[GeneratedImage]
    info: dict[str, Any]  # A1111's `info` keys, in A1111's order
    options: Options  # the options it ran with (samples_format and jpeg_quality choose the encoding)
    extra_images: list[Image.Image] = field(default_factory=list)  # after the images, without infotext (ControlNet's
    # detected maps)


# the `info` keys that hold one entry per image
PER_IMAGE_KEYS = ("all_prompts", "all_negative_prompts", "all_seeds", "all_subseeds", "infotexts")


def joined(generations: list[Generation]) -> Generation:
    """Generations as one response, as A1111's scripts answer: the images and the per-image `info` lists in
    order; the other `info` keys, and the options, are the first generation's."""
    first = generations[0]
    info = {**first.info, **{key: [item for g in generations for item in g.info[key]] for key in PER_IMAGE_KEYS}}
    return Generation([image for g in generations for image in g.images], info, first.options,
                      [image for g in generations for image in g.extra_images])


def replaced(generation: Generation, image: Image.Image) -> Generation:
    """`image` as the generation's only image, described by its first image's infotext and `info` entries (A1111's
    SD upscale describes the image it assembles by its first tile)."""
    info = {**generation.info, **{key: generation.info[key][:1] for key in PER_IMAGE_KEYS}}
    return Generation([GeneratedImage(image, generation.images[0].infotext)], info, generation.options,
                      generation.extra_images)
