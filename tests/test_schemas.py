"""The txt2img request schema: A1111's API defaults, unknown fields ignored, not-implemented fields
refused by name, limits, seeds, and no torch import (../shared/a1111-api.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from a1111_payloads import A1111_TXT2IMG
from handler.errors import describe
from schemas import Txt2ImgRequest, limits

# What webuiapi (PyPI) sends for a plain `api.txt2img(prompt=...)` with its defaults.
WEBUIAPI_DEFAULT_PAYLOAD = {
    "enable_hr": False,
    "hr_scale": 2,
    "hr_upscaler": "Latent",
    "hr_second_pass_steps": 0,
    "hr_resize_x": 0,
    "hr_resize_y": 0,
    "denoising_strength": 0.7,
    "firstphase_width": 0,
    "firstphase_height": 0,
    "prompt": "a cat",
    "styles": [],
    "seed": -1,
    "subseed": -1,
    "subseed_strength": 0.0,
    "seed_resize_from_h": 0,
    "seed_resize_from_w": 0,
    "batch_size": 1,
    "n_iter": 1,
    "steps": 20,
    "cfg_scale": 7.0,
    "width": 512,
    "height": 512,
    "restore_faces": False,
    "tiling": False,
    "do_not_save_samples": False,
    "do_not_save_grid": False,
    "negative_prompt": "",
    "eta": 1.0,
    "s_churn": 0,
    "s_tmax": 0,
    "s_tmin": 0,
    "s_noise": 1,
    "override_settings": {},
    "override_settings_restore_afterwards": True,
    "sampler_name": "Euler a",
    "sampler_index": "Euler a",
    "scheduler": "automatic",
    "script_name": None,
    "script_args": [],
    "send_images": True,
    "save_images": False,
    "alwayson_scripts": {},
}

# A value other than the accepted default(s) for each field the worker does not implement yet.
NON_DEFAULT_VALUES = {
    "refiner_checkpoint": "sd_xl_refiner_1.0.safetensors",
    "alwayson_scripts": {"ControlNet": {"args": []}},
    "save_images": True,
}


def refusal(payload: dict) -> str:
    """The one-line message the worker sends back for an invalid payload."""
    with pytest.raises(ValidationError) as caught:
        Txt2ImgRequest.model_validate(payload)
    message = describe(caught.value)
    assert "\n" not in message, message
    return message


# ---------------------------------------------------------------- defaults

@pytest.mark.parametrize("field,expected", list(A1111_TXT2IMG.items()), ids=list(A1111_TXT2IMG))
def test_default_is_a1111s(field, expected):
    assert field in Txt2ImgRequest.model_fields, f"{field} is not a request field"
    actual = getattr(Txt2ImgRequest(), field)
    assert actual == expected
    if expected is None or isinstance(expected, (bool, str, list, dict)):
        assert type(actual) is type(expected)
    else:  # a number: int and float compare equal, but a bool is not a number here
        assert isinstance(actual, (int, float)) and not isinstance(actual, bool)


def test_default_request_round_trips_through_its_json_echo():
    echoed = Txt2ImgRequest().model_dump(mode="json")
    for field, expected in A1111_TXT2IMG.items():
        assert echoed[field] == expected, field
    assert Txt2ImgRequest.model_validate(echoed) == Txt2ImgRequest()


def test_default_sampler_is_euler_on_its_own_schedule():
    sampler, schedule = Txt2ImgRequest().sampler
    assert sampler.name == "Euler"
    assert schedule.name == "automatic"


def test_sampler_name_wins_over_sampler_index():
    request = Txt2ImgRequest(sampler_name="DPM++ 2M", sampler_index="Euler a")
    assert request.sampler[0].name == "DPM++ 2M"
    assert Txt2ImgRequest(sampler_index="Euler a").sampler[0].name == "Euler a"


# ---------------------------------------------------------------- unknown fields

def test_unknown_fields_are_accepted_and_ignored():
    request = Txt2ImgRequest.model_validate(
        {"prompt": "a cat", "steps": 3, "not_an_a1111_field": 1, "controlnet_units": [{"x": 1}], "use_async": True})
    assert request.prompt == "a cat" and request.steps == 3
    dumped = request.model_dump()
    assert "not_an_a1111_field" not in dumped and "controlnet_units" not in dumped and "use_async" not in dumped


# ---------------------------------------------------------------- not implemented: refused, never dropped

def test_every_not_implemented_field_has_a_test_value():
    missing = set(Txt2ImgRequest.not_implemented) - set(NON_DEFAULT_VALUES)
    assert not missing, f"add a non-default value for {sorted(missing)} to NON_DEFAULT_VALUES"


@pytest.mark.parametrize("field", sorted(Txt2ImgRequest.not_implemented))
def test_not_implemented_field_with_non_default_value_is_refused_by_name(field):
    value = NON_DEFAULT_VALUES[field]
    assert value not in Txt2ImgRequest.not_implemented[field]
    message = refusal({"prompt": "a cat", field: value})
    assert message.startswith(f"{field}:"), message
    assert "not supported" in message


@pytest.mark.parametrize("field", sorted(Txt2ImgRequest.not_implemented))
def test_not_implemented_field_sent_with_its_a1111_default_is_accepted(field):
    default = A1111_TXT2IMG.get(field, Txt2ImgRequest.model_fields[field].default)
    assert getattr(Txt2ImgRequest.model_validate({field: default}), field) == default


# ---------------------------------------------------------------- real clients

def test_webuiapi_default_payload_validates():
    request = Txt2ImgRequest.model_validate(WEBUIAPI_DEFAULT_PAYLOAD)
    sampler, schedule = request.sampler
    assert sampler.name == "Euler a"
    assert schedule.name == "automatic"
    assert request.steps == 20 and request.eta == 1.0 and request.denoising_strength == 0.7
    assert request.seed_resize_from is None  # 0 means "off", as -1 does


def test_scheduler_is_case_insensitive_name_or_label():
    for value in ("automatic", "Automatic", "AUTOMATIC", "karras", "Karras", "SGM Uniform", "sgm_uniform"):
        Txt2ImgRequest(sampler_name="Euler", scheduler=value)


# ---------------------------------------------------------------- sizes and limits

@pytest.mark.parametrize("field", ["width", "height"])
@pytest.mark.parametrize("value, floored", [(65, 64), (100, 96), (513, 512), (1020, 1016)])
def test_side_not_multiple_of_8_is_floored_as_a1111_generates_it(field, value, floored):
    assert getattr(Txt2ImgRequest.model_validate({field: value}), field) == floored


@pytest.mark.parametrize("field", ["width", "height"])
def test_side_limits(field):
    Txt2ImgRequest.model_validate({field: limits.MAX_SIDE})
    Txt2ImgRequest.model_validate({field: limits.MIN_SIDE})
    assert refusal({field: limits.MAX_SIDE + limits.SIDE_MULTIPLE}).startswith(f"{field}:")
    assert refusal({field: limits.MIN_SIDE - limits.SIDE_MULTIPLE}).startswith(f"{field}:")


def test_steps_limits():
    assert refusal({"steps": 0}).startswith("steps:")
    assert refusal({"steps": -5}).startswith("steps:")
    assert refusal({"steps": limits.MAX_STEPS + 1}).startswith("steps:")
    assert Txt2ImgRequest(steps=1).steps == 1
    assert Txt2ImgRequest(steps=limits.MAX_STEPS).steps == limits.MAX_STEPS


def test_batch_size_and_n_iter_limits():
    assert refusal({"batch_size": limits.MAX_BATCH_SIZE + 1}).startswith("batch_size:")
    assert refusal({"batch_size": 0}).startswith("batch_size:")
    assert refusal({"n_iter": limits.MAX_N_ITER + 1}).startswith("n_iter:")
    # each within its own limit, but too many images together
    batch_size = limits.MAX_BATCH_SIZE
    n_iter = limits.MAX_IMAGES // batch_size + 1
    assert n_iter <= limits.MAX_N_ITER
    message = refusal({"batch_size": batch_size, "n_iter": n_iter})
    assert "batch_size" in message and str(limits.MAX_IMAGES) in message
    ok = Txt2ImgRequest(batch_size=batch_size, n_iter=limits.MAX_IMAGES // batch_size)
    assert ok.batch_size * ok.n_iter <= limits.MAX_IMAGES


def test_cfg_scale_limits():
    assert refusal({"cfg_scale": limits.MAX_CFG_SCALE + 1}).startswith("cfg_scale:")
    assert refusal({"cfg_scale": limits.MIN_CFG_SCALE - 0.5}).startswith("cfg_scale:")


def test_wrong_type_names_the_field_and_value():
    message = refusal({"steps": "many"})
    assert message.startswith("steps:") and '"many"' in message


def test_several_errors_are_joined_on_one_line():
    message = refusal({"width": 63, "steps": 0})
    assert "width:" in message and "steps:" in message


# ---------------------------------------------------------------- seeds

@pytest.mark.parametrize("blank", ["", None])
@pytest.mark.parametrize("field", ["seed", "subseed"])
def test_blank_seed_means_random(field, blank):
    assert getattr(Txt2ImgRequest.model_validate({field: blank}), field) == -1


def test_seed_range():
    assert Txt2ImgRequest(seed=0).seed == 0
    assert Txt2ImgRequest(seed=2**32 - 1).seed == 2**32 - 1
    assert refusal({"seed": -2}).startswith("seed:")
    assert refusal({"seed": 2**32}).startswith("seed:")


# ---------------------------------------------------------------- no torch

def test_schemas_never_import_torch():
    code = "import schemas, schemas.samplers, schemas.limits, sys; assert 'torch' not in sys.modules, 'torch imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr
