"""A1111's built-in scripts through script_name / script_args: "Prompts from file or textbox" (txt2img and img2img)
and "SD upscale" (img2img), their listings (/scripts, /script-info), through both adapters."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

import engine.tasks.sd_upscale as sd_upscale_module
from engine.tasks.sd_upscale import TileGrid, tile_origins
from handler.http.app import create_app
from handler.worker import make_handler
from schemas import Img2ImgRequest, Txt2ImgRequest, limits
from schemas.scripts import line_fields, parse_line

PROMPTS = "prompts from file or textbox"
TINY = {"steps": 1, "width": 64, "height": 64, "seed": 100, "sampler_name": "Euler"}


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def images(body: dict) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(data))) for data in body["images"]]


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(int)


@pytest.fixture(scope="module")
def init() -> Image.Image:
    x, y = np.meshgrid(np.arange(64), np.arange(64))
    return Image.fromarray(np.stack([x * 4, y * 4, (x + y) * 2], -1).astype(np.uint8))


def lines(text: str, iterate: bool = False, same_seed: bool = False, position: str = "start") -> dict:
    return {"script_name": PROMPTS, "script_args": [iterate, same_seed, position, text]}


def upscale(overlap: int = 16, upscaler=1, scale: float = 2) -> dict:
    return {"script_name": "SD upscale", "script_args": ["", overlap, upscaler, scale]}


class Worker:
    """The RunPod adapter: send(endpoint, body) -> (response body or None, error text)."""

    def __init__(self, engine):
        self.handle = make_handler(engine)

    def send(self, endpoint: str, body: dict, method: str = "POST") -> tuple[dict | None, str]:
        output = self.handle({"input": {"api": {"method": method, "endpoint": endpoint}, "payload": body}})
        return (None, output["error"]) if isinstance(output, dict) and "error" in output else (output, "")


class Http:
    """The HTTP adapter; an error's text is its 422 items as `loc: msg`."""

    def __init__(self, engine):
        self.client = TestClient(create_app(engine))

    def send(self, endpoint: str, body: dict, method: str = "POST") -> tuple[dict | None, str]:
        response = self.client.request(method, f"/sdapi/v1/{endpoint}", json=body if method == "POST" else None)
        if response.status_code == 200:
            return response.json(), ""
        assert response.status_code == 422, response.text
        items = response.json()["detail"]
        return None, "; ".join(f"{'.'.join(map(str, item['loc']))}: {item['msg']}" for item in items)


@pytest.fixture(scope="module", params=[Worker, Http], ids=["worker", "http"])
def adapter(request, engine):
    return request.param(engine)


def ok(adapter, endpoint: str, body: dict) -> dict:
    output, error = adapter.send(endpoint, body)
    assert output is not None, error
    return output


def refused(adapter, endpoint: str, body: dict) -> str:
    output, error = adapter.send(endpoint, body)
    assert output is None, "accepted"
    assert "\n" not in error
    return error


def infotexts(body: dict) -> list[str]:
    texts = json.loads(body["info"])["infotexts"]
    assert texts == [image.text["parameters"] for image in images(body)]
    return texts


# ---------------------------------------------------------------- lines, parsed

def test_a_plain_line_is_the_prompt():
    assert parse_line("a cat, --- dashes inside") == {"prompt": "a cat, --- dashes inside"}


def test_a_line_of_options_reads_a1111s_keys_and_types():
    line = '--prompt "a cat" on a mat --negative_prompt ugly --steps 3 --cfg_scale 4.5 --tiling true --seed 7'
    assert parse_line(line) == {"prompt": "a cat on a mat", "negative_prompt": "ugly", "steps": 3,
                                "cfg_scale": 4.5, "tiling": True, "seed": 7}


@pytest.mark.parametrize("line, problem", [
    ("--steps", "--steps needs a value"),
    ("--steps ten", "--steps: must be a whole number (got 'ten')"),
    ("--stepz 10", "unknown option '--stepz'; valid: --sd_model"),
    ('--prompt "unclosed', "can't be split into --options"),
    ("--tiling maybe", "--tiling: must be true or false"),
    ("--steps 2 extra", "expected an --option, got 'extra'"),
])
def test_a_bad_line_says_why(line, problem):
    with pytest.raises(ValueError) as caught:
        parse_line(line)
    assert problem in str(caught.value)


@pytest.mark.parametrize("position, prompt, negative", [("start", "cat base", "ugly blurry"),
                                                        ("end", "base cat", "blurry ugly")])
def test_a_lines_prompts_go_where_prompt_position_says(position, prompt, negative):
    request = Txt2ImgRequest(prompt="base", negative_prompt="blurry")
    fields = line_fields(parse_line("--prompt cat --negative_prompt ugly"), request, position)
    assert (fields["prompt"], fields["negative_prompt"]) == (prompt, negative)


def test_line_options_without_effect_are_dropped_and_sd_model_is_an_override():
    request = Txt2ImgRequest(override_settings={"CLIP_stop_at_last_layers": 2})
    options = parse_line("--outpath_samples /x --sampler_index 3 --sd_model other --steps 2")
    assert line_fields(options, request, "start") == {
        "override_settings": {"CLIP_stop_at_last_layers": 2, "sd_model_checkpoint": "other"}, "steps": 2}


# ---------------------------------------------------------------- Prompts from file or textbox

def test_one_image_per_line_with_its_prompt(adapter):
    body = ok(adapter, "txt2img", {**TINY, **lines("a cat\n\n  a dog  \n--prompt a bird --steps 2\n")})
    texts = infotexts(body)
    assert [text.split("\n")[0] for text in texts] == ["a cat", "a dog", "a bird"]
    info = json.loads(body["info"])
    assert info["all_prompts"] == ["a cat", "a dog", "a bird"] and len(info["all_seeds"]) == 3
    assert "Steps: 1," in texts[0] and "Steps: 2," in texts[2]


def test_a_lines_options_make_the_same_image_as_a_request_with_them(engine):
    worker = Worker(engine)
    scripted = ok(worker, "txt2img", {**TINY, **lines("--prompt dog --steps 2 --seed 5 --cfg_scale 3")})
    plain = ok(worker, "txt2img", {**TINY, "prompt": "dog", "steps": 2, "seed": 5, "cfg_scale": 3})
    assert "Steps: 2," in infotexts(scripted)[0] and "Seed: 5," in infotexts(scripted)[0]
    assert "CFG scale: 3," in infotexts(scripted)[0]
    assert np.array_equal(pixels(images(scripted)[0]), pixels(images(plain)[0]))


def seeds(body: dict) -> list[int]:
    found = [int(text.split("Seed: ")[1].split(",")[0]) for text in infotexts(body)]
    assert found == json.loads(body["info"])["all_seeds"]
    return found


def test_iterate_seed_steps_each_line_by_the_requests_images(engine):
    body = ok(Worker(engine), "txt2img", {**TINY, "n_iter": 2, **lines("a\nb\n--seed 7 --prompt c\nd", iterate=True)})
    assert seeds(body) == [100, 101, 102, 103, 7, 8, 106, 107]  # a line's own seed wins, the count goes on


def test_same_random_seed_for_all_lines(engine):
    body = ok(Worker(engine), "txt2img", {**TINY, "seed": -1, **lines("a\nb\nc", same_seed=True)})
    assert len(set(seeds(body))) == 1


def test_without_the_checkboxes_a_random_seed_is_drawn_per_line_and_a_fixed_one_kept(engine):
    worker = Worker(engine)
    assert len(set(seeds(ok(worker, "txt2img", {**TINY, "seed": -1, **lines("a\nb\nc")})))) == 3
    assert seeds(ok(worker, "txt2img", {**TINY, **lines("a\nb\nc")})) == [100, 100, 100]


def test_prompt_position_end_through_the_request(engine):
    body = ok(Worker(engine), "txt2img", {**TINY, "prompt": "base", **lines("cat", position="end")})
    assert infotexts(body)[0].startswith("base cat\n")


def test_prompts_from_file_in_img2img_uses_the_init_image(engine, init):
    worker = Worker(engine)
    body = ok(worker, "img2img", {**TINY, "init_images": [b64(init)], **lines("a cat\na dog")})
    assert [image.size for image in images(body)] == [(64, 64)] * 2
    plain = ok(worker, "img2img", {**TINY, "init_images": [b64(init)], "prompt": "a dog"})
    assert np.array_equal(pixels(images(body)[1]), pixels(images(plain)[0]))


def test_a_line_over_a_limit_is_refused_naming_the_line(adapter):
    error = refused(adapter, "txt2img", {**TINY, **lines("a cat\n--steps 10000")})
    assert "script_args.3: line 2 ('--steps 10000'): steps: Input should be less than or equal to 150" in error


def test_an_unknown_option_is_refused_naming_the_line(adapter):
    error = refused(adapter, "txt2img", {**TINY, **lines("a cat\n\n--stepz 10")})
    assert "script_args.3: line 3 ('--stepz 10'): unknown option '--stepz'" in error


def test_an_error_found_while_generating_names_the_line(adapter):
    error = refused(adapter, "txt2img", {**TINY, **lines("a cat\na dog <lora:no-such-lora:1>")})
    assert "script_args.3: line 2" in error and "no-such-lora" in error


def test_the_number_of_lines_is_limited_before_any_work(adapter, engine, monkeypatch):
    monkeypatch.setattr(limits, "MAX_PROMPT_LINES", 2)
    monkeypatch.setattr(engine, "txt2img", lambda request: pytest.fail("generated"))
    error = refused(adapter, "txt2img", {**TINY, **lines("a\nb\n\nc")})
    assert "script_args.3 (prompt_txt): 3 lines; the limit is 2 (WORKER_MAX_PROMPT_LINES)" in error


def test_the_images_of_all_lines_count_against_the_image_limit(engine, monkeypatch):
    monkeypatch.setattr(limits, "MAX_IMAGES", 4)
    error = refused(Worker(engine), "txt2img", {**TINY, "batch_size": 2, **lines("a\nb\nc")})
    assert "the lines make 6 images" in error and "WORKER_MAX_IMAGES" in error


@pytest.mark.parametrize("args, problem", [
    ([False, False, "start", ""], "script_args.3 (prompt_txt): has no lines"),
    ([False, False, "middle", "a"], "script_args.2 (prompt_position): Input should be 'start' or 'end'"),
    ([False, False, "start", "a", 5], "script_args: takes at most 4 values"),
])
def test_bad_script_args_are_refused_by_position(engine, args, problem):
    assert problem in refused(Worker(engine), "txt2img", {**TINY, "script_name": PROMPTS, "script_args": args})


# ---------------------------------------------------------------- script_name

@pytest.mark.parametrize("endpoint, offered", [("txt2img", f"'{PROMPTS}'"), ("img2img", f"'{PROMPTS}', 'sd upscale'")])
def test_an_unknown_script_name_lists_the_offered_ones(adapter, init, endpoint, offered):
    error = refused(adapter, endpoint, {**TINY, "init_images": [b64(init)], "script_name": "X/Y/Z plot"})
    assert f"script_name: unknown script 'X/Y/Z plot' for {endpoint}; offered: {offered}" in error


def test_script_names_match_in_any_case_and_none_means_no_script(engine):
    assert Txt2ImgRequest(script_name="PROMPTS FROM FILE OR TEXTBOX", script_args=[False, False, "start", "a"]).script
    assert Txt2ImgRequest(script_name="None").script is None


def test_script_args_without_a_script_are_refused(engine):
    assert refused(Worker(engine), "txt2img", {**TINY, "script_args": [1]}).startswith("script_args:")


# ---------------------------------------------------------------- SD upscale

def test_tiles_are_placed_as_a1111_splits():
    assert tile_origins(128, 64, 16) == [0, 32, 64]
    assert tile_origins(200, 64, 8) == [0, 45, 90, 136]
    assert tile_origins(64, 64, 16) == [0]


def test_split_tiles_combine_to_the_image(init):
    image = init.resize((200, 136))
    grid = TileGrid.of(image.size, (64, 64), 16)
    assert np.array_equal(pixels(grid.combine(grid.split(image))), pixels(image))


def test_tiles_fade_into_each_other_across_the_overlap():
    grid = TileGrid.of((112, 64), (64, 64), 16)  # two tiles: 0-63 and 48-111
    combined = pixels(grid.combine([Image.new("RGB", (64, 64), "black"), Image.new("RGB", (64, 64), "white")]))
    row = combined[10, :, 0]
    assert (row[:48] == 0).all() and (row[64:] == 255).all()
    assert (np.diff(row[48:64]) > 0).all() and row[48] == 0 and row[63] > 230


def test_sd_upscale_redraws_the_upscaled_image_in_tiles(adapter, init):
    body = ok(adapter, "img2img", {**TINY, "init_images": [b64(init)], **upscale(overlap=16, upscaler="Lanczos")})
    [result] = images(body)
    assert result.size == (128, 128)
    plain = pixels(init.resize((128, 128), Image.Resampling.LANCZOS))
    assert np.abs(pixels(result) - plain).mean() > 10  # redrawn, not only upscaled
    [text] = infotexts(body)
    assert "Size: 64x64," in text and "SD upscale overlap: 16, SD upscale upscaler: Lanczos," in text


def test_sd_upscale_batches_tiles_and_seeds_them_as_a1111(engine, init, monkeypatch):
    calls = []
    original = sd_upscale_module.img2img

    def recording(model, plan, options, tiles, *rest, **named):
        calls.append((plan.seeds.seed, len(tiles)))
        return original(model, plan, options, tiles, *rest, **named)

    monkeypatch.setattr(sd_upscale_module, "img2img", recording)
    body = ok(Worker(engine), "img2img", {**TINY, "init_images": [b64(init)], "batch_size": 4, "n_iter": 2,
                                          **upscale()})
    # 3x3 tiles in batches of 4, 4 and 1; each batch starts one seed later, each upscale one seed later
    assert calls == [(100, 4), (101, 4), (102, 1), (101, 4), (102, 4), (103, 1)]
    assert seeds(body) == [100, 101] and len(images(body)) == 2


def test_the_upscaler_by_index_or_by_name_in_any_case(engine, init):
    worker = Worker(engine)
    results = [pixels(images(ok(worker, "img2img", {**TINY, "init_images": [b64(init)], **upscale(upscaler=name)}))[0])
               for name in (1, "lanczos", "LANCZOS")]
    assert all(np.array_equal(results[0], result) for result in results[1:])


def test_the_none_upscaler_keeps_the_init_size(engine, init):
    body = ok(Worker(engine), "img2img", {**TINY, "init_images": [b64(init.resize((96, 80)))], **upscale(upscaler=0)})
    assert images(body)[0].size == (96, 80)


def test_a_neural_upscaler_by_a1111_name(upscaler_engine, init):
    body = ok(Worker(upscaler_engine), "img2img", {**TINY, "init_images": [b64(init)],
                                                   **upscale(upscaler="r-esrgan 4x+", scale=1.5)})
    assert images(body)[0].size == (96, 96) and "SD upscale upscaler: R-ESRGAN 4x+," in infotexts(body)[0]


@pytest.mark.parametrize("change, problem", [
    ({"script_args": ["", 64, 1, 2]}, "script_args.1 (overlap): must be less than width and height"),
    ({"script_args": ["", -16, 1, 2]}, "script_args.1 (overlap): Input should be greater than or equal to 0"),
    ({"script_args": ["", 16, 7, 2]}, "script_args.2: upscaler index 7 is out of range; /sdapi/v1/upscalers lists "
                                      "0: None, 1: Lanczos, 2: Nearest"),
    ({"script_args": ["", 16, "nope", 2]}, "script_args.2: unknown upscaler 'nope'; available: None, Lanczos"),
    ({"script_args": ["", 16, 1.5, 2]}, "script_args.2 (upscaler_index): must be an index into"),
    ({"script_args": ["", 16, 1, 0.5]}, "script_args.3 (scale_factor): Input should be greater than or equal to 1"),
    ({"width": 128, "script_args": ["", 16, 1, 1.5]}, "script_args.3: the upscaled image (96x96) is smaller than a "
                                                      "tile (128x64"),
    ({"mask": "mask"}, "mask: SD upscale redraws the whole image"),
])
def test_bad_sd_upscale_requests_are_refused(engine, init, change, problem):
    body = {**TINY, "init_images": [b64(init)], **upscale(), **change}
    if "mask" in change:
        body["mask"] = b64(Image.new("L", (64, 64), 255))
    assert problem in refused(Worker(engine), "img2img", body)


def test_the_number_of_tiles_is_limited_before_any_work(adapter, init, monkeypatch):
    monkeypatch.setattr(limits, "MAX_SD_UPSCALE_TILES", 17)
    monkeypatch.setattr(sd_upscale_module, "img2img", lambda *args: pytest.fail("generated"))
    error = refused(adapter, "img2img", {**TINY, "n_iter": 2, "init_images": [b64(init)], **upscale()})
    assert "SD upscale would redraw 18 tiles (3x3 of 64x64, times n_iter 2); the limit is 17" in error


# ---------------------------------------------------------------- listings

def test_scripts_lists_them_in_lower_case_per_endpoint(adapter):
    output, _ = adapter.send("scripts", {}, "GET")
    assert output == {"txt2img": [PROMPTS], "img2img": [PROMPTS, "sd upscale"]}


def test_script_info_lists_their_arguments_in_order(adapter):
    output, _ = adapter.send("script-info", {}, "GET")
    assert [(item["name"], item["is_img2img"], item["is_alwayson"]) for item in output] == [
        (PROMPTS, False, False), (PROMPTS, True, False), ("sd upscale", True, False)]
    for item in output:
        assert all(set(arg) == {"label", "value", "minimum", "maximum", "step", "choices"} for arg in item["args"])
    assert [arg["label"] for arg in output[0]["args"]] == [
        "Iterate seed every line", "Use same random seed for all lines", "Insert prompts at the",
        "List of prompt inputs"]
    overlap, upscaler, scale = output[2]["args"][1:]
    upscalers, _ = adapter.send("upscalers", {}, "GET")
    assert upscaler["choices"] == [item["name"] for item in upscalers] and upscaler["value"] == "None"
    assert (overlap["label"], overlap["value"], overlap["step"]) == ("Tile overlap", 64, 16)
    assert (scale["label"], scale["value"], scale["maximum"]) == ("Scale Factor", 2.0, 4.0)


def test_the_listed_defaults_are_valid_script_args(engine):
    for item in Worker(engine).send("script-info", {}, "GET")[0]:
        values = [arg["value"] for arg in item["args"]]
        if item["name"] == PROMPTS:
            values[-1] = "a cat"  # the textbox starts empty
        request = Img2ImgRequest(init_images=["x"], script_name=item["name"], script_args=values)
        assert request.script is not None
