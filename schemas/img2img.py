"""The /sdapi/v1/img2img request: the shared generation fields plus init images and inpainting."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from . import limits
from .generation import GenerationRequest
from .scripts import IMG2IMG


class Img2ImgRequest(GenerationRequest):
    script_mode = IMG2IMG
    null_refused = GenerationRequest.null_refused | {"init_images", "denoising_strength", "include_init_images"}
    infotext_fields = {**GenerationRequest.infotext_fields, "Image CFG scale": "image_cfg_scale",
                       "Mask blur": "mask_blur"}

    init_images: list[str] = Field(min_length=1, max_length=limits.MAX_IMAGES,
                                   description="base64 images or data: URIs")
    resize_mode: int = Field(0, ge=0, le=3, description="0 just resize, 1 crop and resize, 2 resize and fill, "
                                                         "3 just resize (latent upscale)")
    denoising_strength: float = Field(0.75, ge=0, le=1)
    image_cfg_scale: float | None = Field(None, description="instruct-pix2pix models only; other models ignore "
                                                             "it, as in A1111")
    mask: str | None = None
    mask_blur_x: int = Field(4, ge=0, le=64)
    mask_blur_y: int = Field(4, ge=0, le=64)
    mask_blur: int | None = Field(None, ge=0, le=64, description="sets mask_blur_x and mask_blur_y")
    mask_round: bool = True
    inpainting_fill: int = Field(0, ge=0, le=3, description="0 fill, 1 original, 2 latent noise, 3 latent nothing")
    inpaint_full_res: bool = Field(True, description='"Only masked": inpaint the masked region at full size')
    inpaint_full_res_padding: int = Field(0, ge=0, le=256)
    inpainting_mask_invert: int = Field(0, ge=0, le=1)
    initial_noise_multiplier: float | None = Field(None, ge=0, le=2)
    latent_mask: str | None = Field(None, description="with a mask: the mask that blends latents each step, in "
                                                       "place of the (blurred) mask")
    include_init_images: bool = False

    @model_validator(mode="after")
    def _mask_blur_sets_both(self) -> Img2ImgRequest:
        if self.mask_blur is not None:
            self.mask_blur_x = self.mask_blur_y = self.mask_blur
        return self

    def echo(self) -> dict[str, Any]:
        """The `parameters` A1111 echoes: init images and mask only with include_init_images."""
        echoed = self.model_dump(mode="json")
        if not self.include_init_images:
            echoed["init_images"] = echoed["mask"] = None
        return echoed
