"""Response bodies, in A1111's shapes."""

from typing import Any

from pydantic import BaseModel


class ImageResponse(BaseModel):
    """txt2img / img2img: images as base64 (or URLs), the echoed request, `info` as a JSON string."""

    images: list[str]
    parameters: dict[str, Any]
    info: str
