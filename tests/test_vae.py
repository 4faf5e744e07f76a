"""VAEs: the sd_vae option ("Automatic", "None", a file name) through /options and override_settings,
decoding with the chosen VAE and back after an override, A1111's file layouts, listings, infotext."""

import hashlib
import json

import pytest
from safetensors.torch import save_file

from engine.tiny.addons import write_tiny_vae
from handler.router import route
from handler.worker import make_handler

BASE = {"prompt": "a lighthouse", "steps": 2, "width": 64, "height": 64, "seed": 8}
OTHER = "tiny-other.safetensors"  # bare LDM keys
OTHER_PT = "tiny-other-prefixed.pt"  # the same weights under first_stage_model., in {"state_dict": ...}
BESIDE = "tiny-sd15.vae.safetensors"  # beside the checkpoint, named like it: "Automatic" picks it


@pytest.fixture(scope="module")
def vae_engine(tiny_models_dir_factory, start_tiny_engine):
    models_dir = tiny_models_dir_factory("vae-models")
    write_tiny_vae(models_dir, OTHER, seed=7)
    write_tiny_vae(models_dir, OTHER_PT, seed=7, prefixed=True)
    write_tiny_vae(models_dir, BESIDE, seed=11, folder="Stable-diffusion")
    save_file({"emb_params": __import__("torch").zeros(1, 32)}, models_dir / "VAE" / "not-a-vae.safetensors")
    return start_tiny_engine(models_dir)


def run(engine, decode_png, **extra):
    """(pixels, info) of a txt2img."""
    output = route(engine, "POST", "txt2img", {**BASE, **extra})
    return decode_png(output["images"][0]).tobytes(), json.loads(output["info"])


def short_hash(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:10]


def test_listing_has_the_files_and_checkpoints_do_not(vae_engine):
    models_dir = vae_engine.models_dir
    assert route(vae_engine, "GET", "sd-vae", {}) == [
        {"model_name": "not-a-vae.safetensors", "filename": str(models_dir / "VAE" / "not-a-vae.safetensors")},
        {"model_name": OTHER_PT, "filename": str(models_dir / "VAE" / OTHER_PT)},
        {"model_name": OTHER, "filename": str(models_dir / "VAE" / OTHER)},
        {"model_name": BESIDE, "filename": str(models_dir / "Stable-diffusion" / BESIDE)},
    ]
    assert [m["model_name"] for m in route(vae_engine, "GET", "sd-models", {})] == ["tiny-sd15"]


def test_automatic_uses_the_vae_named_like_the_checkpoint(vae_engine, engine, decode_png):
    assert route(vae_engine, "GET", "options", {})["sd_vae"] == "Automatic"
    pixels, info = run(vae_engine, decode_png)
    beside = short_hash(vae_engine.models_dir / "Stable-diffusion" / BESIDE)
    assert f"Model: tiny-sd15, VAE hash: {beside}, VAE: {BESIDE}, Version:" in info["infotexts"][0]
    assert (info["sd_vae_name"], info["sd_vae_hash"]) == (BESIDE, beside)
    own, own_info = run(engine, decode_png)  # a models directory without VAEs: the checkpoint's own
    assert pixels != own and "VAE" not in own_info["infotexts"][0] and own_info["sd_vae_name"] is None


def test_none_is_the_checkpoints_own(vae_engine, engine, decode_png):
    pixels, info = run(vae_engine, decode_png, override_settings={"sd_vae": "None"})
    assert pixels == run(engine, decode_png)[0]
    assert "VAE" not in info["infotexts"][0] and (info["sd_vae_name"], info["sd_vae_hash"]) == (None, None)


def test_an_override_changes_decoding_for_one_request(vae_engine, decode_png):
    automatic, _ = run(vae_engine, decode_png)
    other, info = run(vae_engine, decode_png, override_settings={"sd_vae": OTHER})
    assert other != automatic
    assert f"VAE hash: {short_hash(vae_engine.models_dir / 'VAE' / OTHER)}, VAE: {OTHER}," in info["infotexts"][0]
    assert run(vae_engine, decode_png)[0] == automatic  # restored afterwards
    prefixed, info = run(vae_engine, decode_png, override_settings={"sd_vae": OTHER_PT})
    assert prefixed == other and info["sd_vae_name"] == OTHER_PT  # same weights in A1111's .pt layout


def test_img2img_encodes_with_the_chosen_vae(vae_engine, decode_png):
    image = route(vae_engine, "POST", "txt2img", BASE)["images"][0]
    request = {**BASE, "init_images": [image], "denoising_strength": 0.5}
    outputs = [decode_png(route(vae_engine, "POST", "img2img", {**request, "override_settings": {"sd_vae": name}})
                          ["images"][0]).tobytes() for name in ("None", OTHER)]
    assert outputs[0] != outputs[1]


def test_options_set_the_vae_until_changed(vae_engine, decode_png):
    other = run(vae_engine, decode_png, override_settings={"sd_vae": OTHER})[0]
    try:
        assert route(vae_engine, "POST", "options", {"sd_vae": OTHER}) is None
        assert route(vae_engine, "GET", "options", {})["sd_vae"] == OTHER
        assert run(vae_engine, decode_png)[0] == other
        run(vae_engine, decode_png, override_settings={"sd_vae": "None"}, override_settings_restore_afterwards=False)
        assert route(vae_engine, "GET", "options", {})["sd_vae"] == "None"
    finally:
        route(vae_engine, "POST", "options", {"sd_vae": "Automatic"})


@pytest.mark.parametrize("send, message", [
    (lambda handler: handler({"input": {**BASE, "override_settings": {"sd_vae": "missing.safetensors"}}}),
     "override_settings.sd_vae: unknown VAE 'missing.safetensors'; available: Automatic, None, not-a-vae.safetensors"),
    (lambda handler: handler({"input": {"api": {"method": "POST", "endpoint": "options"},
                                        "payload": {"sd_vae": "missing"}}}),
     "sd_vae: unknown VAE 'missing'"),
    (lambda handler: handler({"input": {**BASE, "override_settings": {"sd_vae": "not-a-vae.safetensors"}}}),
     "override_settings.sd_vae: VAE 'not-a-vae.safetensors' can't be loaded for checkpoint tiny-sd15.safetensors: "),
])
def test_bad_names_are_clear_errors(vae_engine, send, message):
    result = send(make_handler(vae_engine))
    assert result["error"].startswith(message), result
    assert route(vae_engine, "GET", "options", {})["sd_vae"] == "Automatic"


def test_refresh_lists_new_files(vae_engine):
    path = write_tiny_vae(vae_engine.models_dir, "late.safetensors", seed=3)
    try:
        assert "late.safetensors" not in [v["model_name"] for v in route(vae_engine, "GET", "sd-vae", {})]
        assert route(vae_engine, "POST", "refresh-vae", {}) is None
        assert "late.safetensors" in [v["model_name"] for v in route(vae_engine, "GET", "sd-vae", {})]
    finally:
        path.unlink()
        vae_engine.vaes.refresh()
