"""SDXL: base (CLIP ViT-L and OpenCLIP ViT-bigG, penultimate hidden states concatenated into a 2048-wide
context; bigG's pooled embedding and the size conditioning per step), refiner (bigG alone, with an
aesthetic score in place of the target size) and inpainting (a 9-channel UNet), as A1111 runs them.
"""

from __future__ import annotations

import torch

from .base import ModelFamily, TextEncoderSpec, UnsupportedCheckpoint
from .sd1 import CONV_IN, VARIANT_BY_CHANNELS
from .sgm_format import OPEN_CLIP_PREFIX, REFINER_OPEN_CLIP_PREFIX

_BY_WIDTH = {320: "sdxl", 32: "tiny-sdxl"}  # conv_in's output width, base and inpainting
_REFINER_BY_WIDTH = {384: "sdxl-refiner", 32: "tiny-sdxl-refiner"}
CLIP_L = TextEncoderSpec("text_encoder", "clip_l", penultimate=True, pad_with_zero=False,
                         clip_skip_option="sdxl_clip_l_skip")
CLIP_G = TextEncoderSpec("text_encoder_2", "clip_g", penultimate=True, pad_with_zero=True, pooled=True,
                         clip_skip_option=None)
# the SDXL VAE's latents -> RGB, as A1111's "Approx cheap" previews map them
PREVIEW_COEFFICIENTS = ((0.3448, 0.4168, 0.4395), (-0.1953, -0.0290, 0.0250), (0.1074, 0.0886, -0.0163),
                        (-0.3730, -0.2499, -0.2088))


class SDXL(ModelFamily):
    name = "SDXL"
    key = "sdxl"
    zero_empty_negative = True
    vae_upcasts = True
    preview_coefficients = PREVIEW_COEFFICIENTS

    def recognises(self, keys: set[str]) -> bool:
        return any(key.startswith("conditioner.embedders.") for key in keys)

    def architecture(self, shapes: dict[str, list[int]], name: str) -> str:
        width, channels = shapes[CONV_IN][:2]
        refiner = not any(key.startswith(OPEN_CLIP_PREFIX) for key in shapes) and \
            any(key.startswith(REFINER_OPEN_CLIP_PREFIX) for key in shapes)
        if refiner and width in _REFINER_BY_WIDTH and channels == 4:
            return _REFINER_BY_WIDTH[width]
        if not refiner and width in _BY_WIDTH and channels in VARIANT_BY_CHANNELS:
            return _BY_WIDTH[width] + VARIANT_BY_CHANNELS[channels]
        raise UnsupportedCheckpoint(f"{name}: unknown SDXL variant (UNet width {width}, {channels} input channels"
                                    f"{', refiner' if refiner else ''})")

    def text_encoders(self, pipe) -> tuple[TextEncoderSpec, ...]:
        return (CLIP_L, CLIP_G) if getattr(pipe, "text_encoder", None) is not None else (CLIP_G,)

    def denoiser_inputs(self, unet, pooled, params, negative):
        """SDXL's `text_embeds` (the pooled embedding) and `time_ids`: original size, crop, then the target size
        (base), or the aesthetic score (refiner, whose UNet takes one id fewer), as A1111 computes them: the
        original and target sizes are the pass's."""
        height, width = params.height, params.width
        if _time_id_count(unet, pooled) == 5:
            score = params.aesthetic_score_negative if negative else params.aesthetic_score
            ids = [height, width, params.crop_top, params.crop_left, score]
        else:
            ids = [height, width, params.crop_top, params.crop_left, height, width]
        return {"text_embeds": pooled, "time_ids": torch.tensor([ids], dtype=pooled.dtype, device=pooled.device)}


def _time_id_count(unet, pooled: torch.Tensor) -> int:
    config = unet.config
    return (config.projection_class_embeddings_input_dim - pooled.shape[-1]) // config.addition_time_embed_dim
