"""Upscalers by A1111 name: latent-space modes (hires fix) and pixel-space upscalers.

Pixel-space upscalers here are the built-in non-neural ones; neural upscalers join this table when
their issue lands.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from PIL import Image

from schemas import RequestError

# A1111 latent upscale mode -> (torch interpolation mode, antialias)
LATENT_MODES: dict[str, tuple[str, bool]] = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}

PixelUpscaler = Callable[[Image.Image, int, int], Image.Image]

def _lanczos(image: Image.Image, width: int, height: int) -> Image.Image:
    return image.resize((width, height), Image.Resampling.LANCZOS)


def _nearest(image: Image.Image, width: int, height: int) -> Image.Image:
    return image.resize((width, height), Image.Resampling.NEAREST)


# "None" is A1111's plain resize, which is Lanczos
PIXEL_UPSCALERS: dict[str, PixelUpscaler] = {"None": _lanczos, "Lanczos": _lanczos, "Nearest": _nearest}


def upscale_latents(latents: torch.Tensor, mode: str, height: int, width: int) -> torch.Tensor:
    interpolation, antialias = LATENT_MODES[mode]
    return F.interpolate(latents, size=(height, width), mode=interpolation, antialias=antialias)


def pixel_upscaler(name: str, field: str) -> PixelUpscaler:
    if name not in PIXEL_UPSCALERS:
        valid = ", ".join([*LATENT_MODES, *PIXEL_UPSCALERS])
        raise RequestError(field, f"unknown upscaler {name!r}; available: {valid}")
    return PIXEL_UPSCALERS[name]
