"""Pydantic request and response models of the A1111 API. Pure data: never imports torch."""

from .errors import RequestError
from .pnginfo import PngInfoRequest, PngInfoResponse
from .responses import ImageResponse
from .txt2img import Txt2ImgRequest

__all__ = ["ImageResponse", "PngInfoRequest", "PngInfoResponse", "RequestError", "Txt2ImgRequest"]
