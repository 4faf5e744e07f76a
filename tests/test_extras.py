"""/sdapi/v1/extra-single-image and extra-batch-images: A1111's sizes, the blend of two upscalers, neural
upscalers, metadata chunks, and clear errors."""

import base64
import io

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from handler.router import route
from handler.worker import make_handler

INFOTEXT = "a cat\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 32x32, Model: tiny"
COMPACT_4X = "R-ESRGAN General 4xV3"


def png_b64(width: int = 32, height: int = 32, text: dict[str, str] | None = None, mode: str = "RGB") -> str:
    rng = np.random.default_rng(width * 1000 + height)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 4), dtype=np.uint8), "RGBA").convert(mode)
    metadata = PngInfo()
    for key, value in (text or {}).items():
        metadata.add_text(key, value)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=metadata)
    return base64.b64encode(buffer.getvalue()).decode()


def opened(data: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(data)))
    image.load()
    return image


def single(engine, **payload) -> tuple[Image.Image, str]:
    output = route(engine, "POST", "extra-single-image", {"image": png_b64(), **payload})
    assert set(output) == {"image", "html_info"}
    return opened(output["image"]), output["html_info"]


def single_b64(engine) -> str:
    return route(engine, "POST", "extra-single-image", {"image": png_b64(), "upscaler_1": "Lanczos"})["image"]


def test_scale_by(upscaler_engine):
    image, html_info = single(upscaler_engine, upscaler_1="Lanczos", upscaling_resize=2)
    assert image.size == (64, 64)
    assert html_info == "<p>Postprocess upscale by: 2, Postprocess upscaler: Lanczos</p>"


def test_scale_by_floors_to_multiples_of_8_as_a1111(upscaler_engine):
    image, html_info = single(upscaler_engine, image=png_b64(30, 30), upscaler_1="Nearest", upscaling_resize=1.5)
    assert image.size == (40, 40)  # 45 floored
    assert html_info == "<p>Postprocess upscale by: 1.5, Postprocess upscaler: Nearest</p>"


def test_scale_to_with_crop_gives_exactly_the_size(upscaler_engine):
    image, html_info = single(upscaler_engine, image=png_b64(40, 24), upscaler_1="Lanczos", resize_mode=1,
                              upscaling_resize_w=64, upscaling_resize_h=64)
    assert image.size == (64, 64)  # covered by the larger ratio (64/24), then centre-cropped
    assert html_info == ("<p>Postprocess upscale to: 64x64, Postprocess crop to: 64x64, "
                         "Postprocess upscaler: Lanczos</p>")


def test_scale_to_without_crop_keeps_the_aspect_ratio(upscaler_engine):
    image, html_info = single(upscaler_engine, image=png_b64(40, 24), upscaler_1="Lanczos", resize_mode=1,
                              upscaling_resize_w=64, upscaling_resize_h=64, upscaling_crop=False)
    assert image.size == (104, 64)  # 40 * 64/24 = 106.7, floored to a multiple of 8
    assert html_info == "<p>Postprocess upscale to: 64x64, Postprocess upscaler: Lanczos</p>"


def test_crop_is_the_centre_of_the_upscaled_image(upscaler_engine):
    source = png_b64(40, 24)
    cropped, _ = single(upscaler_engine, image=source, upscaler_1="Nearest", resize_mode=1,
                        upscaling_resize_w=64, upscaling_resize_h=64)
    whole = opened(source).convert("RGB").resize((107, 64), Image.NEAREST)
    assert np.array_equal(np.asarray(cropped), np.asarray(whole.crop((21, 0, 85, 64))))


def test_upscaler_2_is_blended_over_upscaler_1(upscaler_engine):
    blended, html_info = single(upscaler_engine, upscaler_1="Lanczos", upscaler_2="Nearest",
                                extras_upscaler_2_visibility=0.25)
    source = opened(png_b64()).convert("RGB")
    lanczos, nearest = source.resize((64, 64), Image.LANCZOS), source.resize((64, 64), Image.NEAREST)
    assert np.array_equal(np.asarray(blended), np.asarray(Image.blend(lanczos, nearest, 0.25)))
    assert html_info.endswith("Postprocess upscaler: Lanczos, Postprocess upscaler 2: Nearest</p>")
    alone, html_info = single(upscaler_engine, upscaler_1="Lanczos", upscaler_2="Nearest")  # visibility 0
    assert np.array_equal(np.asarray(alone), np.asarray(lanczos)) and "upscaler 2" not in html_info


def test_a_neural_upscaler_runs_the_network(upscaler_engine):
    neural, html_info = single(upscaler_engine, upscaler_1=COMPACT_4X)
    again, _ = single(upscaler_engine, upscaler_1=COMPACT_4X)
    lanczos, _ = single(upscaler_engine, upscaler_1="Lanczos")
    assert neural.size == (64, 64) and np.array_equal(np.asarray(neural), np.asarray(again))
    assert np.abs(np.asarray(neural).astype(int) - np.asarray(lanczos).astype(int)).mean() > 5
    assert html_info == f"<p>Postprocess upscale by: 2, Postprocess upscaler: {COMPACT_4X}</p>"


def test_output_keeps_the_input_chunks_and_gains_postprocessing(upscaler_engine):
    image, html_info = single(upscaler_engine, image=png_b64(text={"parameters": INFOTEXT, "Software": "x"}),
                              upscaler_1="Lanczos")
    assert image.format == "PNG" and image.mode == "RGB"
    assert image.text == {"Software": "x", "parameters": INFOTEXT,
                          "postprocessing": "Postprocess upscale by: 2, Postprocess upscaler: Lanczos"}
    info = route(upscaler_engine, "POST", "png-info", {"image": single_b64(upscaler_engine)})
    assert info["items"] == {"postprocessing": "Postprocess upscale by: 2, Postprocess upscaler: Lanczos"}


def test_upscaler_1_none_leaves_the_image_as_it_is(upscaler_engine):
    image, html_info = single(upscaler_engine, image=png_b64(mode="RGBA"), upscaler_2="Lanczos",
                              extras_upscaler_2_visibility=1)
    assert image.size == (32, 32) and image.mode == "RGB"  # A1111 works in RGB
    assert np.array_equal(np.asarray(image), np.asarray(opened(png_b64(mode="RGBA")).convert("RGB")))
    assert html_info == "<p></p>" and image.text == {"postprocessing": ""}


def test_batch_images(upscaler_engine):
    payload = {"imageList": [{"data": png_b64(32, 32), "name": "a.png"}, {"data": png_b64(24, 16), "name": "b"}],
               "upscaler_1": COMPACT_4X, "upscaling_resize": 4}
    output = route(upscaler_engine, "POST", "extra-batch-images", payload)
    assert set(output) == {"images", "html_info"}
    assert [opened(data).size for data in output["images"]] == [(128, 128), (96, 64)]
    assert output["html_info"] == f"<p>Postprocess upscale by: 4, Postprocess upscaler: {COMPACT_4X}</p>"


def test_the_envelope_reaches_both_endpoints(upscaler_engine):
    handle = make_handler(upscaler_engine)
    single_output = handle({"input": {"api": {"method": "POST", "endpoint": "/sdapi/v1/extra-single-image"},
                                      "payload": {"image": png_b64(), "upscaler_1": "Lanczos"}}})
    assert opened(single_output["image"]).size == (64, 64)
    batch = handle({"input": {"api": {"method": "POST", "endpoint": "extra-batch-images"},
                              "payload": {"imageList": [{"data": png_b64(), "name": "a"}], "upscaler_1": "Lanczos"}}})
    assert [opened(data).size for data in batch["images"]] == [(64, 64)]



def test_the_bare_body_reaches_both_endpoints_by_its_keys(upscaler_engine):
    handle = make_handler(upscaler_engine)
    single_payload = {"image": png_b64(), "upscaler_1": "Nearest", "upscaling_resize": 3}
    bare = handle({"input": single_payload})
    assert set(bare) == {"image", "html_info"} and opened(bare["image"]).size == (96, 96)
    assert bare == handle({"input": {"api": {"endpoint": "extra-single-image"}, "payload": single_payload}})
    batch_payload = {"imageList": [{"data": png_b64(), "name": "a"}, {"data": png_b64(16, 8), "name": "b"}],
                     "upscaler_1": "Nearest"}
    batch = handle({"input": batch_payload})
    assert set(batch) == {"images", "html_info"} and [opened(d).size for d in batch["images"]] == [(64, 64), (32, 16)]
    assert batch == handle({"input": {"api": {"endpoint": "extra-batch-images"}, "payload": batch_payload}})


@pytest.mark.parametrize("key", ["image", "imageList"])
def test_a_bare_body_with_an_extras_key_and_a_prompt_is_refused(upscaler_engine, key):
    output = make_handler(upscaler_engine)({"input": {key: png_b64(), "prompt": "a cat"}})
    assert list(output) == ["error"] and output["error"].startswith(f"input: a body with '{key}' is /sdapi/v1/extra-")
    assert "'prompt'" in output["error"]

@pytest.mark.parametrize("payload, message", [
    ({"upscaler_1": "Nope"}, "upscaler_1: unknown upscaler 'Nope'; available: None, Lanczos, Nearest, 2x-tiny, "),
    ({"upscaler_1": "Lanczos", "upscaler_2": "Nope"}, "upscaler_2: unknown upscaler 'Nope'; available: None, "),
    ({"upscaler_1": "broken"}, "upscaler_1: upscaler 'broken' (broken.pth) can't be loaded: "),
    ({"gfpgan_visibility": 1.5}, "gfpgan_visibility: Input should be less than or equal to 1"),
    ({"upscaler_1": "Lanczos", "upscaling_resize": 9}, "upscaling_resize: Input should be less than or equal to 8"),
    ({"upscaler_1": "Lanczos", "resize_mode": 1, "upscaling_resize_w": 8192, "upscaling_resize_h": 64,
      "image": png_b64(16, 32)},
     "upscaling_resize_w: an image of 16x32 would be upscaled to 8192x16384; each side must be 8 to 8192"),
    ({"upscaler_1": "Lanczos", "upscaling_resize": 0.1},
     "upscaling_resize: an image of 32x32 would be upscaled to 0x0"),
    ({"resize_mode": 2}, "resize_mode: Input should be 0 or 1"),
    ({"image": "not an image"}, "image: not a base64-encoded PNG, JPEG or WebP image"),
    ({"image": ""}, "image: String should have at least 1 character"),
])
def test_single_image_errors_are_clear(upscaler_engine, payload, message):
    handle = make_handler(upscaler_engine)
    output = handle({"input": {"api": {"endpoint": "extra-single-image"}, "payload": {"image": png_b64(), **payload}}})
    assert list(output) == ["error"] and output["error"].startswith(message), output


@pytest.mark.parametrize("image_list, message", [
    ([{"data": png_b64(), "name": "a"}, {"data": png_b64(), "name": "b"}, {"data": "bad", "name": "c"}],
     "imageList.2.data: not a base64-encoded PNG, JPEG or WebP image"),
    ([], "imageList: List should have at least 1 item"),
    ([{"name": "a"}], "imageList.0.data: Field required"),
])
def test_batch_errors_name_the_image(upscaler_engine, image_list, message):
    handle = make_handler(upscaler_engine)
    output = handle({"input": {"api": {"endpoint": "extra-batch-images"},
                               "payload": {"imageList": image_list, "upscaler_1": "Lanczos"}}})
    assert list(output) == ["error"] and output["error"].startswith(message), output
