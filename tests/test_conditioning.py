"""A1111 prompt conditioning: emphasis weights, chunking, BREAK, editing, alternation, AND, clip skip."""

import base64
import io
import json

import numpy as np

import pytest
import torch
from PIL import Image

from dataclasses import replace

from engine.prompts.conditioning import ConditioningParams
from handler.router import route

BASE = {"steps": 4, "width": 64, "height": 64, "seed": 21}
PARAMS = ConditioningParams(64, 64)


@pytest.fixture(scope="module")
def encoder(engine):
    return engine.model.encoder


def plain_encoding(encoder, text):
    tokens = encoder.tokenizer(text, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.inference_mode():
        return encoder.encoders[0][1](tokens.input_ids).last_hidden_state


def test_unweighted_prompt_equals_the_plain_encoder(encoder):
    assert torch.equal(encoder.encode("a photo of a cat, sunset"), plain_encoding(encoder, "a photo of a cat, sunset"))


def test_weighted_token_is_scaled_by_its_weight_then_mean_restored(encoder):
    plain = plain_encoding(encoder, "a photo of a cat")
    weighted = encoder.encode("a photo of a (cat:1.5)")
    cat = 5  # BOS, a, photo, of, a, cat
    scale = torch.ones(1, 77, 1)
    scale[0, cat] = 1.5
    expected = plain * scale
    expected = expected * (plain.mean() / expected.mean())
    torch.testing.assert_close(weighted, expected)
    assert not torch.allclose(weighted[0, cat], plain[0, cat])


def test_escaped_brackets_are_text(encoder):
    assert not torch.equal(encoder.encode(r"a \(cat\)"), encoder.encode("a (cat)"))


def test_long_prompt_is_chunked_not_truncated(engine, encoder):
    long = ", ".join(["a red apple on a wooden table"] * 28)  # 223 tokens, 8 per phrase with its comma
    chunks = encoder.chunks(long)
    assert len(chunks) == 4  # the comma backtrack ends each chunk after 9 whole phrases (72 tokens)
    assert sum(len([t for t in tokens[1:-1] if t != encoder.tokenizer.eos_token_id]) for tokens, _ in chunks) == 223
    assert encoder.encode(long).shape[1] == 77 * 4
    changed_tail = long + ", blue sky"
    first = route(engine, "POST", "txt2img", {**BASE, "prompt": long})["images"]
    assert route(engine, "POST", "txt2img", {**BASE, "prompt": changed_tail})["images"] != first


def test_comma_backtrack_moves_the_last_phrase_to_the_next_chunk(encoder):
    words = ["word"] * 70 + [","] + ["tail"] * 10
    chunks = encoder.chunks(" ".join(words))
    first, second = chunks[0][0], chunks[1][0]
    comma = encoder.tokenizer.convert_tokens_to_ids(",</w>")
    tail = encoder.tokenizer.convert_tokens_to_ids("tail</w>")
    assert first[71] == comma and tail not in first  # the chunk ends after the comma
    assert second[1:6] == [tail] * 5


def test_break_starts_a_new_chunk(encoder):
    assert encoder.encode("a cat BREAK a dog").shape[1] == 77 * 2
    assert encoder.encode("a cat break a dog").shape[1] == 77  # only upper case


def test_cond_and_uncond_are_padded_to_the_same_length(engine, encoder):
    conditioning = encoder.conditioning("a BREAK b BREAK c", "blurry", 4, PARAMS)
    uncond, (cond,) = conditioning.at(0)
    assert uncond.context.shape == cond.context.shape == (1, 77 * 3, uncond.context.shape[-1])
    assert torch.equal(uncond.context[:, 77:154], encoder.encode(""))
    assert route(engine, "POST", "txt2img", {**BASE, "prompt": "a BREAK b BREAK c", "negative_prompt": "x"})["images"]


def test_prompt_editing_switches_conditioning_at_its_step(encoder):
    schedule = encoder.conditioning("a [cat:dog:2] in a hat", "", 6, PARAMS).conds[0][1]
    assert torch.equal(schedule.at(0).context, encoder.encode("a cat in a hat"))
    assert torch.equal(schedule.at(1).context, encoder.encode("a cat in a hat"))  # steps 1 and 2 of 6
    assert torch.equal(schedule.at(2).context, encoder.encode("a dog in a hat"))  # from step 3 on


def test_alternation_cycles_per_step(encoder):
    schedule = encoder.conditioning("[cat|dog]", "", 4, PARAMS).conds[0][1]
    assert [torch.equal(schedule.at(s).context, encoder.encode("cat")) for s in range(4)] == [True, False, True, False]


def test_prompt_editing_changes_the_image(engine):
    def image(prompt):
        return route(engine, "POST", "txt2img", {**BASE, "prompt": prompt})["images"][0]
    edited = image("[a cat:a dog:2]")
    assert edited != image("a cat") and edited != image("a dog")


def test_and_is_composable_diffusion(engine, encoder):
    conditioning = encoder.conditioning("a cat AND a dog :0.5", "", 4, PARAMS)
    assert conditioning.weights == [1.0, 0.5]
    def pixels(prompt):
        output = route(engine, "POST", "txt2img", {**BASE, "prompt": prompt})
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(output["images"][0])))).astype(int)

    cat = pixels("a cat")
    assert np.abs(pixels("a cat AND a dog") - cat).max() > 10  # the dog is mixed in
    assert np.abs(pixels("a cat AND a dog :0") - cat).max() <= 2  # weight 0: only the cat counts


def test_clip_skip_changes_the_encoding_and_is_in_the_infotext(engine, encoder):
    assert not torch.equal(encoder.encode("a cat", replace(PARAMS, clip_skip=2)), encoder.encode("a cat", PARAMS))
    output = route(engine, "POST", "txt2img", {**BASE, "prompt": "a cat",
                                                "override_settings": {"CLIP_stop_at_last_layers": 2}})
    info = json.loads(output["info"])
    assert "Clip skip: 2" in info["infotexts"][0] and info["clip_skip"] == 2
    assert output["images"] != route(engine, "POST", "txt2img", {**BASE, "prompt": "a cat"})["images"]


def test_encoding_cache_is_bounded(encoder):
    from engine.prompts.conditioning import CACHED_ENCODINGS

    for i in range(CACHED_ENCODINGS + 5):
        encoder.encode(f"prompt number {i}")
    assert len(encoder._cache) == CACHED_ENCODINGS
    texts = [key[0] for key in encoder._cache]  # keys start with the text
    assert "prompt number 0" not in texts and f"prompt number {CACHED_ENCODINGS + 4}" in texts
