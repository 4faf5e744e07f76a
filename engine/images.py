"""Image bytes in and out: decoding request images, encoding results with their metadata."""

from __future__ import annotations

import base64
import binascii
import io

from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo

from schemas import RequestError

INFOTEXT_CHUNK = "parameters"
_DATA_URI_MARK = ";base64,"
# EXIF UserComment starts with an 8-byte character code (EXIF 2.3, 4.6.5)
_USER_COMMENT_CODES = {b"UNICODE\0": "utf-16-be", b"ASCII\0\0\0": "ascii", b"\0" * 8: "utf-8"}


def decode_image(data: str, field: str) -> Image.Image:
    """A request image: raw base64 or a data URI, PNG / JPEG / WebP, EXIF orientation applied."""
    if data.startswith("data:") and _DATA_URI_MARK in data:
        data = data.split(_DATA_URI_MARK, 1)[1]
    try:
        image = Image.open(io.BytesIO(base64.b64decode(data, validate=True)))
        image.load()
    except (binascii.Error, ValueError, UnidentifiedImageError, OSError):
        raise RequestError(field, "not a base64-encoded PNG, JPEG or WebP image") from None
    return ImageOps.exif_transpose(image, in_place=False) or image


def encode_png(image: Image.Image, infotext: str) -> bytes:
    """PNG bytes with the infotext in a `parameters` text chunk, as A1111 writes it."""
    metadata = PngInfo()
    metadata.add_text(INFOTEXT_CHUNK, infotext)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=metadata)
    return buffer.getvalue()


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
