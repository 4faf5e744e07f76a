"""/sdapi/v1/extra-single-image and extra-batch-images: A1111's "Extras" (upscaling), A1111's fields."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from . import limits


class ExtrasRequest(BaseModel):
    """The fields both extras endpoints share, with A1111's defaults. Unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    resize_mode: Literal[0, 1] = Field(0, description="0 scale by upscaling_resize; 1 to upscaling_resize_w x "
                                                      "upscaling_resize_h (the larger ratio)")
    show_extras_results: bool = Field(True, description="accepted; these endpoints always return their results, "
                                                       "as in A1111")
    gfpgan_visibility: float = Field(0, ge=0, le=1, description="GFPGAN's restored faces blended over the image")
    codeformer_visibility: float = Field(0, ge=0, le=1, description="the same with CodeFormer, after GFPGAN")
    codeformer_weight: float = Field(0, ge=0, le=1, description="CodeFormer's weight: 0 the most effect, 1 the least")
    upscaling_resize: float = Field(2, gt=0, le=limits.MAX_UPSCALE)
    upscaling_resize_w: int = Field(512, ge=1, le=limits.MAX_EXTRAS_SIDE)
    upscaling_resize_h: int = Field(512, ge=1, le=limits.MAX_EXTRAS_SIDE)
    upscaling_crop: bool = Field(True, description="resize_mode 1: centre-crop to exactly the requested size")
    upscaler_1: str = Field("None", description='an upscaler name; "None": no upscaling')
    upscaler_2: str = Field("None", description="blended over upscaler_1's result")
    extras_upscaler_2_visibility: float = Field(0, ge=0, le=1, description="upscaler_2's weight in the blend")
    upscale_first: bool = Field(False, description="accepted and ignored, as in A1111")


class ExtrasSingleImageRequest(ExtrasRequest):
    image: str = Field(min_length=1, description="base64 PNG, JPEG or WebP, or a data: URI")


class FileData(BaseModel):
    data: str = Field(min_length=1, description="base64 PNG, JPEG or WebP, or a data: URI")
    name: str = ""


class ExtrasBatchImagesRequest(ExtrasRequest):
    imageList: list[FileData] = Field(min_length=1, max_length=limits.MAX_IMAGES)


class ExtrasSingleImageResponse(BaseModel):
    image: str
    html_info: str


class ExtrasBatchImagesResponse(BaseModel):
    images: list[str]
    html_info: str
