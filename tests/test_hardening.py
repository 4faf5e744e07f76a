"""Issue 14's root causes, each through the shared router (what both adapters call): bad input is a
RequestError naming the field, options are kept only after a request succeeded, limits are checked before
work, errors stay short, and server faults (out of memory, a loader's device failure) are not the client's."""

from __future__ import annotations

import base64
import io
import json
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from handler.errors import MAX_ERROR_CHARS, describe
from handler.router import route
from schemas import RequestError, limits
from schemas.payload import check_payload

TINY = {"steps": 1, "width": 64, "height": 64, "seed": 3}
REPO_ROOT = Path(__file__).resolve().parent.parent


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def bomb_png(width: int = 100_000, height: int = 100_000) -> str:
    """A PNG whose header declares width x height pixels, with almost no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
            + chunk(b"IEND", b""))
    return base64.b64encode(data).decode()


def refusal(engine, endpoint: str, payload: dict, method: str = "POST") -> str:
    """The one-line error a bad request gets (a RequestError or a validation error)."""
    with pytest.raises(ValueError) as caught:
        route(engine, method, endpoint, payload)
    message = describe(caught.value)
    assert "\n" not in message and len(message) <= MAX_ERROR_CHARS
    return message


def image_bytes(engine, **payload) -> bytes:
    return base64.b64decode(route(engine, "POST", "txt2img", {**TINY, **payload})["images"][0])


@pytest.fixture
def options_unchanged(engine):
    """The server options before and after the test are the same."""
    before = engine.options.model_dump()
    yield
    assert engine.options.model_dump() == before


# ---------------------------------------------------------------- options: validated whole, kept after success

@pytest.mark.parametrize("overrides, field", [
    ({"CLIP_stop_at_last_layers": 99}, "CLIP_stop_at_last_layers"),
    ({"eta_noise_seed_delta": 2**64 + 5}, "eta_noise_seed_delta"),
    ({"sd_model_checkpoint": None}, "sd_model_checkpoint"),
    ({"sd_model_checkpoint": "../../etc/passwd"}, "sd_model_checkpoint"),
])
def test_a_bad_override_kept_afterwards_is_refused_and_changes_nothing(engine, options_unchanged, overrides, field):
    before = image_bytes(engine)
    message = refusal(engine, "txt2img", {**TINY, "override_settings": overrides,
                                          "override_settings_restore_afterwards": False})
    assert message.startswith("override_settings") and field in message
    assert image_bytes(engine) == before


def test_clip_skip_is_bounded_by_the_text_encoders_depth(engine, options_unchanged):
    layers = engine.model.encoder.layer_count
    route(engine, "POST", "txt2img", {**TINY, "override_settings": {"CLIP_stop_at_last_layers": layers}})
    message = refusal(engine, "txt2img", {**TINY, "override_settings": {"CLIP_stop_at_last_layers": layers + 1}})
    assert f"at most {layers}" in message


@pytest.mark.parametrize("values, field", [
    ({"CLIP_stop_at_last_layers": 99}, "CLIP_stop_at_last_layers"),
    ({"sd_model_checkpoint": None}, "sd_model_checkpoint"),
    ({"eta_noise_seed_delta": 2**64 + 5}, "eta_noise_seed_delta"),
    ({"jpeg_quality": 80, "CLIP_stop_at_last_layers": 99}, "CLIP_stop_at_last_layers"),  # nothing is half-applied
])
def test_post_options_is_validated_whole(engine, options_unchanged, values, field):
    assert refusal(engine, "options", values).startswith(field)


def test_overrides_are_kept_only_after_the_request_succeeded(engine, monkeypatch):
    import engine.tasks.txt2img as txt2img_module

    before = engine.options.model_dump()
    keep = {**TINY, "override_settings": {"jpeg_quality": 42}, "override_settings_restore_afterwards": False}

    def failing(*args, **kwargs):
        raise RuntimeError("the generation failed")

    with monkeypatch.context() as patch:
        patch.setattr(txt2img_module, "_first_pass", failing)
        with pytest.raises(RuntimeError):
            route(engine, "POST", "txt2img", keep)
    assert engine.options.model_dump() == before
    try:
        route(engine, "POST", "txt2img", keep)
        assert engine.options.jpeg_quality == 42
    finally:
        engine.set_options({"jpeg_quality": before["jpeg_quality"]})


# ---------------------------------------------------------------- the request body as a whole

@pytest.mark.parametrize("payload, field", [
    ({"eta": float("nan")}, "eta"),
    ({"cfg_scale": float("inf")}, "cfg_scale"),
    ({"comments": {"note": float("-inf")}}, "comments.note"),
    ({"eta": "nan"}, "eta"),
    ({"s_tmax": "inf"}, "s_tmax"),
    ({"refiner_switch_at": "Infinity"}, "refiner_switch_at"),
    ({"prompt": "a \ud800 cat"}, "prompt"),
    ({"hr_upscaler": "Latent\udfff", "enable_hr": True, "denoising_strength": 0.5}, "hr_upscaler"),
    ({"styles": ["ok", "bad\ud800"]}, "styles.1"),
    ({"comments": {"k\ud800": 1}}, "comments"),
])
def test_non_finite_numbers_and_lone_surrogates_are_refused(engine, payload, field):
    assert refusal(engine, "txt2img", {**TINY, **payload}).startswith(field)


def test_deep_nesting_is_refused():
    nested: list = []
    for _ in range(limits.MAX_NESTING + 5):
        nested = [nested]
    with pytest.raises(RequestError, match="comments"):
        check_payload({"comments": nested})
    check_payload({"comments": {"a": [1, 2.5, "x", None, {"b": True}]}})


def test_image_cfg_scale_nan_is_refused_on_img2img(engine):
    message = refusal(engine, "img2img", {**TINY, "init_images": [b64(Image.new("RGB", (64, 64)))],
                                          "image_cfg_scale": float("nan")})
    assert message.startswith("image_cfg_scale")


# ---------------------------------------------------------------- images

@pytest.mark.parametrize("endpoint, payload, field", [
    ("img2img", {**TINY, "init_images": [bomb_png()]}, "init_images.0"),
    ("img2img", {**TINY, "init_images": ["A"], "mask": bomb_png()}, "mask"),
    ("extra-single-image", {"image": bomb_png()}, "image"),
    ("extra-batch-images", {"imageList": [{"data": bomb_png(), "name": "x"}]}, "imageList.0.data"),
    ("png-info", {"image": bomb_png()}, "image"),
])
def test_decompression_bombs_are_refused_from_the_header(engine, endpoint, payload, field):
    if endpoint == "img2img" and field == "mask":
        payload["init_images"] = [b64(Image.new("RGB", (64, 64)))]
    message = refusal(engine, endpoint, payload)
    assert message.startswith(field) and "pixels" in message


def test_the_input_pixel_limit_is_checked_before_decoding(engine):
    side = int(limits.MAX_INPUT_PIXELS ** 0.5) + 1
    message = refusal(engine, "png-info", {"image": bomb_png(side, side)})
    assert f"{side}x{side}" in message and "WORKER_MAX_INPUT_PIXELS" in message


@pytest.mark.parametrize("full_res", [True, False])
def test_init_images_of_different_sizes_with_one_mask(engine, full_res):
    rng = np.random.default_rng(0)
    small = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    large = Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    output = route(engine, "POST", "img2img", {**TINY, "init_images": [b64(small), b64(large)], "mask": b64(mask),
                                               "batch_size": 2, "inpaint_full_res": full_res})
    images = [Image.open(io.BytesIO(base64.b64decode(i))) for i in output["images"]]
    expected = [(64, 64), (128, 96)] if full_res else [(64, 64), (64, 64)]
    assert [image.size for image in images] == expected
    if full_res:  # the mask is fitted to each image: outside it, the large image keeps its own pixels
        assert np.array_equal(np.asarray(images[1].convert("RGB"))[:8, :8], np.asarray(large)[:8, :8])


# ---------------------------------------------------------------- limits checked before work

@pytest.mark.parametrize("field", ["prompt", "negative_prompt"])
def test_a_huge_prompt_is_refused_before_tokenizing(engine, unet_calls, field):
    message = refusal(engine, "txt2img", {**TINY, field: "a " * 500_000})
    assert message.startswith(field) and str(limits.MAX_PROMPT_CHARS) in message
    assert unet_calls == []


@pytest.mark.parametrize("text, rule", [
    ("cat BREAK " * (limits.MAX_PROMPT_CHUNKS + 1), "WORKER_MAX_PROMPT_CHUNKS"),
    (", ".join(f"word{i}" for i in range(40 * limits.MAX_PROMPT_CHUNKS)), "WORKER_MAX_PROMPT_CHUNKS"),
    (" AND ".join(["cat"] * (limits.MAX_SUBPROMPTS + 1)), "WORKER_MAX_SUBPROMPTS"),
])
def test_prompts_over_the_chunk_and_subprompt_limits_are_refused_before_sampling(engine, unet_calls, text, rule):
    for field, payload in [("prompt", {"prompt": text}), ("negative_prompt", {"negative_prompt": text}),
                           ("hr_prompt", {"hr_prompt": text, "enable_hr": True, "denoising_strength": 0.5})]:
        message = refusal(engine, "txt2img", {**TINY, **payload})
        assert message.startswith(field) and rule in message
    assert unet_calls == []


def test_a_prompt_at_the_chunk_limit_is_served(engine):
    route(engine, "POST", "txt2img", {**TINY, "prompt": "cat BREAK " * (limits.MAX_PROMPT_CHUNKS - 1) + "cat"})


@pytest.mark.parametrize("field", ["seed_resize_from_w", "seed_resize_from_h"])
def test_seed_resize_is_bounded(engine, field):
    assert refusal(engine, "txt2img", {**TINY, field: 1_000_000_000}).startswith(field)


def test_every_limit_is_in_the_readme():
    readme = (REPO_ROOT / "README.md").read_text()
    for variable, value in limits.SETTINGS.items():
        row = next((line for line in readme.splitlines() if f"`{variable}`" in line and line.startswith("|")), None)
        assert row is not None, f"README's limits table has no row for {variable}"
        assert re.search(rf"\b{value:,}\b|\b{value}\b", row.replace("_", "")), row


# ---------------------------------------------------------------- errors quote a short prefix

@pytest.mark.parametrize("payload", [
    {"sampler_name": "x" * 100_000},
    {"scheduler": "y" * 100_000},
    {"hr_upscaler": "z" * 100_000, "enable_hr": True, "denoising_strength": 0.5},
    {"styles": ["s" * 100_000]},
    {"prompt": "<lora:" + "n" * 100_000 + ">"},
    {"prompt": "<hypernet:" + "n" * 100_000 + ":1>"},
    {"override_settings": {"k" * 100_000: 1}},
    {"override_settings": {"sd_vae": "v" * 100_000}},
    {"override_settings": {"sd_model_checkpoint": "c" * 100_000}},
])
def test_errors_quote_only_a_short_prefix(engine, payload):
    message = refusal(engine, "txt2img", {**TINY, **payload})
    assert len(message) < 1000


def test_unknown_endpoint_error_is_short(engine):
    from handler.router import UnknownEndpoint

    with pytest.raises(UnknownEndpoint) as caught:
        route(engine, "POST", "x" * 100_000, {})
    assert len(describe(caught.value)) < 2000


# ---------------------------------------------------------------- png-info

def test_png_info_keeps_a_quoted_value_that_is_not_json(engine):
    from PIL.PngImagePlugin import PngInfo

    infotext = 'a cat\nSteps: 20, Sampler: Euler, Model: "C:\\models\\v1, final", Seed: 1'
    info = PngInfo()
    info.add_text("parameters", infotext)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG", pnginfo=info)
    answer = route(engine, "POST", "png-info", {"image": base64.b64encode(buffer.getvalue()).decode()})
    assert answer["parameters"]["Model"] == '"C:\\models\\v1, final"'
    assert answer["parameters"]["Steps"] == "20" and answer["parameters"]["Seed"] == "1"
    json.dumps(answer)


# ---------------------------------------------------------------- server faults are not the client's

def out_of_memory(*args, **kwargs):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


def test_out_of_memory_during_generation_is_its_own_error_and_the_next_request_is_served(engine, monkeypatch):
    from engine.faults import OutOfMemory

    before = image_bytes(engine)
    with monkeypatch.context() as patch:
        patch.setattr(engine.model.unet, "forward", out_of_memory)
        with pytest.raises(OutOfMemory, match=r"out of CPU memory at 64x64, batch 2"):
            route(engine, "POST", "txt2img", {**TINY, "batch_size": 2})
    assert image_bytes(engine) == before


@pytest.mark.parametrize("fault", [torch.OutOfMemoryError("CUDA out of memory"), TypeError("a bug")])
def test_a_fault_inside_a_vae_load_is_not_reported_as_bad_input(tiny_models_dir_factory, start_tiny_engine,
                                                                monkeypatch, fault):
    from diffusers import AutoencoderKL

    from engine.faults import OutOfMemory
    from engine.tiny.addons import write_tiny_vae

    models_dir = tiny_models_dir_factory("vae-fault")
    write_tiny_vae(models_dir, "other.safetensors", seed=1)
    vae_engine = start_tiny_engine(models_dir)

    def broken(*args, **kwargs):
        raise fault

    monkeypatch.setattr(AutoencoderKL, "from_single_file", broken)
    payload = {**TINY, "override_settings": {"sd_vae": "other.safetensors"}}
    expected = OutOfMemory if isinstance(fault, torch.OutOfMemoryError) else TypeError
    with pytest.raises(expected) as caught:
        route(vae_engine, "POST", "txt2img", payload)
    assert not isinstance(caught.value, RequestError)


def test_a_file_that_is_no_vae_is_still_the_requests_error(tiny_models_dir_factory, start_tiny_engine):
    models_dir = tiny_models_dir_factory("vae-bad-file")
    (models_dir / "VAE").mkdir()
    (models_dir / "VAE" / "broken.safetensors").write_bytes(b"not a safetensors file")
    bad_engine = start_tiny_engine(models_dir)
    message = refusal(bad_engine, "txt2img", {**TINY, "override_settings": {"sd_vae": "broken.safetensors"}})
    assert message.startswith("override_settings.sd_vae")


# ---------------------------------------------------------------- the HTTP body

@pytest.fixture(scope="module")
def client(engine):
    from fastapi.testclient import TestClient

    from handler.http.app import create_app

    return TestClient(create_app(engine))


@pytest.mark.parametrize("body, status, field", [
    (b'{"prompt": "a", "eta": NaN}', 422, "eta"),
    (b'{"prompt": "a", "comments": {"x": -Infinity}}', 422, "comments"),
    (b'{"prompt": "\\ud800"}', 422, "prompt"),
    (b'{"prompt": "\xff\xfe"}', 422, "body"),
    (b"[" * 100_000 + b"]" * 100_000, 422, "body"),
    (b'{"comments": ' + b"[" * 40 + b"]" * 40 + b"}", 422, "comments"),
])
def test_bodies_no_field_can_read_are_refused_over_http(client, body, status, field):
    response = client.post("/sdapi/v1/txt2img", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == status
    assert field in json.dumps(response.json()["detail"])[:400]


def test_a_body_over_the_size_limit_is_refused_before_it_is_read(client, monkeypatch):
    monkeypatch.setattr(limits, "MAX_REQUEST_MB", 1)
    response = client.post("/sdapi/v1/png-info", content=b'{"image": "' + b"A" * 1_100_000 + b'"}',
                           headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert "WORKER_MAX_REQUEST_MB" in response.json()["detail"]


def test_validation_locations_quote_only_a_prefix(client):
    response = client.post("/sdapi/v1/txt2img", json={**TINY, "override_settings": {"k" * 100_000: 1}})
    assert response.status_code == 422 and len(response.text) < 3000


def test_out_of_memory_fails_the_runpod_job_with_its_own_message(engine, monkeypatch):
    from handler.worker import make_handler

    handle = make_handler(engine)
    with monkeypatch.context() as patch:
        patch.setattr(engine.model.unet, "forward", out_of_memory)
        output = handle({"id": "oom", "input": {**TINY, "batch_size": 3}})
    assert output == {"error": "out of CPU memory at 64x64, batch 3; ask for fewer or smaller images"}
    assert "images" in handle({"id": "after", "input": TINY})
