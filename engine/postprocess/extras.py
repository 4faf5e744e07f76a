"""A1111's extras: upscale images with one upscaler, or a blend of two, as its Upscale postprocessing does;
then restore faces with GFPGAN and then CodeFormer, each blended over the image at its visibility.

Results keep the input's text chunks (its `parameters` infotext among them) and gain a `postprocessing`
chunk saying what was done ("Postprocess upscale by: 2, Postprocess upscaler: R-ESRGAN 4x+");
`html_info` is that text as A1111's HTML paragraph.
"""

from __future__ import annotations

import html
import io
import math
from dataclasses import dataclass
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from schemas import ExtrasRequest, Options, RequestError
from schemas.limits import MAX_EXTRAS_SIDE

from .face_restoration import FaceRestorer, FaceRestorers
from ..imaging.images import INFOTEXT_CHUNK, EncodedImage, encode_image, read_infotext
from ..imaging.infotext import format_value
from .upscalers import PixelUpscaler, Upscalers

POSTPROCESSING_CHUNK = "postprocessing"
NO_UPSCALER = "None"  # as upscaler_1: no upscaling; as upscaler_2: no blend
_ROUNDING = 1e-6  # w * (W / w) may come out a hair under W


@dataclass(frozen=True)
class Extras:
    images: list[EncodedImage]
    html_info: str


@dataclass(frozen=True)
class _Plan:
    """One image's upscale: to `size`, then centre-cropped to `crop` if set; `info` in A1111's order."""

    size: tuple[int, int]
    crop: tuple[int, int] | None
    info: dict[str, Any]


def extras(upscalers: Upscalers, faces: FaceRestorers, request: ExtrasRequest, images: list[Image.Image],
           options: Options) -> Extras:
    """Every size is checked and every upscaler and restorer loaded before any image is processed."""
    first = second = None
    if request.upscaler_1 != NO_UPSCALER:  # as in A1111, upscaler_2 counts only with an upscaler_1
        first = upscalers.find(request.upscaler_1, "upscaler_1")
        if request.upscaler_2 != NO_UPSCALER:
            second = upscalers.find(request.upscaler_2, "upscaler_2")
    restorers = _restorers(faces, request)
    plans = [_plan(image, request) if first else None for image in images]
    encoded, text = [], ""
    for image, plan in zip(images, plans):
        result, info = image.convert("RGB"), {}
        if plan:
            result, info = _upscaled(result, request, first, second, plan)
        for restorer, visibility, restorer_info in restorers:
            restored = restorer(result)
            result = restored if visibility == 1 else Image.blend(result, restored, visibility)
            info.update(restorer_info)
        text = ", ".join(f"{key}: {format_value(value)}" for key, value in info.items())
        encoded.append(_encode(result, image, text, options))
    return Extras(encoded, f"<p>{html.escape(text)}</p>")  # the last image's text, as A1111


def _upscaled(image: Image.Image, request: ExtrasRequest, first: PixelUpscaler, second: PixelUpscaler | None,
              plan: _Plan) -> tuple[Image.Image, dict[str, Any]]:
    """upscaler_1's result, with upscaler_2's blended over it at extras_upscaler_2_visibility; the info."""
    result, info = _upscale(image, first, plan), {**plan.info, "Postprocess upscaler": request.upscaler_1}
    if second and request.extras_upscaler_2_visibility > 0:
        result = Image.blend(result, _upscale(image, second, plan), request.extras_upscaler_2_visibility)
        info["Postprocess upscaler 2"] = request.upscaler_2
    return result, info


def _restorers(faces: FaceRestorers, request: ExtrasRequest) -> list[tuple[FaceRestorer, float, dict[str, Any]]]:
    """(restorer, visibility, its postprocessing keys) of each restorer the request uses, in A1111's order."""
    restorers = []
    if request.gfpgan_visibility > 0:
        restorers.append((faces.find("GFPGAN", "gfpgan_visibility"), request.gfpgan_visibility,
                          {"GFPGAN visibility": round(request.gfpgan_visibility, 3)}))
    if request.codeformer_visibility > 0:
        restorers.append((faces.find("CodeFormer", "codeformer_visibility").with_weight(request.codeformer_weight),
                          request.codeformer_visibility,
                          {"CodeFormer visibility": round(request.codeformer_visibility, 3),
                           "CodeFormer weight": round(request.codeformer_weight, 3)}))
    return restorers


def _plan(image: Image.Image, request: ExtrasRequest) -> _Plan:
    """A1111's sizes: scaled by upscaling_resize (resize_mode 0) or by the larger of the ratios to
    upscaling_resize_w x _h (1), floored to multiples of 8; with upscaling_crop, the image covers the
    requested size and is centre-cropped to it exactly."""
    if request.resize_mode == 0:
        scale, field, crop = request.upscaling_resize, "upscaling_resize", None
        info: dict[str, Any] = {"Postprocess upscale by": scale}
    else:
        target = request.upscaling_resize_w, request.upscaling_resize_h
        scale, field = max(target[0] / image.width, target[1] / image.height), "upscaling_resize_w"
        crop = target if request.upscaling_crop else None
        info = {"Postprocess upscale to": "{}x{}".format(*target)}
    exact = image.width * scale, image.height * scale
    if crop:
        size = tuple(max(side, math.ceil(x - _ROUNDING)) for side, x in zip(crop, exact))
        info["Postprocess crop to"] = "{}x{}".format(*crop)
    else:
        size = tuple(int(x + _ROUNDING) // 8 * 8 for x in exact)
    if min(size) < 8 or max(size) > MAX_EXTRAS_SIDE:
        raise RequestError(field, f"an image of {image.width}x{image.height} would be upscaled to "
                                  f"{size[0]}x{size[1]}; each side must be 8 to {MAX_EXTRAS_SIDE}")
    return _Plan(size, crop, info)


def _upscale(image: Image.Image, upscale: PixelUpscaler, plan: _Plan) -> Image.Image:
    image = upscale(image, *plan.size)
    if plan.crop is None:
        return image
    width, height = plan.crop
    left, top = image.width // 2 - width // 2, image.height // 2 - height // 2
    return image.crop((left, top, left + width, top + height))


def _encode(image: Image.Image, source: Image.Image, text: str, options: Options) -> EncodedImage:
    """In the options' samples_format: a PNG keeps the source's text chunks and gains `postprocessing`;
    JPEG and WebP carry only the source's infotext, in EXIF, as A1111's API writes them."""
    infotext, items = read_infotext(source)
    if options.samples_format != "png":
        return encode_image(image, infotext or "", options.samples_format, options.jpeg_quality)
    chunks = {**items, **({INFOTEXT_CHUNK: infotext} if infotext else {}), POSTPROCESSING_CHUNK: text}
    metadata = PngInfo()
    for key, value in chunks.items():
        metadata.add_text(key, value)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=metadata)
    return EncodedImage(buffer.getvalue(), "png", "image/png")
