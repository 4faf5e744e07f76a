"""Upscalers: A1111 names from the models directory, networks loaded lazily through spandrel, passes and
tiling, the /upscalers listing, and neural upscalers in hires fix."""

import base64
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

import engine.postprocess.upscalers as upscalers_module
from engine.settings import Settings
from engine.postprocess.upscalers import Upscalers
from handler.router import route
from handler.worker import make_handler
from schemas import RequestError

CPU = torch.device("cpu")
COMPACT_4X = "R-ESRGAN General 4xV3"  # RealESRGAN/realesr-general-x4v3.pth: a tiny Compact net


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(int)


@pytest.fixture
def registry(upscaler_models_dir):
    return Upscalers(upscaler_models_dir, CPU, torch.float32, tile=64)


def test_weight_files_get_a1111_names_and_the_listing_a1111s_shape(registry, upscaler_models_dir):
    listing = registry.listing()
    assert [item["name"] for item in listing] == [
        "None", "Lanczos", "Nearest", "2x-tiny", "broken", "R-ESRGAN 4x+", "R-ESRGAN General 4xV3"]
    assert listing[0] == {"name": "None", "model_name": None, "model_path": None, "model_url": None, "scale": 4}
    by_name = {item["name"]: item for item in listing}
    assert by_name["R-ESRGAN 4x+"] == {
        "name": "R-ESRGAN 4x+", "model_name": None, "model_url": None, "scale": 4,
        "model_path": str(upscaler_models_dir / "RealESRGAN" / "RealESRGAN_x4plus.pth")}
    assert by_name["2x-tiny"]["model_name"] == "ESRGAN_4x"  # ESRGAN files: by stem, A1111's model_name


def test_networks_load_on_first_use_and_stay_loaded(registry):
    assert registry._networks == {}  # scanning reads no weights
    network = registry.find(COMPACT_4X, "upscaler_1")
    assert registry.find(COMPACT_4X, "upscaler_1") is network
    assert network.descriptor.architecture.name == "RealESRGAN Compact" and network.scale == 4
    esrgan = registry.find("R-ESRGAN 4x+", "upscaler_1")  # an old-layout ESRGAN (RRDB) state dict, .pth
    assert esrgan.descriptor.architecture.name == "ESRGAN"
    assert registry.find("2x-tiny", "upscaler_1").scale == 2  # .safetensors


def test_a_neural_upscaler_runs_its_network_deterministically(registry):
    image = noise_image(32, 32)
    upscale = registry.find(COMPACT_4X, "upscaler_1")
    result = upscale(image, 128, 128)
    assert result.size == (128, 128)
    assert pixels(result).tolist() == pixels(upscale(image, 128, 128)).tolist()
    lanczos = registry.find("Lanczos", "upscaler_1")(image, 128, 128)
    assert np.abs(pixels(result) - pixels(lanczos)).mean() > 5


def test_a_larger_net_is_run_once_then_downscaled_and_a_smaller_one_repeated(registry):
    image = noise_image(24, 24)
    four = registry.find(COMPACT_4X, "upscaler_1")
    assert pixels(four(image, 48, 48)).tolist() == pixels(four.run(image).resize((48, 48), Image.LANCZOS)).tolist()
    two = registry.find("2x-tiny", "upscaler_1")
    assert pixels(two(image, 96, 96)).tolist() == pixels(two.run(two.run(image))).tolist()
    assert two(image, 24, 24).size == (24, 24)  # the same size: one pass (a 1x net would clean the image)


@pytest.mark.parametrize("name", [COMPACT_4X, "R-ESRGAN 4x+"])
def test_tiled_and_whole_results_agree(upscaler_models_dir, monkeypatch, name):
    """Tiles of 64 (cores of 32 with 16 pixels of context) over 96x80: tiled and whole agree within one
    grey level everywhere, as these nets see less than the context around a pixel. The check is
    sensitive: without context, the Compact net's tiles differ at their seams."""
    image = noise_image(96, 80)
    tiled = Upscalers(upscaler_models_dir, CPU, torch.float32, tile=64).find(name, "upscaler_1")
    whole = Upscalers(upscaler_models_dir, CPU, torch.float32, tile=0).find(name, "upscaler_1")
    expected = pixels(whole.run(image))
    assert np.abs(pixels(tiled.run(image)) - expected).max() <= 1
    if name == COMPACT_4X:
        monkeypatch.setattr(upscalers_module, "TILE_CONTEXT", 0)
        seams = np.abs(pixels(tiled.run(image)) - expected)
        assert seams.max() > 10
        away = np.ones(seams.shape[:2], bool)
        for seam in (64, 128, 192, 256):  # input seams every 32 pixels, 4x
            away[seam - 16:seam + 16] = away[:, seam - 16:seam + 16] = False
        assert seams[away].max() <= 1  # only near the seams


def test_unknown_and_broken_upscalers_are_clear_errors(registry):
    with pytest.raises(RequestError, match=r"upscaler_1: unknown upscaler 'Nope'; available: None, Lanczos, "
                                           r"Nearest, 2x-tiny, broken, R-ESRGAN 4x\+, R-ESRGAN General 4xV3$"):
        registry.find("Nope", "upscaler_1")
    with pytest.raises(RequestError, match=r"upscaler_2: upscaler 'broken' \(broken.pth\) can't be loaded: "):
        registry.find("broken", "upscaler_2")


def test_files_added_after_start_are_found(registry, upscaler_models_dir):
    (upscaler_models_dir / "DAT").mkdir(exist_ok=True)
    copy = upscaler_models_dir / "DAT" / "DAT_x4.pth"
    copy.write_bytes((upscaler_models_dir / "RealESRGAN" / "RealESRGAN_x4plus.pth").read_bytes())
    try:
        assert registry.find("DAT x4", "upscaler_1").scale == 4
    finally:
        copy.unlink()


@pytest.mark.parametrize("value, tile", [(None, 192), ("0", 0), ("96", 96)])
def test_tile_size_comes_from_the_environment(monkeypatch, value, tile):
    if value is None:
        monkeypatch.delenv("WORKER_UPSCALE_TILE", raising=False)
    else:
        monkeypatch.setenv("WORKER_UPSCALE_TILE", value)
    assert Settings.from_env().upscale_tile == tile


def test_a_tile_too_small_for_its_context_is_refused(upscaler_models_dir):
    with pytest.raises(ValueError, match="WORKER_UPSCALE_TILE must be 0 .no tiling. or at least 64"):
        Upscalers(upscaler_models_dir, CPU, torch.float32, tile=40)


HIRES = {"prompt": "a castle", "steps": 2, "width": 64, "height": 64, "seed": 5, "enable_hr": True,
         "denoising_strength": 0.5}


def test_hires_fix_uses_neural_upscalers(upscaler_engine):
    neural = route(upscaler_engine, "POST", "txt2img", {**HIRES, "hr_upscaler": COMPACT_4X})
    lanczos = route(upscaler_engine, "POST", "txt2img", {**HIRES, "hr_upscaler": "Lanczos"})
    image = Image.open(io.BytesIO(base64.b64decode(neural["images"][0])))
    assert image.size == (128, 128)
    assert f"Hires upscaler: {COMPACT_4X}" in json.loads(neural["info"])["infotexts"][0]
    assert neural["images"] != lanczos["images"]


def test_hires_fix_lists_latent_modes_and_upscalers_for_an_unknown_name(upscaler_engine):
    error = make_handler(upscaler_engine)({"input": {**HIRES, "hr_upscaler": "Nope"}})["error"]
    assert error.startswith("hr_upscaler: unknown upscaler 'Nope'; available: Latent, Latent (antialiased), ")
    assert error.endswith("None, Lanczos, Nearest, 2x-tiny, broken, R-ESRGAN 4x+, R-ESRGAN General 4xV3")
