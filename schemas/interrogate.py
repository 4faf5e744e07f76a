"""/sdapi/v1/interrogate: a caption of an image."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class InterrogateRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    image: str = Field(min_length=1, description="base64 PNG, JPEG or WebP, or a data: URI")
    model: Literal["clip", "deepdanbooru"] = Field("clip", description="'clip': a BLIP caption; 'deepdanbooru' is "
                                                                       "not offered")


class InterrogateResponse(BaseModel):
    caption: str
