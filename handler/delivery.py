"""Output delivery: how generated images reach the caller (base64 in the response body)."""

from __future__ import annotations

import base64

from engine.generation import Generation
from engine.images import encode_png


def deliver_images(generation: Generation) -> list[str]:
    """Each image as plain base64 PNG (no data: prefix), its infotext in the `parameters` chunk."""
    return [base64.b64encode(encode_png(g.image, g.infotext)).decode("ascii") for g in generation.images]
