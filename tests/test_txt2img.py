"""txt2img on the tiny checkpoint: determinism per seed, batches, seeds, the infotext and `info` in
A1111's formats, and the response shape (../shared/a1111-api.md)."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest

from handler.router import route
from schemas import Txt2ImgRequest
from schemas.limits import SEED_RANGE

SMALL = {"width": 64, "height": 64, "steps": 3, "sampler_name": "DPM++ 2M"}

# a1111-api.md "Response `info`", keys in order
INFO_KEYS = [
    "prompt", "all_prompts", "negative_prompt", "all_negative_prompts", "seed", "all_seeds", "subseed",
    "all_subseeds", "subseed_strength", "width", "height", "sampler_name", "cfg_scale", "steps", "batch_size",
    "restore_faces", "face_restoration_model", "sd_model_name", "sd_model_hash", "sd_vae_name", "sd_vae_hash",
    "seed_resize_from_w", "seed_resize_from_h", "denoising_strength", "extra_generation_params",
    "index_of_first_image", "infotexts", "styles", "job_timestamp", "clip_skip",
    "is_using_inpainting_conditioning", "version",
]
# a1111-api.md "Infotext": the keys a plain txt2img image has, in order
INFOTEXT_KEYS = ["Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size", "Model hash", "Model", "Version"]


def txt2img(engine, **payload) -> dict:
    """The A1111 response for a payload, with `info` decoded."""
    response = route(engine, "POST", "/sdapi/v1/txt2img", payload)
    return {**response, "info": json.loads(response["info"])}


def pixels(decode_png, data: str) -> np.ndarray:
    return np.asarray(decode_png(data).convert("RGB"), dtype=np.int16)


def infotext_pairs(line: str) -> list[tuple[str, str]]:
    """`key: value` pairs of a parameters line whose values hold no commas."""
    return [tuple(part.split(": ", 1)) for part in line.split(", ")]


# ---------------------------------------------------------------- determinism

def test_same_seed_gives_identical_png_bytes(engine):
    first = route(engine, "POST", "txt2img", {"prompt": "a red house", "seed": 1234, **SMALL})
    second = route(engine, "POST", "txt2img", {"prompt": "a red house", "seed": 1234, **SMALL})
    assert base64.b64decode(first["images"][0]) == base64.b64decode(second["images"][0])


def test_different_seeds_give_different_images(engine, decode_png):
    a = txt2img(engine, prompt="a red house", seed=1, **SMALL)
    b = txt2img(engine, prompt="a red house", seed=2, **SMALL)
    difference = np.abs(pixels(decode_png, a["images"][0]) - pixels(decode_png, b["images"][0]))
    assert difference.mean() > 1


def test_prompt_changes_the_image(engine, decode_png):
    a = txt2img(engine, prompt="a red house", seed=1, **SMALL)
    b = txt2img(engine, prompt="a blue boat on the sea", seed=1, **SMALL)
    assert not np.array_equal(pixels(decode_png, a["images"][0]), pixels(decode_png, b["images"][0]))


def test_ancestral_sampler_is_deterministic_per_seed(engine, decode_png):
    payload = {"prompt": "a cat", "seed": 99, "width": 64, "height": 64, "steps": 4, "sampler_name": "Euler a"}
    first, second = txt2img(engine, **payload), txt2img(engine, **payload)
    assert base64.b64decode(first["images"][0]) == base64.b64decode(second["images"][0])
    other = txt2img(engine, **{**payload, "seed": 100})
    assert np.abs(pixels(decode_png, first["images"][0]) - pixels(decode_png, other["images"][0])).mean() > 1


# ---------------------------------------------------------------- batches and seeds

def test_batch_size_times_n_iter_images_with_consecutive_seeds(engine, decode_png, read_parameters):
    result = txt2img(engine, prompt="a cat", seed=500, subseed=70, batch_size=2, n_iter=2, **SMALL)
    info = result["info"]
    assert len(result["images"]) == 4
    assert info["seed"] == 500
    assert info["all_seeds"] == [500, 501, 502, 503]
    assert info["all_subseeds"] == [70, 71, 72, 73]
    assert info["all_prompts"] == ["a cat"] * 4 and info["all_negative_prompts"] == [""] * 4
    assert info["batch_size"] == 2
    assert len(info["infotexts"]) == 4
    for index, (image, infotext) in enumerate(zip(result["images"], info["infotexts"])):
        assert f"Seed: {500 + index}," in infotext
        assert read_parameters(image) == infotext
        assert decode_png(image).size == (64, 64)
    decoded = [pixels(decode_png, image) for image in result["images"]]
    assert all(not np.array_equal(decoded[0], other) for other in decoded[1:])


def test_each_image_has_its_own_noise_generator():
    from engine.sampling.noise import batch_noise

    shape = (4, 8, 8)
    batch, generators = batch_noise([10, 11], [0, 1], 0, shape, None, 0)
    alone, _ = batch_noise([11], [1], 0, shape, None, 0)
    assert len(generators) == 2
    assert torch_equal(batch[1], alone[0])
    assert not torch_equal(batch[0], batch[1])


def torch_equal(a, b) -> bool:
    import torch

    return torch.equal(a, b)


@pytest.mark.parametrize("sampler_name", ["DPM++ 2M", "Euler a"])
def test_image_does_not_depend_on_its_batch(engine, decode_png, sampler_name):
    """Seed s+1 in a batch of 2 is the image seed s+1 gives alone: per-image generators, noise and steps."""
    common = {"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 3, "sampler_name": sampler_name}
    batch = txt2img(engine, seed=300, batch_size=2, **common)
    alone = txt2img(engine, seed=301, **common)
    assert batch["info"]["all_seeds"] == [300, 301]
    in_batch, by_itself = pixels(decode_png, batch["images"][1]), pixels(decode_png, alone["images"][0])
    other = pixels(decode_png, batch["images"][0])
    # equal up to float rounding of a batched UNet call (at most 1 level in a few pixels) ...
    difference = np.abs(in_batch - by_itself)
    assert difference.max() <= 1 and difference.mean() < 0.01
    # ... where another seed's image is entirely different
    assert np.abs(other - by_itself).mean() > 1
    assert batch["info"]["infotexts"][1] == alone["info"]["infotexts"][0]


def test_random_seed_is_in_a1111s_range_and_consecutive(engine, read_parameters):
    result = txt2img(engine, prompt="a cat", seed=-1, batch_size=2, **SMALL)
    info = result["info"]
    assert 0 <= info["seed"] < SEED_RANGE
    assert info["all_seeds"] == [info["seed"], info["seed"] + 1]
    assert 0 <= info["subseed"] < SEED_RANGE
    assert info["all_subseeds"] == [info["subseed"], info["subseed"] + 1]
    assert f"Seed: {info['seed']}," in read_parameters(result["images"][0])
    assert result["parameters"]["seed"] == -1  # the request is echoed as sent


def test_blank_seed_is_random_too(engine):
    seeds = {txt2img(engine, prompt="a cat", seed="", **{**SMALL, "steps": 1})["info"]["seed"] for _ in range(2)}
    assert all(0 <= seed < SEED_RANGE for seed in seeds)


# ---------------------------------------------------------------- infotext

def test_infotext_matches_a1111s_format(engine, read_parameters):
    checkpoint = engine.model.checkpoint
    result = txt2img(engine, prompt="a cat", negative_prompt="blurry", seed=123, steps=3, width=64, height=96,
                     cfg_scale=7, sampler_name="DPM++ 2M", scheduler="Karras")
    infotext = result["info"]["infotexts"][0]
    lines = infotext.split("\n")
    assert len(lines) == 3
    assert lines[0] == "a cat"
    assert lines[1] == "Negative prompt: blurry"
    pairs = infotext_pairs(lines[2])
    assert [key for key, _ in pairs] == INFOTEXT_KEYS
    values = dict(pairs)
    assert values == {
        "Steps": "3", "Sampler": "DPM++ 2M", "Schedule type": "Karras", "CFG scale": "7", "Seed": "123",
        "Size": "64x96", "Model hash": checkpoint.short_hash, "Model": "tiny-sd15", "Version": values["Version"],
    }
    assert values["Version"]
    assert read_parameters(result["images"][0]) == infotext


def test_no_negative_prompt_line_when_empty(engine):
    infotext = txt2img(engine, prompt="a dog", seed=5, **SMALL)["info"]["infotexts"][0]
    lines = infotext.split("\n")
    assert len(lines) == 2
    assert lines[0] == "a dog"
    assert lines[1].startswith("Steps: 3, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 5, ")
    assert "Negative prompt" not in infotext


def test_cfg_scale_printed_as_a1111_prints_it(engine):
    whole = txt2img(engine, prompt="a cat", seed=1, cfg_scale=7.0, **SMALL)["info"]["infotexts"][0]
    fraction = txt2img(engine, prompt="a cat", seed=1, cfg_scale=7.5, **SMALL)["info"]["infotexts"][0]
    assert "CFG scale: 7," in whole and "7.0" not in whole
    assert "CFG scale: 7.5," in fraction


def test_combined_sampler_name_is_split_in_the_infotext(engine):
    result = txt2img(engine, prompt="a cat", seed=1, steps=2, width=64, height=64, sampler_name="DPM++ 2M Karras")
    assert "Sampler: DPM++ 2M, Schedule type: Karras," in result["info"]["infotexts"][0]
    assert result["info"]["sampler_name"] == "DPM++ 2M"


def test_prompt_with_commas_and_newlines_stays_verbatim(engine, read_parameters):
    prompt = "a cat, sitting\non a mat: (detailed:1.2)"
    result = txt2img(engine, prompt=prompt, negative_prompt="ugly, blurry", seed=3, **SMALL)
    infotext = read_parameters(result["images"][0])
    assert infotext.startswith(prompt + "\nNegative prompt: ugly, blurry\nSteps: 3, ")


# ---------------------------------------------------------------- info and response

def test_info_has_a1111s_keys_in_order(engine):
    response = route(engine, "POST", "txt2img", {"prompt": "a cat", "seed": 42, **SMALL})
    assert isinstance(response["info"], str)  # A1111 sends `info` as a JSON string
    info = json.loads(response["info"])
    assert list(info) == INFO_KEYS
    assert info["prompt"] == "a cat" and info["seed"] == 42 and info["all_seeds"] == [42]
    assert (info["width"], info["height"], info["steps"], info["cfg_scale"]) == (64, 64, 3, 7.0)
    assert info["sampler_name"] == "DPM++ 2M"
    assert info["sd_model_name"] == "tiny-sd15" and info["sd_model_hash"] == engine.model.checkpoint.short_hash
    assert info["index_of_first_image"] == 0
    assert re.fullmatch(r"\d{14}", info["job_timestamp"])


def test_response_shape(engine):
    response = route(engine, "POST", "txt2img", {"prompt": "a cat", "seed": 42, **SMALL})
    assert list(response) == ["images", "parameters", "info"]
    (image,) = response["images"]
    assert not image.startswith("data:")  # plain base64, as A1111
    assert response["parameters"] == Txt2ImgRequest(prompt="a cat", seed=42, **SMALL).model_dump(mode="json")


def test_send_images_false_returns_no_images(engine):
    response = txt2img(engine, prompt="a cat", seed=42, send_images=False, **SMALL)
    assert response["images"] == []
    assert response["info"]["all_seeds"] == [42]
    assert len(response["info"]["infotexts"]) == 1


@pytest.mark.parametrize("width,height", [(64, 96), (96, 64), (64, 64)])
def test_output_size_is_width_by_height(engine, decode_png, width, height):
    result = txt2img(engine, prompt="a cat", seed=8, width=width, height=height, steps=2, sampler_name="Euler")
    image = decode_png(result["images"][0])
    assert image.size == (width, height)
    assert image.mode == "RGB"
    assert f"Size: {width}x{height}," in result["info"]["infotexts"][0]
    assert (result["info"]["width"], result["info"]["height"]) == (width, height)


SUPPORTED_SAMPLERS = ["DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 2S a", "DPM++ 3M SDE",
                      "Euler a", "Euler", "LMS", "Heun", "DPM2", "DPM2 a", "DDIM", "PLMS", "UniPC", "LCM"]


@pytest.mark.parametrize("sampler_name", SUPPORTED_SAMPLERS)
def test_every_supported_sampler_generates(engine, decode_png, sampler_name):
    payload = {"prompt": "a cat", "seed": 11, "width": 64, "height": 64, "steps": 3, "sampler_name": sampler_name}
    first = txt2img(engine, **payload)
    image = pixels(decode_png, first["images"][0])
    assert image.shape == (64, 64, 3) and image.std() > 0
    assert f"Sampler: {sampler_name}," in first["info"]["infotexts"][0]
    again = txt2img(engine, **payload)
    assert np.array_equal(image, pixels(decode_png, again["images"][0]))  # deterministic per seed
