"""Pydantic request and response models of the A1111 API. Pure data: never imports torch."""

from .errors import RequestError
from .extras import (ExtrasBatchImagesRequest, ExtrasBatchImagesResponse, ExtrasRequest, ExtrasSingleImageRequest,
                     ExtrasSingleImageResponse)
from .generation import GenerationRequest
from .img2img import Img2ImgRequest
from .interrogate import InterrogateRequest, InterrogateResponse
from .options import Options
from .pnginfo import PngInfoRequest, PngInfoResponse
from .responses import ImageResponse
from .txt2img import Txt2ImgRequest

__all__ = ["ExtrasBatchImagesRequest", "ExtrasBatchImagesResponse", "ExtrasRequest", "ExtrasSingleImageRequest",
           "ExtrasSingleImageResponse", "GenerationRequest", "ImageResponse", "Img2ImgRequest", "InterrogateRequest",
           "InterrogateResponse", "Options", "PngInfoRequest", "PngInfoResponse", "RequestError", "Txt2ImgRequest"]
