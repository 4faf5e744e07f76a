"""SD 1.x: one CLIP ViT-L text encoder (its output, or with CLIP skip an earlier layer through the final
norm), a 768-wide context, no pooled embedding, nothing else per step. Inpainting checkpoints have a
9-channel UNet."""

from __future__ import annotations

from .base import ModelFamily, TextEncoderSpec, UnsupportedCheckpoint
from .ldm_format import TEXT_ENCODER_PREFIX, UNET_PREFIX

CONV_IN = UNET_PREFIX + "input_blocks.0.0.weight"
_BY_WIDTH = {320: "sd15", 32: "tiny-sd15"}  # conv_in's output width: the member whose config we ship
VARIANT_BY_CHANNELS = {4: "", 9: "-inpainting"}  # conv_in's input channels: latents (+ mask + masked image)
CLIP_L = TextEncoderSpec("text_encoder", None, penultimate=False, pad_with_zero=False)
# the SD 1.x/2.x VAE's latents -> RGB, as A1111's "Approx cheap" previews map them
PREVIEW_COEFFICIENTS = ((0.298, 0.207, 0.208), (0.187, 0.286, 0.173), (-0.158, 0.189, 0.264), (-0.184, -0.271, -0.473))


class SD1(ModelFamily):
    name = "SD 1.x"
    key = "sd1"
    preview_coefficients = PREVIEW_COEFFICIENTS

    def recognises(self, keys: set[str]) -> bool:
        return any(key.startswith(TEXT_ENCODER_PREFIX) for key in keys)

    def architecture(self, shapes: dict[str, list[int]], name: str) -> str:
        width, channels = shapes[CONV_IN][:2]
        if width not in _BY_WIDTH or channels not in VARIANT_BY_CHANNELS:
            raise UnsupportedCheckpoint(f"{name}: unknown SD 1.x variant (UNet width {width}, {channels} input "
                                        "channels)")
        return _BY_WIDTH[width] + VARIANT_BY_CHANNELS[channels]

    def text_encoders(self, pipe) -> tuple[TextEncoderSpec, ...]:
        return (CLIP_L,)
