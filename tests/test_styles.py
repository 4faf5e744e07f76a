"""Prompt styles: styles.csv read as A1111 reads it, merged into the prompts as A1111 merges them (before
LoRA tags are parsed), recorded in info and the infotext, listed by /prompt-styles, read again when the
file changes; unknown names and too many styles are errors naming `styles`."""

from __future__ import annotations

import base64
import csv
import io
import json
import os

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from conftest import TINY_NAME, decode_png_b64, png_parameters
from engine.settings import Settings
from engine.prompts.styles import StyleLibrary
from engine.tiny.lora import write_tiny_lora
from handler.errors import describe
from handler.http.app import create_app
from handler.router import route
from handler.worker import make_handler
from schemas import RequestError, Txt2ImgRequest, limits
from schemas.styles import PromptStyle, apply_styles, merge_prompt, parse_styles_csv

SMALL = {"steps": 2, "width": 64, "height": 64, "seed": 11, "sampler_name": "Euler"}
STYLES = [
    ("painting", "{prompt}, oil painting, impasto", "photo"),
    ("moody", "dark moody lighting", "bright, cheerful"),
    ("framed", "a framed picture of {prompt} on a wall", ""),
    ("tinted", "<lora:tint:1>", ""),
]


@pytest.fixture(scope="module")
def styles_models_dir(tiny_models_dir_factory):
    directory = tiny_models_dir_factory("styles-models")
    write_tiny_lora(directory, "tint", "kohya", seed=1)
    return directory


@pytest.fixture(scope="module")
def styles_engine(styles_models_dir):
    from engine.runtime import Engine

    write_styles(styles_models_dir / "styles.csv", STYLES)
    return Engine.start(models_dir=styles_models_dir, sd_model=TINY_NAME, device="cpu", dtype="float32")


@pytest.fixture
def styles_file(styles_engine, styles_models_dir):
    """The engine's styles.csv, holding STYLES at the start of each test."""
    path = styles_models_dir / "styles.csv"
    write_styles(path, STYLES)
    return path


def write_styles(path, rows, header=("name", "prompt", "negative_prompt")) -> None:
    """A styles.csv as A1111 writes it (utf-8 with a BOM), with a modification time later than before, so that
    even a rewrite of the same size within one clock tick counts as a change."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    with path.open("w", encoding="utf-8-sig", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(header)
        writer.writerows(rows)
    later = max(path.stat().st_mtime_ns, before + 1_000_000)
    os.utime(path, ns=(later, later))


def generate(engine, endpoint: str = "txt2img", **payload) -> tuple[np.ndarray, dict, dict]:
    """The first image's pixels, the response's info and its echoed parameters, through the router."""
    response = route(engine, "POST", endpoint, {**SMALL, **payload})
    image = decode_png_b64(response["images"][0])
    info = json.loads(response["info"])
    assert png_parameters(image) == info["infotexts"][0]
    return np.asarray(image, dtype=np.int16), info, response["parameters"]


# ---------------------------------------------------------------- the file and the merge (pure)

def test_the_csv_is_read_as_a1111_reads_it():
    text = ('name, prompt, negative_prompt\n'
            'plain, "cat, dog", ugly\n'
            '# a comment, x, y\n'
            ',nameless,\n'
            'multi,"line one\nline two",\n'
            'short,only prompt\n'
            'plain,second wins,\n')
    styles = parse_styles_csv(io.StringIO(text))
    assert list(styles) == ["plain", "multi", "short"]
    assert styles["plain"] == PromptStyle("plain", "second wins", "")
    assert styles["multi"].prompt == "line one\nline two"
    assert styles["short"] == PromptStyle("short", "only prompt", "")
    old_format = parse_styles_csv(io.StringIO("name,text\nold,from the text column\n"))
    assert old_format["old"] == PromptStyle("old", "from the text column", "")


def test_a_csv_without_a_name_column_is_an_error():
    with pytest.raises(ValueError, match="name"):
        parse_styles_csv(io.StringIO("title,prompt\nx,y\n"))


@pytest.mark.parametrize("style, prompt, merged", [
    ("{prompt}, oil painting", "a cat", "a cat, oil painting"),
    ("photo of {prompt}, {prompt}", "a cat", "photo of a cat, a cat"),
    ("oil painting", "a cat", "a cat, oil painting"),
    ("  oil painting ", " a cat ", "a cat, oil painting"),
    ("oil painting", "", "oil painting"),
    ("", " a cat ", "a cat"),
    ("{prompt}", "", ""),
])
def test_merge_puts_the_prompt_in_the_placeholder_or_appends_the_style(style, prompt, merged):
    assert merge_prompt(style, prompt) == merged


def test_styles_apply_in_the_order_named():
    assert apply_styles("cat", ["{prompt}, x", "y, {prompt}", "z"]) == "y, cat, x, z"
    assert apply_styles("cat", ["y, {prompt}", "{prompt}, x", "z"]) == "y, cat, x, z"
    assert apply_styles("cat", ["z", "y, {prompt}"]) == "y, cat, z"


def test_a_styled_request_keeps_the_request_and_parses_the_styled_prompts():
    request = Txt2ImgRequest(prompt="a cat", negative_prompt="ugly", styles=["s"], enable_hr=True,
                             denoising_strength=0.5, hr_prompt="a dog")
    styled = request.with_styles([PromptStyle("s", "{prompt} <lora:tint:0.5>", "blurry")])
    assert (request.prompt, request.negative_prompt, request.hr_prompt) == ("a cat", "ugly", "a dog")
    assert (styled.prompt, styled.negative_prompt) == ("a cat <lora:tint:0.5>", "ugly, blurry")
    assert (styled.hr_prompt, styled.hr_negative_prompt) == ("a dog <lora:tint:0.5>", "")
    assert styled.styles == ["s"] and styled.prompts.prompt == "a cat "
    assert [(tag.name, tag.field) for tag in styled.lora_tags] == [("tint", "prompt"), ("tint", "hr_prompt")]


def test_the_styles_file_is_models_dir_styles_csv_unless_the_variable_names_another(tmp_path, monkeypatch):
    assert Settings.from_env({"MODELS_DIR": str(tmp_path)}).styles_path == tmp_path / "styles.csv"
    elsewhere = {"MODELS_DIR": str(tmp_path), "WORKER_STYLES_FILE": str(tmp_path / "elsewhere.csv")}
    assert Settings.from_env(elsewhere).styles_path == tmp_path / "elsewhere.csv"


def test_a_missing_or_unreadable_file_offers_no_styles_and_says_why(tmp_path):
    library = StyleLibrary(tmp_path / "styles.csv")
    assert library.listing() == []
    with pytest.raises(RequestError, match="unknown style 'x'; there is no styles file"):
        library.find(["x"])
    (tmp_path / "styles.csv").write_bytes(b"name,prompt\nbad,\xff\xfe\n")
    assert library.listing() == []
    with pytest.raises(RequestError, match="could not be read"):
        library.find(["bad"])


# ---------------------------------------------------------------- listing and re-reading

def test_prompt_styles_lists_the_file_as_a1111_does(styles_engine, styles_file):
    assert route(styles_engine, "GET", "prompt-styles", {}) == [
        {"name": name, "prompt": prompt, "negative_prompt": negative} for name, prompt, negative in STYLES]


def test_the_file_is_read_again_after_it_changes(styles_engine, styles_file):
    plain = generate(styles_engine, prompt="a cat")[0]
    write_styles(styles_file, [("new", "{prompt}, watercolour", "")])
    assert route(styles_engine, "GET", "prompt-styles", {}) == [
        {"name": "new", "prompt": "{prompt}, watercolour", "negative_prompt": ""}]
    styled, info, _ = generate(styles_engine, prompt="a cat", styles=["new"])
    assert info["prompt"] == "a cat, watercolour" and not np.array_equal(styled, plain)
    with pytest.raises(RequestError, match="unknown style 'painting'"):
        generate(styles_engine, prompt="a cat", styles=["painting"])
    styles_file.unlink()
    assert route(styles_engine, "GET", "prompt-styles", {}) == []


# ---------------------------------------------------------------- generating with styles

def test_a_style_changes_the_image_as_its_text_would(styles_engine, styles_file):
    styled, info, parameters = generate(styles_engine, prompt="a cat", styles=["painting"])
    written_out = generate(styles_engine, prompt="a cat, oil painting, impasto", negative_prompt="photo")[0]
    plain = generate(styles_engine, prompt="a cat")[0]
    assert np.array_equal(styled, written_out) and not np.array_equal(styled, plain)
    assert info["prompt"] == "a cat, oil painting, impasto" and info["all_prompts"] == [info["prompt"]]
    assert info["negative_prompt"] == "photo" and info["all_negative_prompts"] == ["photo"]
    assert info["styles"] == ["painting"]
    assert info["infotexts"][0].startswith("a cat, oil painting, impasto\nNegative prompt: photo\nSteps: 2")
    assert parameters["prompt"] == "a cat" and parameters["negative_prompt"] == ""  # the request as sent
    assert parameters["styles"] == ["painting"]


def test_the_placeholder_places_the_prompt_and_several_styles_apply_in_order(styles_engine, styles_file):
    _, info, _ = generate(styles_engine, prompt="a cat", negative_prompt="ugly", styles=["framed", "moody"])
    assert info["prompt"] == "a framed picture of a cat on a wall, dark moody lighting"
    assert info["negative_prompt"] == "ugly, bright, cheerful"
    _, info, _ = generate(styles_engine, prompt="a cat", styles=["moody", "framed"])
    assert info["prompt"] == "a framed picture of a cat, dark moody lighting on a wall"


def test_a_negative_style_changes_the_image_as_its_text_would(styles_engine, styles_file):
    write_styles(styles_file, [("neg", "", "{prompt}, blurry, grainy")])
    styled, info, _ = generate(styles_engine, prompt="a cat", negative_prompt="ugly", styles=["neg"])
    written_out = generate(styles_engine, prompt="a cat", negative_prompt="ugly, blurry, grainy")[0]
    unstyled = generate(styles_engine, prompt="a cat", negative_prompt="ugly")[0]
    assert info["prompt"] == "a cat" and info["negative_prompt"] == "ugly, blurry, grainy"
    assert np.array_equal(styled, written_out) and not np.array_equal(styled, unstyled)


def test_a_lora_tag_in_a_style_applies(styles_engine, styles_file):
    styled, info, _ = generate(styles_engine, prompt="a cat", styles=["tinted"])
    written_out = generate(styles_engine, prompt="a cat, <lora:tint:1>")[0]
    plain = generate(styles_engine, prompt="a cat")[0]
    assert np.array_equal(styled, written_out) and not np.array_equal(styled, plain)
    assert info["prompt"] == "a cat, <lora:tint:1>" and "tint" in info["extra_generation_params"]["Lora hashes"]


def test_img2img_applies_styles(styles_engine, styles_file):
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 120, 40)).save(buffer, format="PNG")
    init = {"init_images": [base64.b64encode(buffer.getvalue()).decode()], "denoising_strength": 0.6}
    styled, info, parameters = generate(styles_engine, "img2img", prompt="a cat", styles=["painting"], **init)
    written_out = generate(styles_engine, "img2img", prompt="a cat, oil painting, impasto", negative_prompt="photo",
                           **init)[0]
    assert np.array_equal(styled, written_out) and info["styles"] == ["painting"]
    assert parameters["prompt"] == "a cat"


def test_hires_prompts_are_styled_like_a1111s(styles_engine, styles_file):
    hires = {"enable_hr": True, "denoising_strength": 0.5, "hr_scale": 1.5}
    _, info, _ = generate(styles_engine, prompt="a cat", styles=["painting"], **hires)
    assert "Hires prompt" not in info["extra_generation_params"]  # an empty hr_prompt is the styled prompt
    _, info, _ = generate(styles_engine, prompt="a cat", hr_prompt="a dog", styles=["painting"], **hires)
    assert info["extra_generation_params"]["Hires prompt"] == "a dog, oil painting, impasto"
    assert '"a dog, oil painting, impasto"' in info["infotexts"][0]


# ---------------------------------------------------------------- errors

def test_an_unknown_style_is_an_error_naming_it_through_every_adapter(styles_engine, styles_file):
    payload = {**SMALL, "prompt": "a cat", "styles": ["painting", "nope"]}
    with pytest.raises(RequestError) as caught:
        route(styles_engine, "POST", "txt2img", payload)
    assert caught.value.field == "styles"
    assert describe(caught.value).startswith("styles: unknown style 'nope'; ")
    assert "4 styles" in describe(caught.value)
    response = TestClient(create_app(styles_engine)).post("/sdapi/v1/txt2img", json=payload)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "styles"]
    assert "'nope'" in response.json()["detail"][0]["msg"]
    error = make_handler(styles_engine)({"id": "j", "input": payload})["error"]
    assert error.startswith("styles: unknown style 'nope'")


def test_too_many_styles_are_refused(styles_engine, styles_file):
    with pytest.raises(ValueError) as caught:
        route(styles_engine, "POST", "txt2img", {**SMALL, "styles": ["moody"] * (limits.MAX_STYLES + 1)})
    assert describe(caught.value).startswith("styles:") and str(limits.MAX_STYLES) in describe(caught.value)
    generate(styles_engine, styles=["moody"] * limits.MAX_STYLES)


def test_a_prompt_over_the_limit_with_its_styles_is_refused(styles_engine, styles_file):
    write_styles(styles_file, [("long", "x" * limits.MAX_PROMPT_CHARS, "")])
    with pytest.raises(RequestError) as caught:
        route(styles_engine, "POST", "txt2img", {**SMALL, "prompt": "a cat", "styles": ["long"]})
    assert caught.value.field == "prompt" and "WORKER_MAX_PROMPT_CHARS" in describe(caught.value)
