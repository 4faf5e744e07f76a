"""Image bytes in and out: decoding request images, encoding results with their metadata."""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass

from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo

from schemas import RequestError
from schemas.limits import MAX_INPUT_PIXELS

INFOTEXT_CHUNK = "parameters"
_DATA_URI_MARK = ";base64,"
INPUT_FORMATS = ("PNG", "JPEG", "WEBP")  # what a request's images may be: PIL reads far more (TIFF's LAB, ...)
_NOT_AN_IMAGE = "not a base64-encoded PNG, JPEG or WebP image"
# EXIF UserComment starts with an 8-byte character code (EXIF 2.3, 4.6.5)
_UNICODE = b"UNICODE\0"
_USER_COMMENT_CODES = {_UNICODE: "utf-16-be", b"ASCII\0\0\0": "ascii", b"\0" * 8: "utf-8"}


def decode_image(data: str, field: str) -> Image.Image:
    """A request image: raw base64 or a data URI, PNG / JPEG / WebP, EXIF orientation applied. Its size is
    read from the header and checked against MAX_INPUT_PIXELS before the pixels are decoded."""
    if data.startswith("data:") and _DATA_URI_MARK in data:
        data = data.split(_DATA_URI_MARK, 1)[1]
    try:
        image = Image.open(io.BytesIO(base64.b64decode(data, validate=True)), formats=INPUT_FORMATS)
    except Image.DecompressionBombError:  # PIL's own limit: the header declares a huge image
        raise RequestError(field, f"the image has more than {MAX_INPUT_PIXELS} pixels (WORKER_MAX_INPUT_PIXELS)") \
            from None
    except (binascii.Error, ValueError, UnidentifiedImageError, OSError):
        raise RequestError(field, _NOT_AN_IMAGE) from None
    _check_pixels(image.width, image.height, field)
    try:
        image.load()
        return ImageOps.exif_transpose(image, in_place=False) or image
    except (ValueError, OSError, SyntaxError):  # truncated or corrupt pixel data or EXIF
        raise RequestError(field, _NOT_AN_IMAGE) from None


def _check_pixels(width: int, height: int, field: str) -> None:
    if width * height > MAX_INPUT_PIXELS:
        raise RequestError(field, f"the image is {width}x{height}, over the limit of {MAX_INPUT_PIXELS} pixels "
                                  "(WORKER_MAX_INPUT_PIXELS)")


@dataclass(frozen=True)
class EncodedImage:
    data: bytes
    extension: str  # "png", "jpg", "webp"
    content_type: str


_FORMATS = {"png": ("PNG", "png", "image/png"), "jpg": ("JPEG", "jpg", "image/jpeg"),
            "jpeg": ("JPEG", "jpg", "image/jpeg"), "webp": ("WEBP", "webp", "image/webp")}


def encode_image(image: Image.Image, infotext: str | None, samples_format: str = "png",
                 quality: int = 80) -> EncodedImage:
    """An image in A1111's samples_format: PNG with the infotext in its `parameters` chunk; JPEG and
    WebP (at `quality`) with it in EXIF UserComment, as A1111 writes them (None: without one)."""
    pil_format, extension, content_type = _FORMATS[samples_format]
    buffer = io.BytesIO()
    if infotext is None:
        image.convert("RGB" if pil_format != "PNG" else image.mode).save(buffer, format=pil_format, quality=quality)
    elif pil_format == "PNG":
        metadata = PngInfo()
        metadata.add_text(INFOTEXT_CHUNK, infotext)
        image.save(buffer, format="PNG", pnginfo=metadata)
    else:
        exif = Image.Exif()
        exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.UserComment] = _UNICODE + infotext.encode("utf-16-be")
        image.convert("RGB").save(buffer, format=pil_format, quality=quality, exif=exif)
    return EncodedImage(buffer.getvalue(), extension, content_type)


def encode_png(image: Image.Image, infotext: str) -> bytes:
    """PNG bytes with the infotext in a `parameters` text chunk, as A1111 writes it."""
    return encode_image(image, infotext).data


def read_infotext(image: Image.Image) -> tuple[str | None, dict[str, str]]:
    """The infotext (PNG `parameters` chunk, else EXIF UserComment) and the image's other text items."""
    items = {k: v for k, v in image.info.items() if isinstance(v, str)}
    infotext = items.pop(INFOTEXT_CHUNK, None)
    if infotext is None:
        comment = image.getexif().get_ifd(ExifTags.IFD.Exif).get(ExifTags.Base.UserComment)
        infotext = _decode_user_comment(comment) if comment else None
    return infotext, items


def _decode_user_comment(comment: bytes | str) -> str:
    if isinstance(comment, str):
        return comment
    encoding = _USER_COMMENT_CODES.get(comment[:8])
    if encoding is None:
        return comment.decode("utf-8", errors="replace")
    return comment[8:].decode(encoding, errors="replace").rstrip("\0")
