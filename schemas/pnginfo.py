"""/sdapi/v1/png-info: read the generation parameters back from an image."""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class PngInfoRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    image: str = Field(min_length=1, description="base64 PNG, JPEG or WebP, or a data: URI")


class PngInfoResponse(BaseModel):
    info: str  # the infotext, "" when the image has none
    items: dict[str, Any]  # the image's other text metadata
    parameters: dict[str, Any]  # the infotext parsed, as A1111 does
