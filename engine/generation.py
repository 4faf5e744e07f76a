"""What an engine operation returns: images with their infotexts, and A1111's `info` dict."""

from __future__ import annotations

from dataclasses import dataclass
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
