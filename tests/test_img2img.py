"""img2img and inpainting on the tiny models: A1111's step count, resize modes, masks and fills."""

import base64
import io

import numpy as np
import pytest
from PIL import Image

from engine.imaging.images import decode_image
from engine.sampling.loop import img2img_steps
from handler.router import route

BASE = {"prompt": "a red barn", "steps": 4, "width": 64, "height": 64, "seed": 11, "mask_blur": 0}


def b64(image: Image.Image, fmt: str = "PNG", **save) -> str:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save)
    return base64.b64encode(buffer.getvalue()).decode()


def decoded(output: dict) -> list[np.ndarray]:
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(i))).convert("RGB")).astype(int)
            for i in output["images"]]


@pytest.mark.parametrize("steps, strength, exact, expected", [
    (20, 0.75, False, (20, 16)), (20, 1.0, False, (20, 20)), (10, 0.0, False, (10, 1)),
    (20, 0.5, True, (40, 20)), (4, 0.3, False, (4, 2)),
])
def test_step_count_rule(steps, strength, exact, expected):
    assert img2img_steps(steps, strength, exact) == expected


@pytest.mark.parametrize("fix_steps, expected_calls", [(False, 6), (True, 10)])
def test_img2img_runs_a1111s_number_of_steps(engine, source, unet_calls, fix_steps, expected_calls):
    route(engine, "POST", "img2img", {**BASE, "steps": 10, "denoising_strength": 0.5, "init_images": [b64(source)],
                                       "override_settings": {"img2img_fix_steps": fix_steps}})
    assert len(unet_calls) == expected_calls  # int(0.5 * 10) + 1, or exactly 10


def test_img2img_depends_on_the_init_image_and_strength(engine, source):
    def run(image, strength):
        return decoded(route(engine, "POST", "img2img", {**BASE, "init_images": [b64(image)],
                                                         "denoising_strength": strength}))[0]
    low = run(source, 0.2)
    assert np.abs(low - np.asarray(source)).mean() < np.abs(run(source, 0.9) - np.asarray(source)).mean()
    assert not np.array_equal(low, run(Image.new("RGB", (64, 64), (0, 0, 255)), 0.2))


@pytest.mark.parametrize("mode", [0, 1, 2, 3])
def test_resize_modes_give_the_requested_size(engine, mode):
    wide = Image.new("RGB", (120, 40), (200, 10, 10))
    output = route(engine, "POST", "img2img", {**BASE, "width": 64, "height": 96, "resize_mode": mode,
                                                "init_images": ["data:image/png;base64," + b64(wide)]})
    assert decoded(output)[0].shape == (96, 64, 3)


def test_batch_cycles_init_images_and_echo_omits_them(engine, source):
    output = route(engine, "POST", "img2img", {**BASE, "batch_size": 2, "init_images": [b64(source)]})
    assert len(output["images"]) == 2
    assert output["parameters"]["init_images"] is None and output["parameters"]["mask"] is None
    echoed = route(engine, "POST", "img2img", {**BASE, "init_images": [b64(source)], "include_init_images": True})
    assert echoed["parameters"]["init_images"] == [b64(source)]


@pytest.mark.parametrize("full_res", [False, True])
@pytest.mark.parametrize("fill", [0, 1, 2, 3])
def test_pixels_outside_the_mask_are_the_original(engine, source, square_mask, full_res, fill):
    output = route(engine, "POST", "img2img", {
        **BASE, "init_images": [b64(source)], "mask": b64(square_mask), "inpainting_fill": fill,
        "inpaint_full_res": full_res, "inpaint_full_res_padding": 4, "denoising_strength": 0.9})
    result, original = decoded(output)[0], np.asarray(source).astype(int)
    outside = np.asarray(square_mask) == 0
    assert np.array_equal(result[outside], original[outside])
    assert np.abs(result[24:40, 24:40] - original[24:40, 24:40]).mean() > 5
    info = output["info"]
    assert ("Inpaint area: Only masked" in info) == full_res


def test_inverted_mask_keeps_the_inside(engine, source, square_mask):
    output = route(engine, "POST", "img2img", {**BASE, "init_images": [b64(source)], "mask": b64(square_mask),
                                                "inpainting_mask_invert": 1, "inpaint_full_res": False})
    result, original = decoded(output)[0], np.asarray(source).astype(int)
    assert np.array_equal(result[16:48, 16:48], original[16:48, 16:48])
    assert np.abs(result[:8] - original[:8]).mean() > 5
    assert "Mask mode: Inpaint not masked" in output["info"]


def test_rgba_mask_uses_its_alpha(engine, source):
    mask = Image.new("RGBA", (64, 64), (0, 0, 0, 255))  # black but opaque: alpha > 128 means repaint
    mask.paste((255, 255, 255, 0), (0, 0, 32, 64))  # white but transparent left half: kept
    output = route(engine, "POST", "img2img", {**BASE, "init_images": [b64(source)], "mask": b64(mask),
                                                "inpaint_full_res": False})
    result, original = decoded(output)[0], np.asarray(source).astype(int)
    assert np.array_equal(result[:, :32], original[:, :32])
    assert np.abs(result[:, 32:] - original[:, 32:]).mean() > 5


def test_inpainting_checkpoint_is_conditioned_on_the_mask(engine, source, square_mask):
    payload = {**BASE, "init_images": [b64(source)], "mask": b64(square_mask), "inpaint_full_res": False,
               "override_settings": {"sd_model_checkpoint": "tiny-sd15-inpainting"}}
    output = route(engine, "POST", "img2img", payload)
    result, original = decoded(output)[0], np.asarray(source).astype(int)
    outside = np.asarray(square_mask) == 0
    assert np.array_equal(result[outside], original[outside])
    info = __import__("json").loads(output["info"])
    assert info["is_using_inpainting_conditioning"] is True and info["sd_model_name"] == "tiny-sd15-inpainting"


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    assert decode_image(b64(image, "JPEG", exif=exif), "init_images.0").size == (20, 40)


@pytest.mark.parametrize("payload, field", [
    ({"init_images": ["not an image"]}, "init_images.0"),
    ({"init_images": []}, "init_images"),
    ({"mask": "bad"}, "mask"),
    ({"resize_mode": 4}, "resize_mode"),
    ({"inpainting_fill": 7}, "inpainting_fill"),
])
def test_bad_img2img_input_names_the_field(engine, source, payload, field):
    from handler.worker import make_handler

    result = make_handler(engine)({"input": {"api": {"endpoint": "img2img"},
                                             "payload": {**BASE, "init_images": [b64(source)], **payload}}})
    assert result["error"].startswith(f"{field}: "), result
    assert "\n" not in result["error"]


def test_bare_body_with_init_images_is_img2img(engine, source):
    from handler.worker import make_handler

    output = make_handler(engine)({"input": {**BASE, "init_images": [b64(source)]}})
    assert "Denoising strength: 0.75" in output["info"]
    assert output["parameters"]["init_images"] is None  # img2img's echo, not txt2img's
