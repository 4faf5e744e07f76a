"""Live previews: a sampling step's latents seen as an image without the VAE, by a fixed linear map of the latent
channels to RGB (the model family's `preview_coefficients`), at the latents' own size (1/8 of the image's)."""

from __future__ import annotations

import torch
from PIL import Image


def approximate_rgb(latents: torch.Tensor, coefficients: tuple[tuple[float, float, float], ...]) -> Image.Image:
    """One image's latents (channels, height, width), as an RGB image."""
    with torch.inference_mode():
        mapping = torch.tensor(coefficients, dtype=torch.float32)
        rgb = torch.einsum("chw,cr->hwr", latents.detach().float().cpu(), mapping)
        pixels = ((rgb + 1) * 127.5).clamp(0, 255).round().to(torch.uint8)
    return Image.fromarray(pixels.numpy(), "RGB")
