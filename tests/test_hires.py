"""Hires fix: target size, upscalers, exact second-pass steps, Hires infotext keys, clear errors."""

import base64
import io
import json

import pytest
from PIL import Image

from handler.router import route
from handler.worker import make_handler

BASE = {"prompt": "a castle", "steps": 3, "width": 96, "height": 64, "seed": 5, "enable_hr": True,
        "denoising_strength": 0.5}


def sizes(output):
    return [Image.open(io.BytesIO(base64.b64decode(i))).size for i in output["images"]]


@pytest.mark.parametrize("extra, size", [
    ({"hr_scale": 2}, (192, 128)),
    ({"hr_scale": 1.5}, (144, 96)),
    ({"hr_resize_x": 120}, (120, 80)),
    ({"hr_resize_y": 96}, (144, 96)),
    ({"hr_resize_x": 80, "hr_resize_y": 80}, (80, 80)),
])
def test_hires_output_has_the_target_size(engine, extra, size):
    output = route(engine, "POST", "txt2img", {**BASE, **extra})
    assert sizes(output) == [size]
    assert json.loads(output["info"])["width"] == 96  # Size stays the first pass's, as in A1111


@pytest.mark.parametrize("upscaler", ["Latent", "Latent (bicubic antialiased)", "Latent (nearest-exact)",
                                      "Lanczos", "Nearest", "None"])
def test_every_builtin_upscaler_runs(engine, upscaler):
    output = route(engine, "POST", "txt2img", {**BASE, "hr_upscaler": upscaler})
    assert sizes(output) == [(192, 128)]
    assert f"Hires upscaler: {upscaler}" in json.loads(output["info"])["infotexts"][0]


def test_hires_infotext_keys_in_a1111_order(engine):
    output = route(engine, "POST", "txt2img", {**BASE, "hr_second_pass_steps": 2, "hr_sampler_name": "DDIM",
                                                "hr_prompt": "a tall castle"})
    last_line = json.loads(output["info"])["infotexts"][0].splitlines()[-1]
    keys = [part.split(": ")[0] for part in last_line.split(", ")]
    assert keys.index("Denoising strength") < keys.index("Hires upscale") < keys.index("Hires steps") \
        < keys.index("Hires upscaler") < keys.index("Hires sampler") < keys.index("Hires prompt") \
        < keys.index("Version")
    assert "Hires upscale: 2, Hires steps: 2, Hires upscaler: Latent, Hires sampler: DDIM" in last_line


@pytest.mark.parametrize("hr_steps, expected", [(0, 3 + 3), (5, 3 + 5)])
def test_second_pass_runs_exactly_its_steps(engine, monkeypatch, hr_steps, expected):
    calls = []
    unet = engine.model.unet
    original = unet.forward
    monkeypatch.setattr(unet, "forward", lambda *a, **k: (calls.append(1), original(*a, **k))[1])
    route(engine, "POST", "txt2img", {**BASE, "hr_second_pass_steps": hr_steps})
    assert len(calls) == expected


def test_hires_changes_the_image_and_is_deterministic(engine):
    first = route(engine, "POST", "txt2img", {**BASE, "hr_upscaler": "Lanczos"})["images"]
    assert route(engine, "POST", "txt2img", {**BASE, "hr_upscaler": "Lanczos"})["images"] == first
    lanczos = route(engine, "POST", "txt2img", {**BASE, "hr_upscaler": "Lanczos", "denoising_strength": 0.9})
    assert lanczos["images"] != first


@pytest.mark.parametrize("payload, message", [
    ({"denoising_strength": None}, "denoising_strength: required with enable_hr"),
    ({"hr_upscaler": "R-ESRGAN 9x"}, "hr_upscaler: unknown upscaler 'R-ESRGAN 9x'"),
    ({"hr_sampler_name": "Nope"}, "hr_sampler_name: unknown sampler 'Nope'"),
    ({"hr_scale": 100}, "hr_scale: "),
])
def test_hires_errors_are_clear(engine, payload, message):
    result = make_handler(engine)({"input": {**BASE, **payload}})
    assert result["error"].startswith(message), result
