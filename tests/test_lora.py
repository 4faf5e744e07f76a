"""LoRAs: `<lora:name:weight>` tags, files in kohya and diffusers format from Lora/, per-component
weights, no state carried between requests, hires and img2img, errors, listing and infotext hashes.

The LoRAs are tiny random ones for the tiny checkpoint, written by engine/tiny/lora.py.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from conftest import TINY_NAME, decode_png_b64, png_parameters
from engine.tiny.lora import write_tiny_lora
from handler.errors import describe
from handler.router import route
from schemas import RequestError, Txt2ImgRequest
from schemas.extra_networks import LoraTag, strip_extra_networks

SMALL = {"steps": 2, "width": 64, "height": 64, "seed": 7, "sampler_name": "Euler"}


@pytest.fixture(scope="module")
def lora_models_dir(tiny_models_dir_factory):
    directory = tiny_models_dir_factory("lora-models")
    write_tiny_lora(directory, "style", "kohya", seed=1)
    write_tiny_lora(directory, "style_diffusers", "diffusers", seed=1)  # the same update, other key format
    write_tiny_lora(directory, "second", "kohya", seed=2)
    write_tiny_lora(directory, "te_only", "kohya", seed=3, components=("text_encoder",))
    write_tiny_lora(directory, "unet_only", "diffusers", seed=4, components=("unet",))
    write_tiny_lora(directory, "sub/nested", "kohya", seed=5,
                    metadata={"ss_output_name": "nested-alias", "ss_clip_skip": "1", "ss_resolution": "64"})
    write_tiny_lora(directory, "hashed", "kohya", seed=6, metadata={"sshs_model_hash": "abcdef0123456789"})
    (directory / "Lora" / "broken.safetensors").write_bytes(b"not a safetensors file")
    return directory


@pytest.fixture(scope="module")
def lora_engine(lora_models_dir):
    from engine.runtime import Engine

    return Engine.start(models_dir=lora_models_dir, sd_model=TINY_NAME, device="cpu", dtype="float32")


def generate(engine, endpoint: str = "txt2img", **payload) -> tuple[np.ndarray, dict]:
    """The first image's pixels and the response's info, through the router (validation included)."""
    response = route(engine, "POST", endpoint, {**SMALL, **payload})
    image = decode_png_b64(response["images"][0])
    return np.asarray(image, dtype=np.int16), json.loads(response["info"])


def pixels(engine, **payload) -> np.ndarray:
    return generate(engine, **payload)[0]


def addnet_hash(path) -> str:
    """kohya's hash, computed here independently: sha256 of everything after the safetensors header."""
    data = path.read_bytes()
    return hashlib.sha256(data[8 + int.from_bytes(data[:8], "little"):]).hexdigest()


# ---------------------------------------------------------------- tags (pure schemas)

def test_tags_are_cut_out_with_their_weights():
    text, tags = strip_extra_networks("a <lora:one> cat <lora:two:0.5>, <lyco:three:0.2:0.7> <lora:four:te=0.1:unet=2>",
                                      "prompt")
    assert text == "a  cat ,  "
    assert tags == [LoraTag("one", 1.0, 1.0, "prompt"), LoraTag("two", 0.5, 0.5, "prompt"),
                    LoraTag("three", 0.2, 0.7, "prompt"), LoraTag("four", 0.1, 2.0, "prompt")]


def test_request_carries_each_pass_prompts_and_loras():
    request = Txt2ImgRequest(prompt="a <lora:one:0.5> cat", negative_prompt="<lora:two> ugly", enable_hr=True,
                             denoising_strength=0.5, hr_prompt="hires <lora:three>")
    assert (request.prompts.prompt, request.prompts.negative_prompt) == ("a  cat", " ugly")
    assert [t.name for t in request.prompts.loras] == ["one", "two"]
    assert [(t.name, t.field) for t in request.hires_prompts.loras] == [("three", "hr_prompt"),
                                                                        ("two", "negative_prompt")]
    assert request.model_dump()["prompt"] == "a <lora:one:0.5> cat"  # echoed and written as sent
    same = Txt2ImgRequest(prompt="<lora:one>", enable_hr=True, denoising_strength=0.5)
    assert same.hires_prompts.loras == same.prompts.loras  # an empty hr_prompt is the prompt, tags included


@pytest.mark.parametrize("prompt, message", [
    ("<hypernet:x:1>", "prompt: extra network <hypernet:x:1>: kind 'hypernet' is not supported"),
    ("<lora:x:strong>", "prompt: <lora:x:strong>: weight 'strong' is not a number"),
    ("<lora::1>", "prompt: <lora::1>: no LoRA name"),
    ("<lora:x:1:1:8>", "prompt: <lora:x:1:1:8>: too many arguments"),
    ("<lora:x:dyn=8>", "prompt: <lora:x:dyn=8>: unknown argument 'dyn'"),
    ("<lora:x:inf>", "must be finite"),
])
def test_bad_tags_are_refused_naming_the_field(prompt, message):
    with pytest.raises(ValidationError) as caught:
        Txt2ImgRequest(prompt=prompt)
    assert message in describe(caught.value)
    with pytest.raises(ValidationError, match="negative_prompt: "):
        Txt2ImgRequest(negative_prompt=prompt)


def test_disable_extra_networks_removes_and_ignores_every_tag():
    request = Txt2ImgRequest(prompt="a <lora:x:strong> <hypernet:y> cat", disable_extra_networks=True)
    assert (request.prompts.prompt, request.prompts.loras) == ("a   cat", ())


# ---------------------------------------------------------------- files and names

def test_listing_shows_the_files_with_names_aliases_and_metadata(lora_engine, lora_models_dir):
    listed = {entry["name"]: entry for entry in route(lora_engine, "GET", "loras", {})}
    assert set(listed) == {"broken", "hashed", "nested", "second", "style", "style_diffusers", "te_only", "unet_only"}
    nested = listed["nested"]
    assert nested["alias"] == "nested-alias"
    assert nested["path"] == str(lora_models_dir / "Lora" / "sub" / "nested.safetensors")
    assert list(nested["metadata"])[:2] == ["ss_resolution", "ss_clip_skip"]  # A1111 lists these first
    assert nested["metadata"]["ss_output_name"] == "nested-alias"
    assert listed["style"]["alias"] == "style" and listed["broken"]["metadata"] == {}


def test_refresh_and_unknown_names_read_the_folder_again(lora_engine, lora_models_dir):
    write_tiny_lora(lora_models_dir, "added-later", "kohya", seed=9)
    try:
        assert "added-later" not in [e["name"] for e in route(lora_engine, "GET", "loras", {})]
        route(lora_engine, "POST", "refresh-loras", {})
        assert "added-later" in [e["name"] for e in route(lora_engine, "GET", "loras", {})]
        write_tiny_lora(lora_models_dir, "added-unrefreshed", "kohya", seed=9)
        assert not np.array_equal(pixels(lora_engine, prompt="<lora:added-unrefreshed>a cat"),
                                  pixels(lora_engine, prompt="a cat"))
    finally:
        for name in ("added-later", "added-unrefreshed"):
            (lora_models_dir / "Lora" / f"{name}.safetensors").unlink()
        lora_engine.loras.refresh()


def test_an_alias_names_the_file(lora_engine):
    assert np.array_equal(pixels(lora_engine, prompt="<lora:nested-alias:0.8>a cat"),
                          pixels(lora_engine, prompt="<lora:nested:0.8>a cat"))


def test_unknown_names_are_errors_naming_field_and_name(lora_engine):
    cases = [({"prompt": "a <lora:nope:1>"}, "prompt"), ({"negative_prompt": "<lora:nope>"}, "negative_prompt"),
             ({"prompt": "a", "enable_hr": True, "denoising_strength": 0.5, "hr_prompt": "<lora:nope>"}, "hr_prompt")]
    for payload, field in cases:
        with pytest.raises(RequestError) as caught:
            generate(lora_engine, **payload)
        assert caught.value.field == field
        assert "no LoRA 'nope'" in str(caught.value) and "available: " in str(caught.value)


def test_a_bad_file_is_a_clear_error_and_leaves_the_engine_working(lora_engine):
    base = pixels(lora_engine, prompt="a cat")
    with pytest.raises(RequestError, match=r"prompt: LoRA 'broken' \(.*broken.safetensors\) could not be loaded: "):
        generate(lora_engine, prompt="<lora:style> <lora:broken>a cat")
    assert np.array_equal(pixels(lora_engine, prompt="a cat"), base)


def test_a_lora_for_other_layers_is_a_clear_error(lora_engine, lora_models_dir):
    from safetensors.torch import save_file

    path = lora_models_dir / "Lora" / "other-family.safetensors"
    save_file({"lora_unet_input_blocks_1_1_proj_in.lora_down.weight": torch.zeros(4, 320),
               "lora_unet_input_blocks_1_1_proj_in.lora_up.weight": torch.zeros(320, 4)}, path)
    try:
        with pytest.raises(RequestError, match="LoRA 'other-family'"):
            generate(lora_engine, prompt="<lora:other-family>a cat")
        assert np.array_equal(pixels(lora_engine, prompt="a cat"), pixels(lora_engine, prompt="<lora:style:0>a cat"))
    finally:
        path.unlink()
        lora_engine.loras.refresh()


# ---------------------------------------------------------------- effects

def test_weight_zero_equals_no_lora_and_weight_one_changes_the_image(lora_engine):
    base = pixels(lora_engine, prompt="a cat")
    assert np.array_equal(pixels(lora_engine, prompt="a cat<lora:style:0>"), base)
    with_lora = pixels(lora_engine, prompt="a cat<lora:style>")
    assert np.abs(with_lora - base).max() > 10
    assert np.array_equal(pixels(lora_engine, prompt="a cat<lora:style:1>"), with_lora)  # the default weight is 1
    assert not np.array_equal(pixels(lora_engine, prompt="a cat<lora:style:0.5>"), with_lora)


def test_kohya_and_diffusers_files_of_the_same_update_give_the_same_image(lora_engine):
    kohya = pixels(lora_engine, prompt="a cat<lora:style:0.7>")
    diffusers = pixels(lora_engine, prompt="a cat<lora:style_diffusers:0.7>")
    assert np.abs(kohya - diffusers).max() <= 1


def component_outputs(model, tags):
    """(text encoding, UNet prediction on a fixed encoding) with `tags` active, then the base model again."""
    base_encoding = model.encoder.encode("a probe prompt").clone()
    model.loras.activate(tags)
    try:
        encoding = model.encoder.encode("a probe prompt")
        latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            prediction = model.unet(latents, torch.tensor([500]), encoder_hidden_states=base_encoding).sample
        return encoding, prediction
    finally:
        model.loras.deactivate()


def test_te_and_unet_weights_act_on_their_component(lora_engine):
    model = lora_engine.model
    base_encoding, base_prediction = component_outputs(model, [])
    te_only = component_outputs(model, [LoraTag("style", 1.0, 0.0, "prompt")])
    unet_only = component_outputs(model, [LoraTag("style", 0.0, 1.0, "prompt")])
    both = component_outputs(model, [LoraTag("style", 1.0, 1.0, "prompt")])
    assert not torch.equal(te_only[0], base_encoding) and torch.equal(te_only[1], base_prediction)
    assert torch.equal(unet_only[0], base_encoding) and not torch.equal(unet_only[1], base_prediction)
    assert torch.equal(both[0], te_only[0]) and torch.equal(both[1], unet_only[1])
    # files with layers in one component only
    te_file = component_outputs(model, [LoraTag("te_only", 1.0, 1.0, "prompt")])
    unet_file = component_outputs(model, [LoraTag("unet_only", 1.0, 1.0, "prompt")])
    assert not torch.equal(te_file[0], base_encoding) and torch.equal(te_file[1], base_prediction)
    assert torch.equal(unet_file[0], base_encoding) and not torch.equal(unet_file[1], base_prediction)
    # and the tag form: <lora:name:te:unet>
    assert not np.array_equal(pixels(lora_engine, prompt="a cat<lora:style:1:0>"),
                              pixels(lora_engine, prompt="a cat<lora:style:0:1>"))


def test_the_prompt_cache_never_serves_an_encoding_made_without_the_active_lora(lora_engine):
    base = pixels(lora_engine, prompt="a dog")  # caches the base encoding of "a dog"
    assert not np.array_equal(pixels(lora_engine, prompt="<lora:te_only>a dog"), base)
    assert np.array_equal(pixels(lora_engine, prompt="a dog"), base)


def test_a_request_never_inherits_the_previous_requests_loras(lora_engine):
    model = lora_engine.model
    model.encoder._cache.clear()
    reference = model.encoder.encode("never seen before").clone()
    base = pixels(lora_engine, prompt="a house", seed=11)
    with_lora = pixels(lora_engine, prompt="a house<lora:style><lora:te_only:0.5>", seed=11)
    assert not np.array_equal(with_lora, base)
    assert np.array_equal(pixels(lora_engine, prompt="a house", seed=11), base)  # bitwise the base model
    model.encoder._cache.clear()
    assert torch.equal(model.encoder.encode("never seen before"), reference)
    assert model.encoder.adapters == ()


def test_a_request_that_fails_leaves_no_lora_active(lora_engine, monkeypatch):
    import engine.tasks.txt2img

    base = pixels(lora_engine, prompt="a cat")

    def failing_hires_pass(*args, **kwargs):  # after the first pass ran with the LoRA
        assert lora_engine.model.encoder.adapters
        raise RuntimeError("out of memory")

    monkeypatch.setattr(engine.tasks.txt2img, "_hires_pass", failing_hires_pass)
    with pytest.raises(RuntimeError, match="out of CPU memory at 128x128"):
        generate(lora_engine, prompt="a cat<lora:style>", enable_hr=True, denoising_strength=0.5)
    monkeypatch.undo()
    assert lora_engine.model.encoder.adapters == ()
    assert np.array_equal(pixels(lora_engine, prompt="a cat"), base)


def test_two_loras_at_once_each_with_its_weight(lora_engine):
    base = pixels(lora_engine, prompt="a cat")
    style = pixels(lora_engine, prompt="a cat<lora:style:0.8>")
    second = pixels(lora_engine, prompt="a cat<lora:second:0.6>")
    both, info = generate(lora_engine, prompt="a cat<lora:style:0.8><lora:second:0.6>")
    assert all(not np.array_equal(both, other) for other in (base, style, second))
    assert not np.array_equal(both, pixels(lora_engine, prompt="a cat<lora:style:0.6><lora:second:0.8>"))
    # a LoRA named twice adds up, as A1111 applies it twice
    assert np.array_equal(pixels(lora_engine, prompt="a cat<lora:style:0.4><lora:style:0.4>"), style)
    assert info["extra_generation_params"]["Lora hashes"].startswith("style: ")


def test_a_negative_prompt_lora_applies_to_the_generation(lora_engine):
    assert np.array_equal(pixels(lora_engine, prompt="a cat", negative_prompt="<lora:style:0.5>blurry"),
                          pixels(lora_engine, prompt="a cat<lora:style:0.5>", negative_prompt="blurry"))


def test_disable_extra_networks_generates_as_without_tags(lora_engine):
    assert np.array_equal(pixels(lora_engine, prompt="a cat<lora:style><lora:nope>", disable_extra_networks=True),
                          pixels(lora_engine, prompt="a cat"))


def test_adapters_are_cached_and_bounded(lora_engine):
    adapters = lora_engine.model.loras
    reference = pixels(lora_engine, prompt="a cat<lora:style>")
    capacity, adapters.capacity = adapters.capacity, 2
    try:
        for name in ("second", "te_only", "unet_only"):
            pixels(lora_engine, prompt=f"a cat<lora:{name}>")
        loaded = set().union(*lora_engine.model.pipe.get_list_adapters().values())
        assert len(loaded) == 2
        assert np.array_equal(pixels(lora_engine, prompt="a cat<lora:style>"), reference)  # loaded again
        cached = set().union(*lora_engine.model.pipe.get_list_adapters().values())
        pixels(lora_engine, prompt="a cat<lora:style:0.3>")
        assert set().union(*lora_engine.model.pipe.get_list_adapters().values()) == cached  # not reloaded
    finally:
        adapters.capacity = capacity


# ---------------------------------------------------------------- passes and infotext

def test_hires_fix_uses_the_prompts_loras_or_the_hr_prompts_own(lora_engine):
    hires = {"enable_hr": True, "denoising_strength": 0.6, "hr_scale": 1.5}
    base = pixels(lora_engine, prompt="a cat", **hires)
    both_passes, info = generate(lora_engine, prompt="a cat<lora:style>", **hires)
    first_only = pixels(lora_engine, prompt="a cat<lora:style>", hr_prompt="a cat", **hires)
    hires_only, hires_info = generate(lora_engine, prompt="a cat", hr_prompt="a cat<lora:style>", **hires)
    assert len({arr.tobytes() for arr in (base, both_passes, first_only, hires_only)}) == 4
    assert info["extra_generation_params"]["Lora hashes"].startswith("style: ")
    assert "Lora hashes" in hires_info["extra_generation_params"]
    assert np.array_equal(pixels(lora_engine, prompt="a cat", **hires), base)


def test_img2img_uses_the_loras(lora_engine, lora_models_dir):
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 120, 40)).save(buffer, format="PNG")
    init = {"init_images": [base64.b64encode(buffer.getvalue()).decode()], "denoising_strength": 0.8}
    base = generate(lora_engine, "img2img", prompt="a cat", **init)[0]
    with_lora, info = generate(lora_engine, "img2img", prompt="a cat<lora:style>", **init)
    assert not np.array_equal(with_lora, base)
    assert f"Lora hashes: \"style: {addnet_hash(lora_models_dir / 'Lora' / 'style.safetensors')[:12]}\"" \
        in info["infotexts"][0]
    assert np.array_equal(generate(lora_engine, "img2img", prompt="a cat", **init)[0], base)


def test_infotext_has_a1111s_lora_hashes(lora_engine, lora_models_dir):
    prompt = "a cat <lora:style:0.5> <lora:nested-alias> <lora:hashed:0.2>"
    response = route(lora_engine, "POST", "txt2img", {**SMALL, "prompt": prompt, "enable_hr": True,
                                                      "denoising_strength": 0.5, "hr_scale": 1.5})
    infotext = png_parameters(response["images"][0])
    style = addnet_hash(lora_models_dir / "Lora" / "style.safetensors")[:12]
    nested = addnet_hash(lora_models_dir / "Lora" / "sub" / "nested.safetensors")[:12]
    expected = f'Lora hashes: "style: {style}, nested-alias: {nested}, hashed: abcdef012345"'
    assert infotext.splitlines()[0] == prompt  # the prompt as sent, tags included
    parameters = infotext.splitlines()[-1]
    assert expected in parameters
    assert parameters.index("Hires upscaler:") < parameters.index("Lora hashes:") < parameters.index("Version:")
    assert json.loads(response["info"])["infotexts"][0] == infotext
    without = route(lora_engine, "POST", "txt2img", {**SMALL, "prompt": "a cat"})
    assert "Lora hashes" not in json.loads(without["info"])["infotexts"][0]


def test_a_baked_addnet_hash_is_used_while_the_file_keeps_its_size(lora_engine, lora_models_dir):
    path = lora_models_dir / "Lora" / "second.safetensors"
    hashes = lora_models_dir / "hashes.json"
    hashes.write_text(json.dumps({"Lora/second.safetensors": {"sha256": "0" * 64, "size": path.stat().st_size,
                                                              "addnet": "b" * 64}}))
    try:
        _, info = generate(lora_engine, prompt="a cat<lora:second>")
        assert info["extra_generation_params"]["Lora hashes"] == "second: " + "b" * 12
    finally:
        hashes.unlink()
    _, info = generate(lora_engine, prompt="a cat<lora:second>")
    assert info["extra_generation_params"]["Lora hashes"] == "second: " + addnet_hash(path)[:12]
