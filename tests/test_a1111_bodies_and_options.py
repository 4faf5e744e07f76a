"""A1111 clients unchanged (issue 15, part): A1111's request bodies as its clients send them (null meaning the
default, the full documented parameter lists, the OpenAPI-default bodies) through both adapters, and A1111's
whole option set (GET /options, POST round trips, any A1111 option in override_settings)."""

from __future__ import annotations

import base64
import hashlib
import io
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from a1111_payloads import (A1111_IMG2IMG, A1111_TXT2IMG, DOCUMENTED_TXT2IMG, IMG2IMG_NULL_REFUSED,
                            TXT2IMG_NULL_REFUSED, all_null, openapi_defaults)
from handler.errors import describe
from handler.http.app import create_app
from handler.router import route
from handler.worker import make_handler
from schemas.options import UI_OPTIONS, Options

FAST = {"steps": 1, "width": 64, "height": 64}  # A1111's defaults (50 steps, 512x512) are slow on the CPU


def png_b64(width: int = 64, height: int = 64) -> str:
    image = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


INIT = {"init_images": [png_b64()]}


@pytest.fixture(scope="module")
def http(engine) -> TestClient:
    return TestClient(create_app(engine))


@pytest.fixture(params=["runpod", "http"])
def call(request, engine, http):
    """call(endpoint, body=None, method="POST"): the answer of one adapter, which must succeed."""
    if request.param == "runpod":
        handler = make_handler(engine)

        def through_runpod(endpoint: str, body: dict | None = None, method: str = "POST") -> Any:
            envelope = {"api": {"method": method, "endpoint": f"/sdapi/v1/{endpoint}"}, "payload": body or {}}
            answer = handler({"input": envelope})
            assert not (isinstance(answer, dict) and "error" in answer), answer["error"]
            return answer
        return through_runpod

    def through_http(endpoint: str, body: dict | None = None, method: str = "POST") -> Any:
        response = http.request(method, f"/sdapi/v1/{endpoint}", json=body)
        assert response.status_code == 200, response.text
        return response.json()
    return through_http


def refusal(engine, endpoint: str, payload: dict) -> str:
    with pytest.raises(ValueError) as caught:
        route(engine, "POST", endpoint, payload)
    return describe(caught.value)


@pytest.fixture
def options_restored(engine):
    before = engine.options
    yield
    engine.options = before


# ---------------------------------------------------------------- request bodies as A1111's clients send them

def test_the_documented_txt2img_list_is_served(call):
    for field in ("negative_prompt", "eta", "sampler_name", "styles", "override_settings", "s_tmax", "script_name"):
        assert DOCUMENTED_TXT2IMG[field] is None
    answer = call("txt2img", {**DOCUMENTED_TXT2IMG, **FAST})
    assert len(answer["images"]) == 1
    assert answer["parameters"]["negative_prompt"] == "" and answer["parameters"]["steps"] == 1


def test_the_full_img2img_list_is_served(call):
    answer = call("img2img", {**A1111_IMG2IMG, **FAST, **INIT})
    assert len(answer["images"]) == 1 and answer["parameters"]["denoising_strength"] == 0.75


@pytest.mark.parametrize("endpoint, body", [("txt2img", openapi_defaults(A1111_TXT2IMG)),
                                            ("img2img", {**openapi_defaults(A1111_IMG2IMG), **INIT})])
def test_a_body_of_the_openapi_defaults_is_served(call, endpoint, body):
    assert len(call(endpoint, {**body, **FAST})["images"]) == 1


@pytest.mark.parametrize("endpoint, nulls, given", [
    ("txt2img", all_null(A1111_TXT2IMG, TXT2IMG_NULL_REFUSED), {}),
    ("img2img", all_null(A1111_IMG2IMG, IMG2IMG_NULL_REFUSED), INIT),
])
def test_null_is_the_fields_default(engine, endpoint, nulls, given):
    """Every field A1111 takes null for gives what leaving it out gives: the same image and echo."""
    explicit = {**given, **FAST, "seed": 7}
    with_nulls = route(engine, "POST", endpoint, {**nulls, **explicit})
    without = route(engine, "POST", endpoint, explicit)
    assert with_nulls["images"] == without["images"]
    assert with_nulls["parameters"] == without["parameters"]


@pytest.mark.parametrize("endpoint, field", [("txt2img", f) for f in sorted(TXT2IMG_NULL_REFUSED)]
                         + [("img2img", f) for f in sorted(IMG2IMG_NULL_REFUSED)])
def test_null_is_refused_where_a1111_refuses_it(engine, endpoint, field):
    body = {**FAST, **(INIT if endpoint == "img2img" else {}), field: None}
    assert refusal(engine, endpoint, body).startswith(f"{field}:")


# ---------------------------------------------------------------- options: A1111's set, whole

A1111_DEFAULTS = {  # options clients read, with A1111 1.10's defaults (face_restoration_model: see README)
    "send_seed": True, "samples_format": "png", "CLIP_stop_at_last_layers": 1, "eta_noise_seed_delta": 0,
    "sd_vae": "Automatic", "face_restoration_model": None, "upscaler_for_img2img": None,
    "img2img_fix_steps": False, "randn_source": "GPU", "eta_ancestral": 1.0, "eta_ddim": 0.0, "s_churn": 0.0,
    "s_tmin": 0.0, "s_tmax": 0.0, "s_noise": 1.0, "s_min_uncond": 0.0, "sdxl_crop_top": 0, "sdxl_crop_left": 0,
    "sdxl_refiner_low_aesthetic_score": 2.5, "sdxl_refiner_high_aesthetic_score": 6.0,
    "hires_fix_refiner_pass": "second pass", "control_net_no_detectmap": False, "jpeg_quality": 80,
    "face_restoration": False, "code_former_weight": 0.5, "samples_save": True, "send_size": True,
    "quicksettings_list": ["sd_model_checkpoint"], "emphasis": "Original", "sd_lora": "None", "tiling": False,
    "initial_noise_multiplier": 1.0, "refiner_switch_by_sample_steps": False, "live_previews_enable": True,
    "api_enable_requests": False, "canvas_hotkey_zoom": "Alt", "hypertile_enable_unet": False,
}


def test_get_options_is_a1111s_set_with_its_defaults(call, engine):
    options = call("options", method="GET")
    for key, default in A1111_DEFAULTS.items():
        assert key in options and options[key] == default, key
    checkpoint = engine.find_checkpoint(options["sd_model_checkpoint"], "sd_model_checkpoint")
    assert options["sd_model_checkpoint"] == checkpoint.title
    assert options["sd_checkpoint_hash"] == hashlib.sha256(checkpoint.path.read_bytes()).hexdigest()
    assert len(options) > 300  # A1111 1.10 with its built-in extensions has about 330


def test_ui_options_are_stored_as_given_and_typed_ones_are_not_among_them():
    for key in UI_OPTIONS:
        assert Options.model_fields[key].annotation is Any, key


@pytest.mark.usefixtures("options_restored")
def test_post_options_round_trips_a_generation_and_a_ui_option(call):
    posted = {"eta_ddim": 0.25, "CLIP_stop_at_last_layers": 2, "send_seed": False, "gallery_height": "600px",
              "quicksettings_list": ["sd_model_checkpoint", "sd_vae"], "not_an_option": 1}
    call("options", posted)
    options = call("options", method="GET")
    assert {key: options[key] for key in posted if key != "not_an_option"} == \
        {key: value for key, value in posted.items() if key != "not_an_option"}
    assert "not_an_option" not in options  # unknown keys are ignored, as A1111 does


@pytest.mark.usefixtures("options_restored")
def test_read_only_options_keep_their_value(call):
    before = call("options", method="GET")
    call("options", {"sd_checkpoint_hash": "0" * 64, "api_enable_requests": True, "jpeg_quality": 90})
    after = call("options", method="GET")
    assert after["jpeg_quality"] == 90
    assert (after["sd_checkpoint_hash"], after["api_enable_requests"]) == (before["sd_checkpoint_hash"], False)


@pytest.mark.usefixtures("options_restored")
def test_override_settings_takes_ui_options_without_effect_on_the_image(call, engine):
    plain = call("txt2img", {**FAST, "seed": 3})
    ui_only = {"send_seed": False, "samples_save": False, "gallery_height": "1px", "canvas_hotkey_zoom": "Shift"}
    overridden = call("txt2img", {**FAST, "seed": 3, "override_settings": ui_only})
    assert overridden["images"] == plain["images"]
    call("txt2img", {**FAST, "seed": 3, "override_settings": ui_only, "override_settings_restore_afterwards": False})
    assert {key: engine.options.model_dump()[key] for key in ui_only} == ui_only


@pytest.mark.parametrize("option, value", [("eta_ddim", 2), ("randn_source", "TPU"), ("s_noise", -1),
                                           ("hires_fix_refiner_pass", "third pass"), ("sdxl_crop_top", -8),
                                           ("control_net_no_detectmap", "sometimes"), ("jpeg_quality", None)])
def test_a_bad_value_for_a_typed_option_is_refused_naming_it(engine, option, value):
    before = engine.options.model_dump()
    assert refusal(engine, "options", {option: value, "send_seed": False}).startswith(f"{option}:")
    message = refusal(engine, "txt2img", {**FAST, "override_settings": {option: value}})
    assert message.startswith("override_settings") and option in message
    assert engine.options.model_dump() == before


def test_an_unknown_override_is_refused_briefly(engine):
    message = refusal(engine, "txt2img", {**FAST, "override_settings": {"not_an_option": 1}})
    assert message.startswith("override_settings") and "not_an_option: unknown option" in message
    assert len(message) < 100  # no list of the 300 supported keys
