"""ControlNet as the sd-webui-controlnet extension's API offers it: units in txt2img and img2img bodies
(alwayson_scripts.controlnet.args) and the extension's endpoints (/controlnet/...), through the HTTP app, the RunPod
envelope and the bare body.

Every unit field has an observable effect; aliases and defaults are the extension's; detected maps are appended or
suppressed; errors name the field; SD 1.5 and SDXL, hires fix, batches, img2img and inpainting, LoRAs; and a
ControlNet request leaves nothing behind. All on the tiny random-weight models at 64x64 with 2 steps.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw

from conftest import TINY_NAME, decode_png_b64, png_parameters
from engine.controlnet import detectors
from engine.controlnet.control_types import control_types
from engine.controlnet.preprocessors import find_preprocessor, module_detail, module_list
from handler.http.app import create_app
from handler.router import http_path, route
from handler.worker import make_handler
from schemas import limits
from schemas.infotext import parse_infotext

SMALL = {"prompt": "a cat", "width": 64, "height": 64, "steps": 2, "seed": 3, "sampler_name": "Euler"}
SD15_CN, SDXL_CN = "tiny-controlnet-sd15", "tiny-controlnet-sdxl"
INPAINTING = "tiny-sd15-inpainting"
FIELD = "alwayson_scripts.controlnet.args"


# ---------------------------------------------------------------- images and helpers

def shapes(box: tuple[int, int, int, int], size: tuple[int, int] = (64, 64)) -> Image.Image:
    """A white rectangle and a grey diagonal on black, edges that canny finds; and a faint rectangle, whose edges
    only low thresholds find."""
    image = Image.new("RGB", size, 0)
    draw = ImageDraw.Draw(image)
    draw.rectangle(box, fill=(255, 255, 255))
    draw.rectangle((size[0] - 24, 2, size[0] - 4, 12), fill=(20, 20, 20))
    draw.line((0, size[1] - 1, size[0] - 1, 0), fill=(128, 128, 128), width=3)
    return image


def b64png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


IMAGE_A, IMAGE_B = shapes((16, 16, 47, 47)), shapes((2, 30, 25, 61))
WIDE = shapes((8, 8, 40, 56), size=(128, 64))  # not square: the resize modes fit it differently
MASK = Image.new("L", (64, 64), 0)
MASK.paste(255, (16, 16, 48, 48))
UNIT = {"enabled": True, "module": "canny", "model": SD15_CN, "image": b64png(IMAGE_A)}


def units(*args: dict, **payload) -> dict:
    return {**payload, "alwayson_scripts": {"controlnet": {"args": list(args)}}}


def pixels(data: str) -> np.ndarray:
    return np.asarray(decode_png_b64(data).convert("RGB"), dtype=np.int16)


def infotext(output: dict, index: int = 0) -> str:
    return json.loads(output["info"])["infotexts"][index]


def same(a: dict, b: dict, index: int = 0) -> bool:
    """Whether two responses' `index`th images are the same pixels."""
    return np.array_equal(pixels(a["images"][index]), pixels(b["images"][index]))


def old_model_hash(path) -> str:
    """A1111's old model hash (the extension's titles): sha256 of the 64 KiB at 1 MiB, 8 digits."""
    return hashlib.sha256(path.read_bytes()[0x100000:0x110000]).hexdigest()[:8]


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def cn_dir(tmp_path_factory, tiny_checkpoint_path):
    """tiny-sd15, tiny-sd15-inpainting and tiny-sdxl; both tiny ControlNets, the tiny annotators, a LoRA."""
    from engine.tiny.annotators import write_tiny_annotators
    from engine.tiny.controlnet import write_tiny_controlnet
    from engine.tiny.lora import write_tiny_lora
    from engine.tiny.sd import INPAINTING as INPAINTING_ARCHITECTURE
    from engine.tiny.sd import SDXL, write_tiny_checkpoint

    directory = tmp_path_factory.mktemp("controlnet-models")
    (directory / "Stable-diffusion").mkdir()
    shutil.copyfile(tiny_checkpoint_path, directory / "Stable-diffusion" / tiny_checkpoint_path.name)
    write_tiny_checkpoint(directory, architecture=INPAINTING_ARCHITECTURE)
    write_tiny_checkpoint(directory, architecture=SDXL)
    write_tiny_controlnet(directory)
    write_tiny_controlnet(directory, "sdxl")
    write_tiny_annotators(directory)
    write_tiny_lora(directory, "tiny-lora", seed=1)
    return directory


@pytest.fixture(scope="module")
def titles(cn_dir) -> dict[str, str]:
    return {name: f"{name} [{old_model_hash(cn_dir / 'ControlNet' / f'{name}.safetensors')}]"
            for name in (SD15_CN, SDXL_CN)}


@pytest.fixture(scope="module")
def cn_engine(cn_dir):
    """An engine on tiny-sd15 that keeps all three checkpoints loaded (CPU, float32)."""
    from engine.runtime import Engine
    from engine.settings import Settings

    return Engine.start(Settings(max_models=3), models_dir=cn_dir, sd_model=TINY_NAME, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def client(cn_engine) -> TestClient:
    return TestClient(create_app(cn_engine))


@pytest.fixture(scope="module")
def call(cn_engine, client):
    """call(adapter, method, endpoint, payload): (status, body) through "http" (the endpoint's own path; a GET's
    payload as its query), "envelope" (RunPod's api + payload) or "bare" (RunPod, the body as the input; POST
    txt2img and img2img only). A RunPod job answers 200, or 422 when it failed."""
    handle = make_handler(cn_engine)

    def send(adapter: str, method: str, endpoint: str, payload: dict | None = None) -> tuple[int, dict]:
        payload = payload or {}
        if adapter == "http":
            response = client.request(method, http_path(endpoint), json=payload if method == "POST" else None,
                                      params=None if method == "POST" else payload)
            return response.status_code, response.json()
        if adapter == "bare":
            assert (method, endpoint) == ("POST", "img2img" if "init_images" in payload else "txt2img")
            job_input = payload
        else:
            job_input = {"api": {"method": method, "endpoint": f"/{endpoint}"}, "payload": payload}
        output = handle({"id": f"controlnet-{adapter}", "input": job_input})
        return (422 if "error" in output else 200), output

    return send


def generate(engine, endpoint: str = "txt2img", **payload) -> dict:
    """A request through the router (validation included), with SMALL's defaults."""
    return route(engine, "POST", endpoint, {**SMALL, **payload})


@pytest.fixture(scope="module")
def plain(cn_engine) -> dict:
    """SMALL without units, generated before any ControlNet request."""
    return generate(cn_engine)


@pytest.fixture(scope="module")
def controlled(cn_engine, plain) -> dict:
    """SMALL with UNIT (every other field its default)."""
    return generate(cn_engine, **units(UNIT))


# ---------------------------------------------------------------- the extension's endpoints

def test_version_settings_and_model_list_answer_the_extensions_shapes(call, titles):
    expected = {"controlnet/version": {"version": 3},
                "controlnet/settings": {"control_net_unit_count": limits.MAX_CONTROLNET_UNITS},
                "controlnet/model_list": {"model_list": [titles[SD15_CN], titles[SDXL_CN]]}}  # no "None"
    for endpoint, body in expected.items():
        assert call("http", "GET", endpoint) == call("envelope", "GET", endpoint) == (200, body)


@pytest.mark.parametrize("alias_names", [False, True])
def test_module_list_names_or_labels_with_their_sliders(call, alias_names):
    query = {"alias_names": alias_names}
    status, body = call("http", "GET", "controlnet/module_list", query)
    assert (status, body) == call("envelope", "GET", "controlnet/module_list", query)
    assert body == {"module_list": module_list(alias_names), "module_detail": module_detail(alias_names)}
    assert ("depth_midas" in body["module_list"]) is alias_names and ("depth" in body["module_list"]) is not alias_names
    assert body["module_detail"]["canny"]["sliders"] == [
        {"name": "Resolution", "value": 512, "min": 64, "max": 2048, "step": 8},
        {"name": "Low Threshold", "value": 100, "min": 1, "max": 255, "step": 1},
        {"name": "High Threshold", "value": 200, "min": 1, "max": 255, "step": 1}]
    assert call("http", "GET", "controlnet/module_list")[1] == {"module_list": module_list(),
                                                                "module_detail": module_detail()}  # names by default


def test_control_types_lists_the_offered_modules_types_and_the_models(call, titles):
    status, body = call("http", "GET", "controlnet/control_types")
    assert (status, body) == call("envelope", "GET", "controlnet/control_types")
    types = body["control_types"]
    assert list(types) == ["All", "Canny", "Depth", "Inpaint", "InstructP2P", "Lineart", "MLSD", "OpenPose", "Recolor",
                           "Scribble", "SoftEdge", "SparseCtrl", "Tile"]
    assert types["All"] == {"module_list": module_list(alias_names=True),
                            "model_list": ["None", titles[SD15_CN], titles[SDXL_CN]],
                            "default_option": "none", "default_model": "None"}
    assert types["Depth"] == {"module_list": ["none", "depth_midas", "depth_anything_v2", "depth_anything"],
                              "model_list": ["None"], "default_option": "depth_midas", "default_model": "None"}
    assert types["SoftEdge"]["module_list"] == ["none", "softedge_hedsafe", "softedge_hed"]
    assert types["Lineart"]["module_list"] == ["none", "lineart_standard (from white bg & black line)",
                                               "invert (from white bg & black line)", "lineart_realistic",
                                               "lineart_coarse"]


def test_control_types_match_models_by_the_extensions_rules():
    models = ["None", "control_sd15_canny [a]", "control_v11p_sd15_canny [b]", "diffusers_xl_canny_mid [c]",
              "controlnet-union-sdxl [d]", "control_v11f1e_sd15_tile [e]", "t2i-blur [f]", "sketch-xl [g]",
              "ip2p-model [h]"]
    types = control_types(models)
    assert types["Canny"] == {  # its name, or "union"; the default: the first ControlNet 1.1 ("11")
        "module_list": ["none", "canny", "invert (from white bg & black line)"],
        "model_list": ["None", "control_sd15_canny [a]", "control_v11p_sd15_canny [b]", "diffusers_xl_canny_mid [c]",
                       "controlnet-union-sdxl [d]"],
        "default_option": "canny", "default_model": "control_v11p_sd15_canny [b]"}
    assert types["Tile"]["model_list"] == ["None", "controlnet-union-sdxl [d]", "control_v11f1e_sd15_tile [e]",
                                           "t2i-blur [f]"]  # "blur" is Tile's alias
    assert types["Tile"]["module_list"] == ["none", "tile_resample", "blur_gaussian"]
    assert types["Scribble"]["model_list"] == ["None", "controlnet-union-sdxl [d]", "sketch-xl [g]"]
    assert types["InstructP2P"] == {"module_list": ["none"], "model_list": ["None", "ip2p-model [h]"],
                                    "default_option": "none", "default_model": "ip2p-model [h]"}  # without "11": 2nd
    assert types["Recolor"] == {"module_list": ["none", "recolor_luminance", "recolor_intensity"],
                                "model_list": ["None"], "default_option": "recolor_luminance", "default_model": "None"}


def test_model_list_looks_in_the_folder_again_unless_update_is_false(call, cn_dir, cn_engine, titles):
    added = cn_dir / "ControlNet" / "extra-canny.safetensors"
    shutil.copyfile(cn_dir / "ControlNet" / f"{SD15_CN}.safetensors", added)
    title = f"extra-canny [{old_model_hash(added)}]"
    try:
        for adapter in ("http", "envelope"):
            assert call(adapter, "GET", "controlnet/model_list", {"update": False})[1]["model_list"] == [
                titles[SD15_CN], titles[SDXL_CN]]
        assert call("http", "GET", "controlnet/model_list")[1]["model_list"] == [title, titles[SD15_CN],
                                                                                titles[SDXL_CN]]
        canny = call("envelope", "GET", "controlnet/control_types")[1]["control_types"]["Canny"]
        assert canny["model_list"] == ["None", title] and canny["default_model"] == title
    finally:
        added.unlink()
        cn_engine.controlnets.refresh()


def test_detect_returns_the_modules_maps_through_both_adapters(call):
    payload = {"controlnet_module": "canny", "controlnet_input_images": [b64png(IMAGE_A), b64png(IMAGE_B)]}
    status, body = call("http", "POST", "controlnet/detect", payload)
    assert (status, body) == call("envelope", "POST", "controlnet/detect", payload)
    assert set(body) == {"images", "info"} and body["info"] == "Success"
    for data, image in zip(body["images"], (IMAGE_A, IMAGE_B), strict=True):
        detected = decode_png_b64(data)
        assert detected.size == (512, 512)  # the default resolution: the short side scaled to 512
        assert np.array_equal(np.asarray(detected), np.asarray(detectors.canny(image, 512, 100, 200)))


def test_detect_takes_the_resolution_and_thresholds(call):
    payload = {"controlnet_module": "canny", "controlnet_input_images": [b64png(WIDE)],
               "controlnet_processor_res": 64, "controlnet_threshold_a": 20, "controlnet_threshold_b": 60}
    detected = decode_png_b64(call("http", "POST", "controlnet/detect", payload)[1]["images"][0])
    assert detected.size == (128, 64)
    assert np.array_equal(np.asarray(detected), np.asarray(detectors.canny(WIDE, 64, 20, 60)))
    assert not np.array_equal(np.asarray(detected), np.asarray(detectors.canny(WIDE, 64, 100, 200)))


@pytest.mark.parametrize("module", ["depth_midas", "softedge_hed", "lineart_realistic"])
def test_detect_runs_the_networks_from_the_models_dir(call, cn_engine, module):
    payload = {"controlnet_module": module, "controlnet_input_images": [b64png(IMAGE_A)],
               "controlnet_processor_res": 64}
    detected = np.asarray(decode_png_b64(call("envelope", "POST", "controlnet/detect", payload)[1]["images"][0]))
    run = cn_engine.annotators.detector(find_preprocessor(module))
    assert detected.shape == (64, 64, 3) and np.array_equal(detected, np.asarray(run(IMAGE_A, 64, 0.5, 0.5)))


def test_detect_runs_openpose_from_the_models_dir(call):
    payload = {"controlnet_module": "openpose", "controlnet_input_images": [b64png(IMAGE_A)],
               "controlnet_processor_res": 64}
    detected = np.asarray(decode_png_b64(call("http", "POST", "controlnet/detect", payload)[1]["images"][0]))
    assert detected.shape == (64, 64, 3) and not detected.any()  # the tiny network finds no one: black


def test_detect_shows_an_inpaint_modules_mask_as_half_transparency(call):
    payload = {"controlnet_module": "inpaint_only", "controlnet_input_images": [b64png(IMAGE_A)],
               "controlnet_masks": [b64png(MASK)]}
    detected = decode_png_b64(call("http", "POST", "controlnet/detect", payload)[1]["images"][0])
    assert detected.mode == "RGBA"
    rgba = np.asarray(detected)
    assert np.array_equal(rgba[..., :3], np.asarray(IMAGE_A))
    assert np.array_equal(rgba[..., 3], np.where(np.asarray(MASK) > 0, 128, 255))


THIN = b64png(Image.new("RGB", (2, 1000), 255))


@pytest.mark.parametrize("payload, field", [
    ({"controlnet_module": "openpose_full"}, "controlnet_module"),  # the extension's, not offered here
    ({"controlnet_module": "no-such-module"}, "controlnet_module"),
    ({"controlnet_module": "inpaint_only"}, "controlnet_masks"),  # one mask per image
    ({"controlnet_input_images": []}, "controlnet_input_images"),
    ({"controlnet_input_images": ["AAAA"] * (limits.MAX_IMAGES + 1)}, "controlnet_input_images"),
    ({"controlnet_input_images": [b64png(IMAGE_A), "not an image"]}, "controlnet_input_images.1"),
    ({"controlnet_input_images": [THIN], "controlnet_processor_res": 2048}, "controlnet_input_images.0"),
])
def test_detect_errors_name_the_field(call, payload, field):
    payload = {"controlnet_module": "canny", "controlnet_input_images": [b64png(IMAGE_A)], **payload}
    status, body = call("http", "POST", "controlnet/detect", payload)
    assert status == 422 and [".".join(map(str, item["loc"])) for item in body["detail"]] == [f"body.{field}"]
    status, output = call("envelope", "POST", "controlnet/detect", payload)
    assert status == 422 and output["error"].startswith(f"{field}:")


def test_modules_that_keep_the_images_size_take_a_thin_image_at_any_resolution(call):
    payload = {"controlnet_module": "invert", "controlnet_input_images": [THIN], "controlnet_processor_res": 2048}
    status, body = call("http", "POST", "controlnet/detect", payload)
    assert status == 200 and decode_png_b64(body["images"][0]).size == (2, 1000)


def test_unknown_controlnet_paths_answer_404_in_a1111s_error_body(client):
    response = client.get("/controlnet/render_nothing")
    assert response.status_code == 404 and response.json()["detail"] == ("GET /controlnet/render_nothing is not "
                                                                          "offered by this worker")
    assert client.get("/sdapi/v1/controlnet/version").status_code == 404  # the extension's are outside /sdapi/v1


# ---------------------------------------------------------------- units in txt2img

@pytest.mark.parametrize("adapter", ["http", "envelope", "bare"])
def test_a_unit_controls_the_image_through_every_adapter(call, adapter, plain, controlled, titles):
    status, output = call(adapter, "POST", "txt2img", {**SMALL, **units(UNIT)})
    assert status == 200, output
    assert len(output["images"]) == 2  # the image, then the unit's detected map
    assert same(output, controlled) and not same(output, plain)
    assert np.array_equal(pixels(output["images"][1]), pixels(controlled["images"][1]))
    expected = (f"Module: canny, Model: {titles[SD15_CN]}, Weight: 1.0, Resize Mode: Crop and Resize, "
                "Processor Res: 512, Threshold A: 100, Threshold B: 200, Guidance Start: 0.0, Guidance End: 1.0, "
                "Pixel Perfect: False, Control Mode: Balanced")
    text = infotext(output)
    assert f'ControlNet 0: "{expected}"' in text and png_parameters(output["images"][0]) == text
    assert parse_infotext(text)["ControlNet 0"] == expected
    assert png_parameters(output["images"][1]) is None  # the map carries no infotext


def test_the_detected_map_is_the_units_map_fitted_to_the_image(controlled):
    fitted = detectors.canny(IMAGE_A, 512, 100, 200).resize((64, 64), Image.Resampling.LANCZOS)
    assert np.array_equal(pixels(controlled["images"][1]), np.asarray(fitted, dtype=np.int16))


@pytest.mark.parametrize("change", [
    {"weight": 0},
    {"guidance_end": 0},
    {"guidance": 0},  # guidance_end's alias
    {"enabled": None},  # omitted: the extension's current default is disabled
    {"enabled": False, "model": "no-such-model"},  # a disabled unit is checked, not run: its model is not looked up
], ids=["weight-0", "guidance_end-0", "guidance-0", "enabled-omitted", "disabled"])
def test_a_unit_without_effect_gives_the_image_without_units(cn_engine, plain, change):
    unit = {key: value for key, value in {**UNIT, **change}.items() if value is not None}
    output = generate(cn_engine, **units(unit))
    assert same(output, plain)
    if not unit.get("enabled"):
        assert len(output["images"]) == 1 and "ControlNet" not in infotext(output)


@pytest.mark.parametrize("change, shown", [
    ({"image": b64png(IMAGE_B)}, None),
    ({"guidance_start": 0.5}, "Guidance Start: 0.5"),
    ({"weight": 0.5}, "Weight: 0.5"),
    ({"threshold_a": 20, "threshold_b": 40}, "Threshold A: 20.0, Threshold B: 40.0"),
    # the image runs at the resolution that fits it to 64x64; the infotext keeps the unit's own (as the extension)
    ({"pixel_perfect": True}, "Processor Res: 512, Threshold A: 100, Threshold B: 200, Guidance Start: 0.0, "
                              "Guidance End: 1.0, Pixel Perfect: True"),
], ids=["image", "guidance_start", "weight", "thresholds", "pixel_perfect"])
def test_each_unit_field_changes_the_image(cn_engine, plain, controlled, change, shown):
    output = generate(cn_engine, **units({**UNIT, **change}))
    assert not same(output, controlled) and not same(output, plain)
    if shown:
        assert shown in infotext(output)


def test_the_three_control_modes_differ_and_are_named_or_numbered(cn_engine, controlled):
    prompt_first = generate(cn_engine, **units({**UNIT, "control_mode": 1}))
    controlnet_first = generate(cn_engine, **units({**UNIT, "control_mode": "ControlNet is more important"}))
    assert not same(prompt_first, controlled) and not same(controlnet_first, controlled)
    assert not same(prompt_first, controlnet_first)
    assert "Control Mode: My prompt is more important" in infotext(prompt_first)
    assert same(generate(cn_engine, **units({**UNIT, "control_mode": 2})), controlnet_first)


def test_resize_modes_fit_the_control_image_and_are_named_or_numbered(cn_engine):
    wide = {**UNIT, "image": b64png(WIDE)}
    by_number = generate(cn_engine, **units({**wide, "resize_mode": 0}))
    by_name = generate(cn_engine, **units({**wide, "resize_mode": "Just Resize"}))
    cropped = generate(cn_engine, **units(wide))  # "Crop and Resize"
    assert same(by_number, by_name) and same(by_number, by_name, index=1)
    assert not same(by_name, cropped) and not same(by_name, cropped, index=1)  # the maps are fitted differently
    assert "Resize Mode: Just Resize" in infotext(by_number)
    filled = generate(cn_engine, **units({**wide, "resize_mode": "Outer Fit (Shrink to Fit)"}))  # an old alias
    assert "Resize Mode: Resize and Fill" in infotext(filled) and not same(filled, cropped, index=1)


def test_input_image_and_lowvram_are_aliases(cn_engine, controlled):
    unit = {key: value for key, value in UNIT.items() if key != "image"}
    output = generate(cn_engine, **units({**unit, "input_image": UNIT["image"], "lowvram": True}))
    assert same(output, controlled) and same(output, controlled, index=1)


def test_two_units_add_up_and_are_numbered_among_the_enabled_ones(cn_engine, controlled):
    second = {"enabled": True, "module": "none", "model": SD15_CN, "image": b64png(IMAGE_B), "weight": 0.8}
    alone = generate(cn_engine, **units(second))
    both = generate(cn_engine, **units(UNIT, {"enabled": False}, second))
    assert len(both["images"]) == 3  # the image and two maps, in the units' order
    maps = [pixels(data) for data in (both["images"][1], both["images"][2], controlled["images"][1],
                                      alone["images"][1])]
    assert np.array_equal(maps[0], maps[2]) and np.array_equal(maps[1], maps[3])
    assert not same(both, controlled) and not same(both, alone)
    text = infotext(both)
    assert text.index('ControlNet 0: "Module: canny,') < text.index('ControlNet 1: "Module: none,')
    assert "ControlNet 2" not in text and "Weight: 0.8" in text


@pytest.mark.parametrize("change, payload", [({}, {"override_settings": {"control_net_no_detectmap": True}}),
                                             ({"save_detected_map": False}, {})], ids=["no_detectmap", "save-false"])
def test_detected_maps_can_be_left_out(cn_engine, controlled, change, payload):
    output = generate(cn_engine, **units({**UNIT, **change}, **payload))
    assert len(output["images"]) == 1 and same(output, controlled)


@pytest.mark.parametrize("unit, payload, field", [
    ({"module": "openpose_full"}, {}, f"{FIELD}[0].module"),
    ({"module": "no-such-module"}, {}, f"{FIELD}[0].module"),
    ({"model": "no-such-model"}, {}, f"{FIELD}[0].model"),
    ({"model": SDXL_CN}, {}, f"{FIELD}[0].model"),  # an SDXL ControlNet on an SD 1.5 checkpoint
    ({"model": SD15_CN}, {"override_settings": {"sd_model_checkpoint": "tiny-sdxl"}}, f"{FIELD}[0].model"),
    ({"image": None}, {}, f"{FIELD}[0].image"),  # txt2img has no init image to stand in
    ({"weight": 3}, {}, f"{FIELD}[0].weight"),
    ({"image": THIN, "processor_res": 2048}, {}, f"{FIELD}[0].image"),  # a 2048 x 1 million map
    ({}, {"alwayson_scripts": {"controlnet": {"args": [UNIT]}, "regional prompter": {"args": []}}},
     "alwayson_scripts.regional prompter"),
], ids=["not-offered-module", "unknown-module", "unknown-model", "sdxl-model-on-sd15", "sd15-model-on-sdxl",
        "no-image", "weight-range", "huge-map", "unknown-script"])
def test_unit_errors_name_the_field(call, unit, payload, field):
    body = {**SMALL, **units({key: value for key, value in {**UNIT, **unit}.items() if value is not None}), **payload}
    status, detail = call("http", "POST", "txt2img", body)
    assert status == 422 and field in json.dumps(detail["detail"])
    status, output = call("envelope", "POST", "txt2img", body)
    assert status == 422 and field in output["error"]


def test_sdxl_takes_an_sdxl_controlnet(cn_engine, titles):
    on_sdxl = {"override_settings": {"sd_model_checkpoint": "tiny-sdxl"}}
    plain = generate(cn_engine, **on_sdxl)
    output = generate(cn_engine, **units({**UNIT, "model": SDXL_CN}, **on_sdxl))
    assert len(output["images"]) == 2 and not same(output, plain)
    assert f'ControlNet 0: "Module: canny, Model: {titles[SDXL_CN]},' in infotext(output)
    assert "Model: tiny-sdxl," in infotext(output)


def test_hires_fix_applies_a_unit_to_the_passes_hr_option_names(cn_engine):
    hires = {"enable_hr": True, "hr_scale": 1.5, "denoising_strength": 0.5, "hr_upscaler": "Latent"}
    outputs = {option: generate(cn_engine, **units({**UNIT, "hr_option": option}, **hires))
               for option in ("Both", "Low res only", "High res only")}
    plain = generate(cn_engine, **hires)
    assert decode_png_b64(outputs["Both"]["images"][0]).size == (96, 96)
    assert decode_png_b64(outputs["Both"]["images"][1]).size == (64, 64)  # the map of the first pass
    images = [plain, *outputs.values()]
    assert all(not same(a, b) for i, a in enumerate(images) for b in images[i + 1:])


def test_batches_are_all_controlled_and_get_one_map_per_unit(cn_engine):
    batch = {"batch_size": 2, "n_iter": 2}
    output = generate(cn_engine, **units(UNIT, **batch))
    plain = generate(cn_engine, **batch)
    assert len(output["images"]) == 5 and len(plain["images"]) == 4
    info = json.loads(output["info"])
    assert info["all_seeds"] == [3, 4, 5, 6] and all('ControlNet 0: "Module: canny' in t for t in info["infotexts"])
    assert all(not same(output, plain, index=i) for i in range(4))
    assert decode_png_b64(output["images"][4]).size == (64, 64)


# ---------------------------------------------------------------- units in img2img

def test_an_img2img_unit_without_an_image_uses_the_init_image(cn_engine):
    payload = {"init_images": [b64png(IMAGE_A)], "denoising_strength": 0.75}
    unit = {key: value for key, value in UNIT.items() if key != "image"}
    fallback = generate(cn_engine, "img2img", **units(unit, **payload))
    explicit = generate(cn_engine, "img2img", **units(UNIT, **payload))
    other = generate(cn_engine, "img2img", **units({**UNIT, "image": b64png(IMAGE_B)}, **payload))
    assert same(fallback, explicit) and same(fallback, explicit, index=1)
    assert not same(fallback, other)


def test_inpaint_only_takes_the_img2img_mask_or_its_own_on_an_inpainting_checkpoint(cn_engine, call):
    payload = {**SMALL, "init_images": [b64png(IMAGE_A)], "mask": b64png(MASK), "denoising_strength": 0.75,
               "inpainting_fill": 1, "mask_blur": 0, "override_settings": {"sd_model_checkpoint": INPAINTING}}
    unit = {"enabled": True, "module": "inpaint_only", "model": SD15_CN}
    forms = [unit, {**unit, "input_image": b64png(IMAGE_A), "mask_image": b64png(MASK)},
             {**unit, "image": {"image": b64png(IMAGE_A), "mask": b64png(MASK)}}]
    outputs = [call("bare", "POST", "img2img", {**payload, **units(form)}) for form in forms]
    assert all(status == 200 for status, _ in outputs), outputs
    first = outputs[0][1]
    assert all(same(first, output) for _, output in outputs[1:])
    assert not same(first, generate(cn_engine, "img2img", **payload))
    assert f"Model: {INPAINTING}," in infotext(first) and "Module: inpaint_only" in infotext(first)
    outside = np.asarray(MASK) == 0
    assert np.array_equal(pixels(first["images"][0])[outside], np.asarray(IMAGE_A, dtype=np.int16)[outside])


# ---------------------------------------------------------------- beside LoRAs, and nothing left behind

def test_a_lora_and_a_unit_apply_together(cn_engine, controlled):
    with_lora = {"prompt": "a cat <lora:tiny-lora:1>"}
    lora = generate(cn_engine, **with_lora)
    both = generate(cn_engine, **units(UNIT, **with_lora))
    assert not same(both, lora) and not same(both, controlled)
    assert "Lora hashes:" in infotext(both) and 'ControlNet 0: "Module: canny' in infotext(both)


def test_the_request_after_a_controlnet_request_is_as_before_it(cn_engine, plain, controlled):
    generate(cn_engine, **units(UNIT, {**UNIT, "image": b64png(IMAGE_B), "control_mode": 2}))
    after = generate(cn_engine)
    assert same(after, plain) and infotext(after) == infotext(plain)
