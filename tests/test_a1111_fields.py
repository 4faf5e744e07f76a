"""Request fields A1111 1.8+ added: `infotext` (fills unset fields), `firstpass_image`, `hr_checkpoint_name`,
`latent_mask`; each through the shared router, its effect asserted."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from handler.router import route

TINY = {"steps": 2, "width": 64, "height": 64, "seed": 5}


def pixels(output: dict, index: int = 0) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(output["images"][index]))).convert("RGB"))


def infotext_of(output: dict, index: int = 0) -> str:
    import json

    return json.loads(output["info"])["infotexts"][index]


# ---------------------------------------------------------------- infotext

def test_infotext_fills_the_fields_a_request_leaves_unset(engine):
    made = route(engine, "POST", "txt2img", {"prompt": "a red barn", "negative_prompt": "fog", "steps": 3,
                                             "width": 64, "height": 72, "seed": 77, "cfg_scale": 5,
                                             "sampler_name": "DPM++ 2M", "scheduler": "Karras"})
    text = infotext_of(made)
    again = route(engine, "POST", "txt2img", {"infotext": text})
    assert infotext_of(again) == text
    assert np.array_equal(pixels(again), pixels(made))
    echoed = again["parameters"]
    assert (echoed["prompt"], echoed["steps"], echoed["width"], echoed["height"], echoed["seed"]) == \
        ("a red barn", 3, 64, 72, 77)


def test_fields_the_request_sends_win_over_the_infotext(engine):
    text = "a red barn\nNegative prompt: fog\nSteps: 3, Sampler: Euler, CFG scale: 5, Seed: 77, Size: 64x64"
    output = route(engine, "POST", "txt2img", {"infotext": text, "seed": 8, "prompt": "a blue boat",
                                               "negative_prompt": "", "steps": 1})
    params = output["parameters"]
    assert (params["seed"], params["prompt"], params["steps"], params["cfg_scale"]) == (8, "a blue boat", 1, 5)
    assert "Negative prompt" not in infotext_of(output)  # sent empty: not the infotext's


def test_infotext_turns_hires_fix_on_and_sets_options(engine):
    text = ("a cat\nSteps: 1, Sampler: Euler, CFG scale: 7, Seed: 3, Size: 64x64, Denoising strength: 0.5, "
            "Clip skip: 2, Hires upscale: 1.5, Hires upscaler: Latent")
    output = route(engine, "POST", "txt2img", {"infotext": text})
    assert output["parameters"]["enable_hr"] is True
    assert pixels(output).shape == (96, 96, 3)
    written = infotext_of(output)
    assert "Clip skip: 2" in written and "Hires upscale: 1.5" in written
    assert engine.options.CLIP_stop_at_last_layers == 1  # an override, for this request only


def test_img2img_infotext_fields(engine):
    init = Image.new("RGB", (64, 64), (200, 30, 30))
    buffer = io.BytesIO()
    init.save(buffer, format="PNG")
    text = "a cat\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 3, Size: 64x64, Denoising strength: 0.35, Mask blur: 2"
    init_images = [base64.b64encode(buffer.getvalue()).decode()]
    output = route(engine, "POST", "img2img", {"infotext": text, "init_images": init_images})
    assert output["parameters"]["denoising_strength"] == 0.35 and output["parameters"]["mask_blur"] == 2


@pytest.mark.parametrize("infotext, field", [
    ("a cat\nSteps: 1000, Sampler: Euler, Seed: 1", "steps"),
    ("a cat\nSteps: 1, Sampler: Nope, Seed: 1", "sampler_name"),
    ("x" * 60_000, "infotext"),
])
def test_bad_infotext_values_are_refused_naming_the_field(engine, infotext, field):
    from pydantic import ValidationError

    from handler.errors import describe

    with pytest.raises(ValidationError) as caught:
        route(engine, "POST", "txt2img", {"infotext": infotext})
    assert describe(caught.value).startswith(field)


# ---------------------------------------------------------------- firstpass_image

def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def noise_image(seed: int, size=(64, 64)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*size[::-1], 3), dtype=np.uint8))


HIRES = {**TINY, "enable_hr": True, "hr_scale": 1.5, "denoising_strength": 0.5, "hr_second_pass_steps": 2}


@pytest.mark.parametrize("upscaler", ["Latent", "Lanczos"])
def test_firstpass_image_replaces_the_first_pass(engine, unet_calls, upscaler):
    one = route(engine, "POST", "txt2img", {**HIRES, "hr_upscaler": upscaler, "firstpass_image": b64(noise_image(1))})
    assert len(unet_calls) == 2  # only the hires pass's steps ran
    other = route(engine, "POST", "txt2img", {**HIRES, "hr_upscaler": upscaler, "firstpass_image": b64(noise_image(2))})
    generated = route(engine, "POST", "txt2img", {**HIRES, "hr_upscaler": upscaler})
    assert pixels(one).shape == (96, 96, 3)
    assert not np.array_equal(pixels(one), pixels(other))
    assert not np.array_equal(pixels(one), pixels(generated))


def test_firstpass_image_without_hires_fix_is_ignored_as_in_a1111(engine):
    plain = route(engine, "POST", "txt2img", TINY)
    ignored = route(engine, "POST", "txt2img", {**TINY, "firstpass_image": b64(noise_image(1))})
    assert np.array_equal(pixels(plain), pixels(ignored))


def test_a_firstpass_image_that_is_no_image_is_refused(engine):
    with pytest.raises(ValueError, match="firstpass_image"):
        route(engine, "POST", "txt2img", {**HIRES, "firstpass_image": "bm90IGFuIGltYWdl"})


# ---------------------------------------------------------------- hr_checkpoint_name

def test_hires_pass_on_another_checkpoint(engine):
    same = route(engine, "POST", "txt2img", {**HIRES, "hr_checkpoint_name": "Use same checkpoint"})
    other = route(engine, "POST", "txt2img", {**HIRES, "hr_checkpoint_name": "tiny-sd15-inpainting"})
    assert np.array_equal(pixels(same), pixels(route(engine, "POST", "txt2img", HIRES)))
    assert not np.array_equal(pixels(same), pixels(other))
    checkpoint = engine.find_checkpoint("tiny-sd15-inpainting", "test")
    written = infotext_of(other)
    assert f"Hires checkpoint: {checkpoint.short_title}" in written
    assert f"Model: {engine.model.checkpoint.model_name}" in written  # the first pass's model
    assert engine.options.sd_model_checkpoint == engine.model.checkpoint.title


def test_an_unknown_hires_checkpoint_is_refused(engine):
    from handler.errors import describe

    with pytest.raises(ValueError) as caught:
        route(engine, "POST", "txt2img", {**HIRES, "hr_checkpoint_name": "nope"})
    assert describe(caught.value).startswith("hr_checkpoint_name")


# ---------------------------------------------------------------- latent_mask

def test_latent_mask_blends_the_latents_in_place_of_the_mask(engine):
    init = noise_image(3)
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))  # repaint the left half
    latent = Image.new("L", (64, 64), 255)  # let the latents change everywhere
    body = {**TINY, "init_images": [b64(init)], "mask": b64(mask), "inpaint_full_res": False, "mask_blur": 0,
            "denoising_strength": 0.9}
    plain = pixels(route(engine, "POST", "img2img", body))
    with_latent = pixels(route(engine, "POST", "img2img", {**body, "latent_mask": b64(latent)}))
    assert not np.array_equal(plain[:, :28], with_latent[:, :28])  # the repainted side differs
    original = np.asarray(init)
    assert np.array_equal(with_latent[:, 40:], original[:, 40:])  # outside the mask: still the original pixels
