"""A1111's sampler parameters: eta, s_churn, s_tmin, s_tmax, s_noise and s_min_uncond, as A1111 1.10 applies them
(k-diffusion's formulas, the samplers that take each, the options that give their defaults, the infotext)."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from engine.sampling.samplers import make_scheduler
from handler.http.app import create_app
from handler.router import route
from handler.worker import make_handler
from schemas.sampler_params import SamplerParams
from schemas.samplers import resolve

BASE = {"prompt": "a lighthouse", "negative_prompt": "fog", "steps": 3, "width": 64, "height": 64, "seed": 11}


def run(engine, **extra) -> dict:
    return route(engine, "POST", "txt2img", {**BASE, **extra})


def pixels(response: dict, index: int = 0) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(response["images"][index]))))


def infotext(response: dict) -> str:
    return json.loads(response["info"])["infotexts"][0]


def scheduler_for(engine, name: str, params: SamplerParams, steps: int, begin: int = 0):
    scheduler = make_scheduler(engine.model.scheduler_config, *resolve(name, None), [0], params)
    scheduler.set_timesteps(steps)
    scheduler.set_begin_index(begin * scheduler.order)
    return scheduler


def randn(seed: int) -> torch.Tensor:
    return torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- one step against k-diffusion's formula

def test_euler_ancestral_step_is_k_diffusions_with_eta(engine):
    eta = 0.4
    scheduler = scheduler_for(engine, "Euler a", SamplerParams(eta=eta), steps=5)
    sample, model_output = randn(0) * scheduler.init_noise_sigma, randn(1)
    prev = scheduler.step(model_output, scheduler.timesteps[0], sample,
                          generator=[torch.Generator().manual_seed(2)]).prev_sample

    # k-diffusion's sample_euler_ancestral, one step, with get_ancestral_step written out
    sigma, sigma_next = float(scheduler.sigmas[0]), float(scheduler.sigmas[1])
    sigma_up = min(sigma_next, eta * (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5)
    sigma_down = (sigma_next**2 - sigma_up**2) ** 0.5
    denoised = sample - sigma * model_output
    derivative = (sample - denoised) / sigma
    expected = sample + derivative * (sigma_down - sigma) + randn(2) * sigma_up
    torch.testing.assert_close(prev, expected)


def test_euler_step_with_churn_is_k_diffusions(engine):
    s_churn, s_noise, steps, begin = 1.0, 0.8, 4, 1  # an img2img-like run: 3 of 4 steps
    scheduler = scheduler_for(engine, "Euler", SamplerParams(s_churn=s_churn, s_noise=s_noise), steps, begin)
    sample, model_output = randn(0) * float(scheduler.sigmas[begin]), randn(1)
    lifted, timestep = scheduler.churn(sample, scheduler.timesteps[begin], [torch.Generator().manual_seed(2)])
    model_input = scheduler.scale_model_input(lifted, timestep)
    prev = scheduler.step(model_output, timestep, lifted).prev_sample

    # k-diffusion's sample_euler, one step; gamma divides by the steps of this run
    sigma, sigma_next = float(scheduler.sigmas[begin]), float(scheduler.sigmas[begin + 1])
    gamma = min(s_churn / (steps - begin), 2**0.5 - 1)
    sigma_hat = sigma * (gamma + 1)
    sample_hat = sample + randn(2) * s_noise * (sigma_hat**2 - sigma**2) ** 0.5
    denoised = sample_hat - sigma_hat * model_output
    expected = sample_hat + (sample_hat - denoised) / sigma_hat * (sigma_next - sigma_hat)
    torch.testing.assert_close(lifted, sample_hat)
    torch.testing.assert_close(prev, expected)
    # the model evaluates the lifted sample at sigma_hat: its input scale and timestep are sigma_hat's
    torch.testing.assert_close(model_input, sample_hat / (sigma_hat**2 + 1) ** 0.5)
    alphas = scheduler.alphas_cumprod.double()
    training_log_sigmas = (((1 - alphas) / alphas) ** 0.5).log().numpy()
    assert np.exp(np.interp(float(timestep), np.arange(len(alphas)), training_log_sigmas)) == pytest.approx(sigma_hat)


# ---------------------------------------------------------------- images

def test_euler_a_at_eta_0_is_euler(engine):
    assert (pixels(run(engine, sampler_name="Euler a", eta=0)) == pixels(run(engine, sampler_name="Euler"))).all()


def test_dpm2_a_at_eta_0_is_dpm2(engine):
    """Up to rounding: the two diffusers schedulers compute DPM2's midpoints in different float operations."""
    dpm2 = pixels(run(engine, sampler_name="DPM2")).astype(int)
    assert np.abs(pixels(run(engine, sampler_name="DPM2 a", eta=0)) - dpm2).max() <= 1
    assert np.abs(pixels(run(engine, sampler_name="DPM2 a")) - dpm2).max() > 1


@pytest.mark.parametrize("sampler", ["Euler a", "DPM2 a", "DPM++ 2S a", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 3M SDE"])
def test_eta_changes_ancestral_and_sde_images(engine, sampler):
    default = pixels(run(engine, sampler_name=sampler))
    assert (pixels(run(engine, sampler_name=sampler, eta=1.0)) == default).all()  # eta 1 is the default
    assert not (pixels(run(engine, sampler_name=sampler, eta=0.5)) == default).all()


@pytest.mark.parametrize("sampler", ["DPM2 a", "DPM++ 2S a", "DPM++ SDE", "DPM++ 2M SDE"])
def test_s_noise_changes_ancestral_and_sde_images(engine, sampler):
    assert not (pixels(run(engine, sampler_name=sampler, s_noise=0.5))
                == pixels(run(engine, sampler_name=sampler))).all()


@pytest.mark.parametrize("sampler", ["Euler", "Heun", "DPM2"])
def test_s_churn_changes_the_images_of_the_samplers_that_take_it(engine, sampler):
    default = pixels(run(engine, sampler_name=sampler))
    churned = pixels(run(engine, sampler_name=sampler, s_churn=2.0))
    assert not (churned == default).all()
    # s_tmin above every sigma of the schedule: no step churns
    assert (pixels(run(engine, sampler_name=sampler, s_churn=2.0, s_tmin=100.0)) == default).all()
    # and s_noise scales the churn's noise
    assert not (pixels(run(engine, sampler_name=sampler, s_churn=2.0, s_noise=0.5)) == churned).all()


@pytest.mark.parametrize("sampler, params", [
    ("Euler a", {"s_noise": 0.5, "s_churn": 2.0}),  # A1111 passes Euler a no s_* parameter
    ("DPM++ 2M", {"eta": 0.5, "s_noise": 0.5, "s_churn": 2.0}),
    ("Euler", {"eta": 0.5}),
    ("LMS", {"eta": 0.3, "s_churn": 2.0, "s_tmin": 1.0, "s_tmax": 5.0, "s_noise": 0.5}),
])
def test_parameters_a_sampler_does_not_take_are_accepted_and_ignored(engine, sampler, params):
    response = run(engine, sampler_name=sampler, **params)
    assert (pixels(response) == pixels(run(engine, sampler_name=sampler))).all()
    assert "Eta" not in infotext(response) and "Sigma" not in infotext(response)


# ---------------------------------------------------------------- s_min_uncond (NGMS)

@pytest.fixture
def unet_batches(engine, monkeypatch) -> list[int]:
    """The batch size of every UNet evaluation from now on."""
    unet, batches = engine.model.unet, []
    forward = unet.forward

    def counting(sample, *args, **kwargs):
        batches.append(sample.shape[0])
        return forward(sample, *args, **kwargs)

    monkeypatch.setattr(unet, "forward", counting)
    return batches


def test_s_min_uncond_skips_the_negative_prompt_every_other_evaluation_below_it(engine, unet_batches):
    plain = run(engine, sampler_name="Euler", steps=4, batch_size=2)
    assert unet_batches == [4, 4, 4, 4] and "NGMS" not in infotext(plain)
    unet_batches.clear()
    skipping = run(engine, sampler_name="Euler", steps=4, batch_size=2, s_min_uncond=100)  # above every sigma
    assert unet_batches == [4, 2, 4, 2]
    assert "NGMS: 100" in infotext(skipping)
    assert json.loads(skipping["info"])["extra_generation_params"]["NGMS"] == 100
    assert not (pixels(skipping) == pixels(plain)).all()


def test_s_min_uncond_compares_each_evaluations_sigma(engine, unet_batches):
    sigmas = scheduler_for(engine, "Euler", SamplerParams(), steps=4).sigmas
    between = float((sigmas[1] * sigmas[3]) ** 0.5)  # below the second evaluation's sigma, above the fourth's
    run(engine, sampler_name="Euler", steps=4, s_min_uncond=between)
    assert unet_batches == [2, 2, 2, 1]
    unet_batches.clear()
    response = run(engine, sampler_name="Euler", steps=4, s_min_uncond=float(sigmas[3]) / 2)  # below them all
    assert unet_batches == [2, 2, 2, 2] and "NGMS" not in infotext(response)


def test_s_min_uncond_compares_the_timestep_for_a1111s_timestep_samplers(engine, unet_batches):
    # DDIM's 4 timesteps are 751, 501, 251, 1: of the odd evaluations, only timestep 1 is below 300
    run(engine, sampler_name="DDIM", steps=4, s_min_uncond=300)
    assert unet_batches == [2, 2, 2, 1]


def test_s_min_uncond_comes_from_the_option_when_the_request_sends_none(engine, unet_batches):
    response = run(engine, sampler_name="Euler", steps=2, override_settings={"s_min_uncond": 100})
    assert unet_batches == [2, 1] and "NGMS: 100" in infotext(response)


# ---------------------------------------------------------------- infotext and options

@pytest.mark.parametrize("sampler, request_params, expected", [
    ("Euler a", {"eta": 0.5}, "Eta: 0.5"),
    ("Euler a", {"eta": 1.0}, None),
    ("Euler a", {}, None),
    ("DDIM", {"eta": 0.3}, "Eta DDIM: 0.3"),
    ("DDIM", {"eta": 0}, None),
    ("DPM2 a", {"eta": 0.7, "s_noise": 0.9}, "Eta: 0.7, Sigma noise: 0.9"),
    ("Euler", {"s_churn": 1.0, "s_tmin": 0.5, "s_tmax": 10.0, "s_noise": 0.9},
     "Sigma churn: 1, Sigma tmin: 0.5, Sigma tmax: 10, Sigma noise: 0.9"),
    ("Euler", {"s_churn": 0, "s_tmin": 0, "s_tmax": 0, "s_noise": 1}, None),
    ("Heun", {"s_churn": 1.0, "s_min_uncond": 100}, "Sigma churn: 1, NGMS: 100, Version: "),
])
def test_infotext_records_the_parameters_as_a1111_does(engine, sampler, request_params, expected):
    text = infotext(run(engine, sampler_name=sampler, steps=2, **request_params))
    if expected is None:
        assert "Eta" not in text and "Sigma" not in text
    else:
        assert f"Model: tiny-sd15, {expected}" in text


def test_options_give_the_defaults(engine):
    options = route(engine, "GET", "options", {})
    assert {name: options[name] for name in ("eta_ancestral", "eta_ddim", "s_churn", "s_tmin", "s_tmax", "s_noise",
                                              "s_min_uncond")} == {
        "eta_ancestral": 1.0, "eta_ddim": 0.0, "s_churn": 0.0, "s_tmin": 0.0, "s_tmax": 0.0, "s_noise": 1.0,
        "s_min_uncond": 0.0}
    by_option = run(engine, sampler_name="Euler a", override_settings={"eta_ancestral": 0.5})
    assert (pixels(by_option) == pixels(run(engine, sampler_name="Euler a", eta=0.5))).all()
    assert "Eta: 0.5" in infotext(by_option)
    # the request's value wins over the option's
    assert (pixels(run(engine, sampler_name="Euler a", eta=1, override_settings={"eta_ancestral": 0.5}))
            == pixels(run(engine, sampler_name="Euler a"))).all()
    ddim = run(engine, sampler_name="DDIM", override_settings={"eta_ddim": 0.4})
    assert "Eta DDIM: 0.4" in infotext(ddim)
    churned = run(engine, sampler_name="Euler", override_settings={"s_churn": 2.0, "s_tmax": 0})
    assert (pixels(churned) == pixels(run(engine, sampler_name="Euler", s_churn=2.0))).all()
    assert "Sigma churn: 2" in infotext(churned) and "Sigma tmax" not in infotext(churned)


def test_eta_0_turns_ensd_off(engine):
    ensd = {"override_settings": {"eta_noise_seed_delta": 31337}}
    noiseless = run(engine, sampler_name="Euler a", eta=0, **ensd)
    assert (pixels(noiseless) == pixels(run(engine, sampler_name="Euler a", eta=0))).all()
    assert "ENSD" not in infotext(noiseless)


# ---------------------------------------------------------------- clients, through both adapters

# A1111's own defaults (eta null), eta 0 with Euler a, and webuiapi's defaults
CLIENT_PAYLOADS = [
    {"sampler_name": "Euler a", "eta": None, "s_churn": None, "s_tmax": None, "s_tmin": None, "s_noise": None,
     "s_min_uncond": None},
    {"sampler_name": "Euler a", "eta": 0},
    {"sampler_name": "Euler a", "sampler_index": "Euler a", "scheduler": "automatic", "eta": 1.0, "s_churn": 0,
     "s_tmax": 0, "s_tmin": 0, "s_noise": 1},
]


@pytest.mark.parametrize("payload", CLIENT_PAYLOADS)
def test_client_defaults_are_accepted_by_the_runpod_handler(engine, payload):
    result = make_handler(engine)({"input": {**BASE, "steps": 2, **payload}})
    assert "error" not in result, result
    assert len(result["images"]) == 1


@pytest.mark.parametrize("payload", CLIENT_PAYLOADS)
def test_client_defaults_are_accepted_by_the_http_api(engine, payload):
    response = TestClient(create_app(engine)).post("/sdapi/v1/txt2img", json={**BASE, "steps": 2, **payload})
    assert response.status_code == 200, response.text
    assert len(response.json()["images"]) == 1


def test_out_of_range_eta_is_a_422_naming_the_field(engine):
    response = TestClient(create_app(engine)).post("/sdapi/v1/txt2img", json={**BASE, "eta": 2})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "eta"]
