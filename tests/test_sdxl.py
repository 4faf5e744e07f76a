"""SDXL served like SD 1.5: through the HTTP app, the RunPod envelope and the bare body; img2img, inpainting (on the
base and on an inpainting checkpoint), hires fix, prompt syntax and every sampler; the refiner; SDXL LoRAs,
embeddings and VAEs, and those of the other family refused; a mixed fleet of SD 1.5 and SDXL checkpoints.

Everything runs on the tiny random-weight checkpoints (engine/tiny) at 64x64 with 2 steps.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import io
import json
from dataclasses import replace

import numpy as np
import pytest
import requests
import torch
import webuiapi
from PIL import Image

import engine.runtime
from conftest import (SD15_EMBEDDING, SD15_LORA, SD15_VAE, SDXL_EMBEDDING, SDXL_INPAINTING_NAME, SDXL_LORA,
                      SDXL_NAME, SDXL_REFINER_NAME, SDXL_VAE, TINY_NAME, decode_png_b64, png_parameters)
from engine.prompts.conditioning import ConditioningParams
from engine.runtime import Engine
from engine.settings import Settings
from engine.store.loading import load_pipeline
from engine.store.vae import VaeFile
from handler.http.app import create_app
from handler.router import route
from handler.worker import make_handler
from schemas import Options, RequestError
from schemas.infotext import parse_infotext
from schemas.samplers import supported_sampler_names

SMALL = {"width": 64, "height": 64, "steps": 2, "seed": 3, "sampler_name": "Euler"}
ADAPTERS = ("http", "envelope", "bare")
REFINED = {"refiner_checkpoint": SDXL_REFINER_NAME, "refiner_switch_at": 0.5}
HIRES = {"enable_hr": True, "denoising_strength": 0.5}
ON_SD15 = {"override_settings": {"sd_model_checkpoint": TINY_NAME}}


# ---------------------------------------------------------------- helpers

def b64png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def pixels(output: dict) -> np.ndarray:
    return np.asarray(decode_png_b64(output["images"][0]).convert("RGB"), dtype=np.int16)


def infotext(output: dict) -> str:
    return json.loads(output["info"])["infotexts"][0]


def short_hash(path, digits: int) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:digits]


def generate(engine, endpoint: str = "txt2img", **payload) -> dict:
    """A request through the router (validation included), with SMALL's defaults."""
    return route(engine, "POST", endpoint, {**SMALL, **payload})


def assert_a1111_image_response(output: dict, size=(64, 64), model=SDXL_NAME) -> dict:
    """A1111's image response: images (PNGs carrying their infotext), the echoed parameters, `info` as JSON text."""
    assert set(output) == {"images", "parameters", "info"}, output.get("error") or output.get("detail")
    assert isinstance(output["info"], str) and isinstance(output["parameters"], dict)
    info = json.loads(output["info"])
    assert len(output["images"]) == len(info["infotexts"]) == 1
    image = decode_png_b64(output["images"][0])
    assert image.size == size
    assert png_parameters(image) == info["infotexts"][0]
    assert info["sd_model_name"] == model and f"Model: {model}," in info["infotexts"][0]
    return info


@pytest.fixture(scope="module")
def base_url(sdxl_engine, serve_app) -> str:
    return serve_app(create_app(sdxl_engine))


@pytest.fixture(scope="module")
def call(sdxl_engine, base_url):
    """call(adapter, endpoint, payload): the A1111 response of a successful request through one adapter: "http"
    (POST /sdapi/v1/<endpoint>), "envelope" (a RunPod job with api + payload) or "bare" (a RunPod job whose
    input is the A1111 body itself, routed by its keys)."""
    handle = make_handler(sdxl_engine)

    def send(adapter: str, endpoint: str, payload: dict) -> dict:
        if adapter == "http":
            response = requests.post(f"{base_url}/sdapi/v1/{endpoint}", json=payload, timeout=300)
            assert response.status_code == 200, response.text[:500]
            return response.json()
        if adapter == "envelope":
            job_input = {"api": {"method": "POST", "endpoint": f"/sdapi/v1/{endpoint}"}, "payload": payload}
        else:
            job_input = payload
        output = handle({"id": f"sdxl-{adapter}", "input": job_input})
        assert "error" not in output, output["error"]
        return output

    return send


def refused(sdxl_engine, base_url, payload: dict, field: str, *needles: str) -> None:
    """The request fails as the caller's error naming `field` and the needles: HTTP 422 with the field's path
    (A1111's status for invalid requests), and a one-line RunPod error."""
    response = requests.post(f"{base_url}/sdapi/v1/txt2img", json={**SMALL, **payload}, timeout=300)
    assert response.status_code == 422, response.text[:500]
    [problem] = response.json()["detail"]
    assert problem["loc"] == ["body", *field.split(".")]
    assert all(needle in problem["msg"] for needle in needles), problem["msg"]
    error = make_handler(sdxl_engine)({"id": "bad", "input": {**SMALL, **payload}})["error"]
    assert error.startswith(f"{field}: ") and "\n" not in error
    assert all(needle in error for needle in needles), error


# ---------------------------------------------------------------- the adapters: txt2img, img2img, inpainting

def test_txt2img_through_every_adapter_in_a1111s_shape(call):
    payload = {**SMALL, "prompt": "a lighthouse at dusk", "negative_prompt": "blurry"}
    outputs = {adapter: call(adapter, "txt2img", payload) for adapter in ADAPTERS}
    for output in outputs.values():
        info = assert_a1111_image_response(output)
        assert info["prompt"] == payload["prompt"] and info["negative_prompt"] == "blurry"
        assert info["all_seeds"] == [3] and info["is_using_inpainting_conditioning"] is False
        assert output["parameters"]["prompt"] == payload["prompt"] and output["parameters"]["steps"] == 2
        assert parse_infotext(info["infotexts"][0])["Model"] == SDXL_NAME
    first = pixels(outputs["http"])
    assert all(np.array_equal(pixels(output), first) for output in outputs.values())
    assert first.std() > 5  # an image, not a flat colour


def test_img2img_through_every_adapter(call, source):
    payload = {**SMALL, "prompt": "a lighthouse", "init_images": [b64png(source)], "denoising_strength": 0.6}
    outputs = [call(adapter, "img2img", payload) for adapter in ADAPTERS]
    for output in outputs:
        info = assert_a1111_image_response(output)
        assert "Denoising strength: 0.6" in info["infotexts"][0]
        assert output["parameters"]["init_images"] is None  # A1111 echoes them only with include_init_images
    assert all(np.array_equal(pixels(output), pixels(outputs[0])) for output in outputs)
    assert np.abs(pixels(outputs[0]) - np.asarray(source)).mean() > 5


@pytest.mark.parametrize("checkpoint", [SDXL_NAME, SDXL_INPAINTING_NAME])
def test_inpainting_keeps_the_unmasked_pixels(call, source, square_mask, checkpoint):
    payload = {**SMALL, "prompt": "a door", "init_images": [b64png(source)], "mask": b64png(square_mask),
               "mask_blur": 0, "inpaint_full_res": False, "denoising_strength": 0.9,
               "override_settings": {"sd_model_checkpoint": checkpoint}}
    outputs = [call(adapter, "img2img", payload) for adapter in ("http", "bare")]
    original, outside = np.asarray(source, dtype=np.int16), np.asarray(square_mask) == 0
    for output in outputs:
        info = assert_a1111_image_response(output, model=checkpoint)
        assert info["is_using_inpainting_conditioning"] is (checkpoint == SDXL_INPAINTING_NAME)
        result = pixels(output)
        assert np.array_equal(result[outside], original[outside])
        assert np.abs(result[24:40, 24:40] - original[24:40, 24:40]).mean() > 5
    assert np.array_equal(pixels(outputs[0]), pixels(outputs[1]))


def test_webuiapi_client_on_sdxl(base_url, source, square_mask):
    """A real A1111 client (webuiapi) sends its full bodies: txt2img, then inpainting on the inpainting checkpoint."""
    port = int(base_url.rsplit(":", 1)[1])
    client = webuiapi.WebUIApi(host="127.0.0.1", port=port, sampler="Euler a", steps=2)
    result = client.txt2img(prompt="a red boat", width=64, height=64, seed=8)
    assert result.image.size == (64, 64) and result.info["sd_model_name"] == SDXL_NAME
    assert client.png_info(result.image).parameters["Model"] == SDXL_NAME
    inpainted = client.img2img(images=[source], mask_image=square_mask, mask_blur=0, inpaint_full_res=False,
                               width=64, height=64, denoising_strength=0.9, seed=8,
                               override_settings={"sd_model_checkpoint": SDXL_INPAINTING_NAME})
    assert inpainted.info["sd_model_name"] == SDXL_INPAINTING_NAME
    assert inpainted.info["is_using_inpainting_conditioning"] is True
    kept = np.asarray(inpainted.image.convert("RGB"))[np.asarray(square_mask) == 0]
    assert np.array_equal(kept, np.asarray(source)[np.asarray(square_mask) == 0])


# ---------------------------------------------------------------- hires fix

@pytest.mark.parametrize("upscaler, adapter", [("Latent", "http"), ("Lanczos", "envelope"), ("2x-tiny", "bare")])
def test_hires_fix(call, upscaler, adapter):
    payload = {**SMALL, **HIRES, "prompt": "a lighthouse", "hr_upscaler": upscaler, "hr_second_pass_steps": 2}
    output = call(adapter, "txt2img", payload)
    info = assert_a1111_image_response(output, size=(128, 128))
    assert info["width"] == 64 and info["height"] == 64  # Size stays the first pass's, as in A1111
    parameters = parse_infotext(info["infotexts"][0])
    assert (parameters["Size-1"], parameters["Size-2"]) == ("64", "64") and parameters["Denoising strength"] == "0.5"
    assert parameters["Hires upscale"] == "2" and parameters["Hires steps"] == "2"
    assert parameters["Hires upscaler"] == upscaler
    assert pixels(output).std() > 5


# ---------------------------------------------------------------- prompt syntax and samplers on SDXL

def test_prompt_syntax_on_sdxl(sdxl_engine):
    prompts = ["a cat", "a (cat:1.5)", "a dog", "[a cat:a dog:1]", "a cat AND a dog", "a cat a dog",
               "a cat BREAK a dog"]
    images = {prompt: pixels(generate(sdxl_engine, prompt=prompt)) for prompt in prompts}
    for i, first in enumerate(prompts):
        for second in prompts[i + 1:]:
            assert not np.array_equal(images[first], images[second]), (first, second)


def test_break_and_and_condition_both_text_encoders_and_the_pooled_embedding(sdxl_engine):
    encoder = sdxl_engine.model.encoder
    params = ConditioningParams.of(Options(), 64, 64)
    broken = encoder.encoding("a cat BREAK a dog", params)
    assert broken.context.shape == (1, 2 * 77, 32 + 64)  # CLIP-L 32 + OpenCLIP 64 wide, two chunks
    assert torch.equal(broken.pooled, encoder.encoding("a cat", params).pooled)  # pooled: the first chunk's
    conditioning = encoder.conditioning("a cat AND a dog", "", 2, params)
    (_, cat), (_, dog) = conditioning.conds
    cat_inputs, dog_inputs = cat.at(0).inputs, dog.at(0).inputs
    assert not torch.equal(cat_inputs["text_embeds"], dog_inputs["text_embeds"])  # each part its own pooled
    assert cat_inputs["time_ids"].tolist() == [[64, 64, 0, 0, 64, 64]]
    uncond = conditioning.uncond.at(0)  # an empty negative prompt is zeros for SDXL, its size ids kept
    assert not uncond.context.any() and not uncond.inputs["text_embeds"].any()
    assert uncond.inputs["time_ids"].tolist() == [[64, 64, 0, 0, 64, 64]]


@pytest.mark.parametrize("sampler", supported_sampler_names())
def test_every_sampler_runs_on_sdxl(sdxl_engine, sampler):
    output = generate(sdxl_engine, prompt="a cat", sampler_name=sampler)
    assert f"Sampler: {sampler}," in infotext(output)
    image = pixels(output)
    assert image.shape == (64, 64, 3) and image.std() > 1


# ---------------------------------------------------------------- the refiner

def test_refiner_switches_part_way_and_reports_it(sdxl_engine, sdxl_models_dir):
    plain = generate(sdxl_engine, prompt="a lighthouse")
    refined = generate(sdxl_engine, prompt="a lighthouse", **REFINED)
    refiner_hash = short_hash(sdxl_models_dir / "Stable-diffusion" / f"{SDXL_REFINER_NAME}.safetensors", 10)
    text = infotext(refined)
    assert f"Refiner: {SDXL_REFINER_NAME} [{refiner_hash}], Refiner switch at: 0.5," in text
    assert parse_infotext(text)["Refiner"] == f"{SDXL_REFINER_NAME} [{refiner_hash}]"
    assert "Hires refiner" not in text
    assert not np.array_equal(pixels(refined), pixels(plain))
    never = generate(sdxl_engine, prompt="a lighthouse", refiner_checkpoint=SDXL_REFINER_NAME, refiner_switch_at=1.0)
    assert np.array_equal(pixels(never), pixels(plain))
    assert "Refiner" not in infotext(never)


def test_the_refiner_stays_loaded_between_requests(sdxl_engine, monkeypatch):
    generate(sdxl_engine, prompt="a boat", **REFINED)  # loads it if needed
    loads = []
    original = engine.runtime.load_pipeline
    monkeypatch.setattr(engine.runtime, "load_pipeline", lambda *a, **k: loads.append(a[0].name) or original(*a, **k))
    refiner_calls = unet_spy(refiner_of(sdxl_engine), monkeypatch)
    generate(sdxl_engine, prompt="a boat", **REFINED)
    assert loads == [] and refiner_calls  # it ran, and nothing was read from disk


def refiner_of(sdxl_engine):
    return sdxl_engine.model_for(sdxl_engine.find_checkpoint(SDXL_REFINER_NAME, "refiner_checkpoint"))


def unet_spy(model, monkeypatch, time_ids: list | None = None) -> list[tuple[int, int]]:
    """The latent size (h, w) of each call of `model`'s UNet (for this test); each call's SDXL time ids (a row per
    condition, the negative prompt's first) go to `time_ids`."""
    calls = []
    unet = model.unet
    original = unet.forward

    def forward(sample, *args, **kwargs):
        calls.append(tuple(sample.shape[-2:]))
        if time_ids is not None:
            time_ids.append(kwargs["added_cond_kwargs"]["time_ids"].tolist())
        return original(sample, *args, **kwargs)

    monkeypatch.setattr(unet, "forward", forward)
    return calls


def test_with_hires_fix_the_refiner_runs_in_the_pass_the_option_says(sdxl_engine, monkeypatch):
    assert sdxl_engine.model.family.key == "sdxl"  # loaded before the refiner: both stay in the cache of 2
    calls = unet_spy(refiner_of(sdxl_engine), monkeypatch)
    images, passes = {}, {}
    for where in ("second pass", "first pass", "both passes"):
        calls.clear()
        overrides = {} if where == "second pass" else {"override_settings": {"hires_fix_refiner_pass": where}}
        output = generate(sdxl_engine, prompt="a lighthouse", **HIRES, **REFINED, **overrides)
        images[where], passes[where] = pixels(output), set(calls)
        parameters = parse_infotext(infotext(output))
        assert parameters["Refiner switch at"] == "0.5" and parameters["Refiner"].startswith(SDXL_REFINER_NAME)
        assert parameters.get("Hires refiner") == (None if where == "second pass" else where)
    first, hires = (8, 8), (16, 16)  # the latents of 64x64 and of 128x128
    assert passes == {"second pass": {hires}, "first pass": {first}, "both passes": {first, hires}}
    assert not np.array_equal(images["second pass"], images["first pass"])
    assert not np.array_equal(images["second pass"], images["both passes"])
    assert not np.array_equal(images["first pass"], images["both passes"])


def test_time_ids_are_each_pass_and_models_own(sdxl_engine, monkeypatch):
    """The base takes (original size, crop, target size) of the pass it runs, the refiner (size, crop, aesthetic
    score): A1111's 6.0 for the prompt and 2.5 for the negative prompt."""
    assert sdxl_engine.model.family.key == "sdxl"
    base_ids, refiner_ids = [], []
    unet_spy(sdxl_engine.model, monkeypatch, base_ids)
    unet_spy(refiner_of(sdxl_engine), monkeypatch, refiner_ids)
    # switching at 0.9, each pass runs its last step (at timestep 0) on the refiner and the others on the base
    payload = {**HIRES, **REFINED, "refiner_switch_at": 0.9, "override_settings": {"hires_fix_refiner_pass":
                                                                                     "both passes"}}
    generate(sdxl_engine, prompt="a lighthouse", negative_prompt="fog", **payload)
    first, hires = (64, 64, 0, 0, 64, 64), (128, 128, 0, 0, 128, 128)
    assert {tuple(map(tuple, ids)) for ids in base_ids} == {(first, first), (hires, hires)}
    assert {tuple(map(tuple, ids)) for ids in refiner_ids} == {((64, 64, 0, 0, 2.5), (64, 64, 0, 0, 6.0)),
                                                               ((128, 128, 0, 0, 2.5), (128, 128, 0, 0, 6.0))}


# ---------------------------------------------------------------- SDXL LoRAs and embeddings

def base_weights(pipe) -> dict[str, dict[str, torch.Tensor]]:
    """The UNet's and text encoders' own weights, by the names they have without LoRA layers."""
    weights = {}
    for name in ("unet", "text_encoder", "text_encoder_2"):
        state = getattr(pipe, name).state_dict()
        weights[name] = {key.replace(".base_layer", ""): value for key, value in state.items() if "lora_" not in key}
    return weights


def test_sdxl_lora_changes_the_image_and_leaves_no_trace(sdxl_engine, sdxl_models_dir):
    before = generate(sdxl_engine, prompt="a cat", seed=21)
    with_lora = generate(sdxl_engine, prompt=f"a cat <lora:{SDXL_LORA}:1>", seed=21)
    data = (sdxl_models_dir / "Lora" / f"{SDXL_LORA}.safetensors").read_bytes()
    addnet_hash = hashlib.sha256(data[8 + int.from_bytes(data[:8], "little"):]).hexdigest()[:12]  # kohya's
    assert parse_infotext(infotext(with_lora))["Lora hashes"] == f"{SDXL_LORA}: {addnet_hash}"
    assert np.abs(pixels(with_lora) - pixels(before)).max() > 10
    after = generate(sdxl_engine, prompt="a cat", seed=21)
    assert np.array_equal(pixels(after), pixels(before))  # bit for bit
    assert "Lora hashes" not in infotext(after)
    model = sdxl_engine.model
    reference = base_weights(load_pipeline(model.checkpoint, torch.device("cpu"), torch.float32))
    current = base_weights(model.pipe)
    for name, weights in reference.items():
        assert current[name].keys() == weights.keys(), name
        assert all(torch.equal(current[name][key], value) for key, value in weights.items()), name
    assert model.encoder.adapters == ()


def test_sdxl_embedding_changes_the_image_and_is_in_ti_hashes(sdxl_engine, sdxl_models_dir):
    plain = generate(sdxl_engine, prompt="a cat")
    styled = generate(sdxl_engine, prompt=f"a {SDXL_EMBEDDING} cat")
    assert not np.array_equal(pixels(styled), pixels(plain))
    expected = short_hash(sdxl_models_dir / "embeddings" / f"{SDXL_EMBEDDING}.safetensors", 12)
    assert parse_infotext(infotext(styled))["TI hashes"] == f"{SDXL_EMBEDDING}: {expected}"
    assert "TI hashes" not in infotext(plain)


@pytest.mark.parametrize("lora, payload, family", [(SD15_LORA, {}, "SDXL"), (SDXL_LORA, ON_SD15, "SD 1.x")])
def test_a_lora_of_the_other_family_is_refused(sdxl_engine, base_url, lora, payload, family):
    refused(sdxl_engine, base_url, {"prompt": f"a cat <lora:{lora}:1>", **payload}, "prompt", f"'{lora}'",
            "another model family", f"the checkpoint is {family}")
    assert sdxl_engine.model.encoder.adapters == ()


def test_an_sd15_embedding_in_an_sdxl_prompt_is_refused(sdxl_engine, base_url):
    refused(sdxl_engine, base_url, {"prompt": "a cat", "negative_prompt": f"({SD15_EMBEDDING}:1.2)"},
            "negative_prompt", f"'{SD15_EMBEDDING}'", "another model family")
    with pytest.raises(RequestError, match=f"'{SD15_EMBEDDING}'"):
        generate(sdxl_engine, prompt=f"a {SD15_EMBEDDING} cat")


def test_embeddings_listing_follows_the_checkpoints_family(base_url):
    listing = requests.get(f"{base_url}/sdapi/v1/embeddings", timeout=30).json()
    assert list(listing["loaded"]) == [SDXL_EMBEDDING] and list(listing["skipped"]) == [SD15_EMBEDDING]
    assert (listing["loaded"][SDXL_EMBEDDING]["shape"], listing["loaded"][SDXL_EMBEDDING]["vectors"]) == (32 + 64, 2)


# ---------------------------------------------------------------- VAEs

def decode_dtypes(vae, monkeypatch) -> list[torch.dtype]:
    """The dtype of the latents each call of vae.decode gets (for this test)."""
    seen = []
    original = vae.decode
    monkeypatch.setattr(vae, "decode", lambda z, *a, **k: seen.append((z.dtype, vae.dtype)) or original(z, *a, **k))
    return seen


@pytest.fixture
def half_vae(sdxl_engine):
    """half(checkpoint): its model, the checkpoint's own VAE replaced by a float16 copy for the test."""
    changed = []

    def half(name: str):
        model = sdxl_engine.model_for(sdxl_engine.find_checkpoint(name, "sd_model_checkpoint"))
        changed.append((model, model.own_vae))
        model.own_vae = copy.deepcopy(model.own_vae).to(torch.float16)
        model.use_vae(None, None)
        return model

    yield half
    for model, own in changed:
        model.own_vae = own
        model.use_vae(None, None)


LATENTS = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))


def test_a_force_upcast_vae_in_half_precision_decodes_in_float32(half_vae, monkeypatch):
    model = half_vae(SDXL_NAME)
    vae = model.vae
    assert vae.dtype == torch.float16 and vae.config.force_upcast
    seen = decode_dtypes(vae, monkeypatch)
    [image] = model.decode_latents(LATENTS)
    assert seen == [(torch.float32, torch.float32)]
    assert vae.dtype == torch.float16  # back to half precision afterwards
    assert image.size == (64, 64) and np.asarray(image).std() > 1


def test_a_half_precision_vae_file_stays_in_half_unless_its_output_is_not_finite(half_vae, sdxl_models_dir,
                                                                                monkeypatch):
    model = half_vae(SDXL_NAME)
    file_vae = copy.deepcopy(model.own_vae)
    model.use_vae(VaeFile(sdxl_models_dir / "VAE" / SDXL_VAE, sdxl_models_dir), file_vae)
    seen = decode_dtypes(file_vae, monkeypatch)
    [finite] = model.decode_latents(LATENTS)
    assert seen == [(torch.float16, torch.float16)]  # an fp16-fixed VAE file: no upcast

    seen.clear()
    original = file_vae.decode

    def not_finite_in_half(z, *args, **kwargs):
        output = original(z, *args, **kwargs)
        if z.dtype == torch.float16:
            output.sample.fill_(float("nan"))
        return output

    monkeypatch.setattr(file_vae, "decode", not_finite_in_half)
    decode_dtypes(file_vae, monkeypatch)
    [retried] = model.decode_latents(LATENTS)
    assert seen == [(torch.float16, torch.float16), (torch.float32, torch.float32)]
    assert file_vae.dtype == torch.float16
    assert np.abs(np.asarray(retried, dtype=np.int16) - np.asarray(finite, dtype=np.int16)).max() <= 2


def test_an_sd15_vae_in_half_precision_stays_in_half(half_vae, monkeypatch):
    """As A1111 and diffusers' SD 1.x pipeline run it: only SDXL's VAE needs float32."""
    model = half_vae(TINY_NAME)
    seen = decode_dtypes(model.vae, monkeypatch)
    model.decode_latents(LATENTS)
    assert seen == [(torch.float16, torch.float16)]


def test_sd_vae_selects_the_sdxl_vae_file(sdxl_engine, sdxl_models_dir):
    own = generate(sdxl_engine, prompt="a cat")
    chosen = generate(sdxl_engine, prompt="a cat", override_settings={"sd_vae": SDXL_VAE})
    parameters = parse_infotext(infotext(chosen))
    assert parameters["VAE"] == SDXL_VAE
    assert parameters["VAE hash"] == short_hash(sdxl_models_dir / "VAE" / SDXL_VAE, 10)
    assert json.loads(chosen["info"])["sd_vae_name"] == SDXL_VAE
    assert not np.array_equal(pixels(chosen), pixels(own))
    assert "VAE" not in parse_infotext(infotext(own))
    assert np.array_equal(pixels(generate(sdxl_engine, prompt="a cat")), pixels(own))  # for that request only


def test_a_vae_of_the_other_family_is_refused(sdxl_engine, base_url):
    refused(sdxl_engine, base_url, {"prompt": "a cat", "override_settings": {"sd_vae": SD15_VAE}},
            "override_settings.sd_vae", f"'{SD15_VAE}'", SDXL_NAME)
    refused(sdxl_engine, base_url, {"prompt": "a cat", "override_settings": {"sd_model_checkpoint": TINY_NAME,
                                                                             "sd_vae": SDXL_VAE}},
            "override_settings.sd_vae", f"'{SDXL_VAE}'", "SDXL VAE", "SD 1.x")


# ---------------------------------------------------------------- a mixed fleet

def test_sd_models_lists_both_families(base_url, sdxl_models_dir):
    listing = requests.get(f"{base_url}/sdapi/v1/sd-models", timeout=30).json()
    names = sorted(item["model_name"] for item in listing)
    assert names == sorted([TINY_NAME, SDXL_NAME, SDXL_REFINER_NAME, SDXL_INPAINTING_NAME])
    for item in listing:
        path = sdxl_models_dir / "Stable-diffusion" / f"{item['model_name']}.safetensors"
        assert item["title"] == f"{path.name} [{short_hash(path, 10)}]"


def test_override_settings_switch_the_family_for_one_request(call, base_url):
    options_before = current_options(base_url)
    sdxl = call("http", "txt2img", {**SMALL, "prompt": "a cat"})
    sd15 = call("bare", "txt2img", {**SMALL, "prompt": "a cat", **ON_SD15})
    assert_a1111_image_response(sd15, model=TINY_NAME)
    assert json.loads(sd15["info"])["sd_model_hash"] != json.loads(sdxl["info"])["sd_model_hash"]
    assert current_options(base_url) == options_before
    again = call("envelope", "txt2img", {**SMALL, "prompt": "a cat"})
    assert_a1111_image_response(again)
    assert np.array_equal(pixels(again), pixels(sdxl))


def current_options(base_url) -> dict:
    options = requests.get(f"{base_url}/sdapi/v1/options", timeout=30).json()
    assert options["sd_model_checkpoint"].startswith(f"{SDXL_NAME}.safetensors [")
    return options


def test_one_model_at_a_time_serves_alternating_families(sdxl_engine, sdxl_models_dir, monkeypatch):
    single = Engine.start(replace(Settings.from_env(), max_models=1), models_dir=sdxl_models_dir, sd_model=TINY_NAME,
                          device="cpu", dtype="float32")
    loads = []
    original = engine.runtime.load_pipeline
    monkeypatch.setattr(engine.runtime, "load_pipeline", lambda *a, **k: loads.append(a[0].name) or original(*a, **k))
    on_sdxl = {"override_settings": {"sd_model_checkpoint": SDXL_NAME}}
    runs = [pixels(generate(single, prompt="a cat", **payload)) for payload in (on_sdxl, {}, on_sdxl, {})]
    assert loads == [f"{SDXL_NAME}.safetensors", f"{TINY_NAME}.safetensors"] * 2 and len(single._loaded) == 1
    assert np.array_equal(runs[0], runs[2]) and np.array_equal(runs[1], runs[3])
    assert np.array_equal(runs[0], pixels(generate(sdxl_engine, prompt="a cat")))  # as with models kept loaded
    refined = generate(single, prompt="a cat", **REFINED, **on_sdxl)
    assert np.array_equal(pixels(refined), pixels(generate(sdxl_engine, prompt="a cat", **REFINED)))
    listing = route(single, "GET", "embeddings", {})  # on SD 1.5: the other way round
    assert list(listing["loaded"]) == [SD15_EMBEDDING] and list(listing["skipped"]) == [SDXL_EMBEDDING]


def test_a_diffusers_folder_serves_like_the_single_file(sdxl_engine, tmp_path):
    """An SDXL checkpoint in the save_pretrained layout (model_index.json) is recognised by its pipeline class and
    gives the single file's pixels for the same weights."""
    single = sdxl_engine.find_checkpoint(SDXL_NAME, "sd_model_checkpoint")
    folder = tmp_path / "Stable-diffusion" / "tiny-sdxl-folder"
    load_pipeline(single, torch.device("cpu"), torch.float32).save_pretrained(folder)
    folder_engine = Engine.start(models_dir=tmp_path, device="cpu", dtype="float32")
    assert folder_engine.model.family.name == "SDXL" and not folder_engine.model.checkpoint.is_single_file
    body = {**SMALL, "prompt": "a (cat:1.2) BREAK in a hat", "negative_prompt": "blurry"}
    from_folder = route(folder_engine, "POST", "txt2img", body)
    assert np.array_equal(pixels(from_folder), pixels(route(sdxl_engine, "POST", "txt2img", body)))
    assert "Model: tiny-sdxl-folder" in infotext(from_folder)
