"""Encoding generated images with their metadata."""

from __future__ import annotations

import io

from PIL import Image
from PIL.PngImagePlugin import PngInfo

INFOTEXT_CHUNK = "parameters"


def encode_png(image: Image.Image, infotext: str) -> bytes:
    """PNG bytes with the infotext in a `parameters` text chunk, as A1111 writes it."""
    metadata = PngInfo()
    metadata.add_text(INFOTEXT_CHUNK, infotext)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=metadata)
    return buffer.getvalue()
