"""/sdapi/v1/png-info: infotext read back from PNG chunks and JPEG/WebP EXIF, parsed as A1111 does."""

import base64
import io

import pytest
from PIL import ExifTags, Image

from engine.imaging.images import encode_png
from engine.imaging.infotext import build_infotext
from schemas.infotext import parse_infotext
from handler.router import route
from schemas import RequestError

INFOTEXT = build_infotext(
    "a cat, (dog:1.2)\nsecond line",
    "blurry\nugly",
    {"Steps": 20, "Sampler": "DPM++ 2M", "Schedule type": "Karras", "CFG scale": 7.5, "Seed": 1,
     "Size": "512x768", "Model": "my: model", "Version": "v1"},
)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _exif_image(fmt: str, comment: bytes) -> bytes:
    exif = Image.Exif()
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.UserComment] = comment
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, fmt, exif=exif)
    return buffer.getvalue()


def test_parse_follows_a1111_rules():
    parsed = parse_infotext(INFOTEXT)
    assert parsed == {
        "Prompt": "a cat, (dog:1.2)\nsecond line",
        "Negative prompt": "blurry\nugly",
        "Steps": "20", "Sampler": "DPM++ 2M", "Schedule type": "Karras", "CFG scale": "7.5", "Seed": "1",
        "Size-1": "512", "Size-2": "768", "Model": "my: model", "Version": "v1",
    }


def test_last_line_with_fewer_than_three_pairs_is_prompt():
    assert parse_infotext("a prompt\nStyle: x, Light: y") == {
        "Prompt": "a prompt\nStyle: x, Light: y", "Negative prompt": ""}


@pytest.mark.parametrize("prefix", ["", "data:image/png;base64,"])
def test_png_round_trip(prefix):
    png = encode_png(Image.new("RGB", (8, 8)), INFOTEXT)
    result = route(None, "POST", "/sdapi/v1/png-info", {"image": prefix + _b64(png)})
    assert result["info"] == INFOTEXT
    assert result["parameters"] == parse_infotext(INFOTEXT)
    assert result["items"] == {}


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_exif_user_comment(fmt):
    image = _exif_image(fmt, b"UNICODE\0" + INFOTEXT.encode("utf-16-be"))  # as A1111 (piexif) writes it
    result = route(None, "POST", "png-info", {"image": _b64(image)})
    assert result["info"] == INFOTEXT
    assert result["parameters"]["Size-2"] == "768"


def test_other_png_text_items_are_returned():
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("postprocessing", "Postprocess upscale by: 2")
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "PNG", pnginfo=info)
    result = route(None, "POST", "png-info", {"image": _b64(buffer.getvalue())})
    assert result == {"info": "", "items": {"postprocessing": "Postprocess upscale by: 2"}, "parameters": {}}


def test_round_trip_with_generated_image(engine):
    from schemas import Txt2ImgRequest

    request = Txt2ImgRequest(prompt="a cat", negative_prompt="dog", steps=2, width=64, height=64, seed=9,
                             sampler_name="DPM++ 2M Karras")
    output = route(engine, "POST", "txt2img", request.model_dump())
    parsed = route(engine, "POST", "png-info", {"image": output["images"][0]})["parameters"]
    assert parsed["Prompt"] == "a cat" and parsed["Negative prompt"] == "dog"
    assert (parsed["Steps"], parsed["Sampler"], parsed["Schedule type"], parsed["Seed"]) == \
        ("2", "DPM++ 2M", "Karras", "9")
    assert (parsed["Size-1"], parsed["Size-2"]) == ("64", "64")
    assert parsed["Model hash"] == engine.model.checkpoint.short_hash


@pytest.mark.parametrize("payload", [{"image": "not base64!"}, {"image": _b64(b"plain text, not an image")}])
def test_bad_image_is_a_request_error_naming_the_field(payload):
    with pytest.raises(RequestError, match="^image: "):
        route(None, "POST", "png-info", payload)
