"""Pydantic request and response models of the A1111 API. Pure data: never imports torch."""

from .errors import RequestError
from .responses import ImageResponse
from .txt2img import Txt2ImgRequest

__all__ = ["ImageResponse", "RequestError", "Txt2ImgRequest"]
