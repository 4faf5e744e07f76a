"""Textual-inversion embeddings: triggered by file name in either prompt, their vectors standing exactly where
the name's tokens are, A1111's file layouts, skipped widths, the /embeddings listing, refresh, TI hashes."""

import hashlib
import json

import pytest
import torch
from safetensors.torch import save_file

from engine.prompts.embeddings import EmbeddingVector, ForeignEmbedding
from schemas import RequestError
from schemas.infotext import parse_infotext
from engine.tiny.addons import text_width, write_tiny_embedding
from handler.router import route

BASE = {"steps": 3, "width": 64, "height": 64, "seed": 5}
EMBEDDINGS = {  # name -> (suffix, the words whose token embeddings its vectors are, or a count of random ones)
    "RedDog": (".safetensors", "red dog"),
    "GreenHat": (".pt", "green hat wearing"),
    "BlueSky": (".bin", "blue"),
    "EasyNegative": (".safetensors", 1),
}


@pytest.fixture(scope="module")
def ti_engine(tiny_models_dir_factory, start_tiny_engine):
    """tiny-sd15 with the EMBEDDINGS, a 768-wide and an SDXL one (skipped) and a file that is no embedding."""
    models_dir = tiny_models_dir_factory("ti-models")
    engine = start_tiny_engine(models_dir)
    for name, (suffix, content) in EMBEDDINGS.items():
        vectors = content if isinstance(content, int) else word_vectors(engine.model.encoder, content)
        write_tiny_embedding(models_dir, name, vectors, suffix)
    write_tiny_embedding(models_dir, "Wide", 2, width=768)
    save_file({"clip_g": torch.zeros(3, 1280), "clip_l": torch.zeros(3, 768)},
              models_dir / "embeddings" / "XL.safetensors")
    (models_dir / "embeddings" / "notes.pt").write_bytes(b"not an embedding")
    engine.embeddings.refresh()
    return engine


@pytest.fixture(scope="module")
def encoder(ti_engine):
    return ti_engine.model.encoder


def word_vectors(encoder, words: str) -> torch.Tensor:
    """The text encoder's input embeddings of the words' tokens: an embedding holding them must encode
    exactly like the words."""
    ids = encoder.tokenizer(words, add_special_tokens=False).input_ids
    return encoder.encoders[0][1].get_input_embeddings().weight[ids].detach().clone()


def vector_positions(chunk_tokens) -> list[tuple[int, str, int]]:
    return [(i, t.embedding.name, t.index) for i, t in enumerate(chunk_tokens) if isinstance(t, EmbeddingVector)]


@pytest.mark.parametrize("with_embedding, with_words", [
    ("a RedDog on grass", "a red dog on grass"),  # .safetensors {"emb_params"}, 2 vectors
    ("a GreenHat dog", "a green hat wearing dog"),  # A1111's .pt (string_to_param), 3 vectors
    ("a BlueSky", "a blue"),  # diffusers concept .bin, one vector
    ("a reddog, REDDOG", "a red dog, red dog"),  # matched on CLIP tokens: case does not matter
    ("a (RedDog:1.4) [GreenHat]", "a (red dog:1.4) [green hat wearing]"),  # emphasis weighs its vectors
])
def test_embedding_vectors_stand_exactly_where_the_name_is(encoder, with_embedding, with_words):
    assert torch.equal(encoder.encode(with_embedding), encoder.encode(with_words))


def test_embedding_changes_the_conditioning_from_its_position_on(encoder):
    with_embedding, plain = encoder.encode("a cat EasyNegative on grass"), encoder.encode("a cat dog on grass")
    assert torch.equal(with_embedding[:, :3], plain[:, :3])  # BOS, a, cat: CLIP attention is causal
    assert not torch.allclose(with_embedding[:, 3], plain[:, 3])
    assert not torch.allclose(with_embedding[:, 4:], plain[:, 4:])


def test_a_multi_vector_embedding_takes_one_position_per_vector(encoder):
    [(tokens, weights)] = encoder.chunks("GreenHat (x:1.5)")
    assert vector_positions(tokens) == [(1, "GreenHat", 0), (2, "GreenHat", 1), (3, "GreenHat", 2)]
    assert tokens[4] == encoder.tokenizer.convert_tokens_to_ids("x</w>") and weights[4] == 1.5


def test_an_embedding_that_does_not_fit_moves_whole_to_the_next_chunk(encoder):
    assert len(encoder.chunks("cat " * 72 + "GreenHat")) == 1  # 72 + 3 = 75 positions: fits
    first, second = encoder.chunks("cat " * 73 + "GreenHat")
    assert vector_positions(first[0]) == [] and first[0][74:] == [encoder.tokenizer.eos_token_id] * 3
    assert vector_positions(second[0]) == [(1, "GreenHat", 0), (2, "GreenHat", 1), (3, "GreenHat", 2)]


def test_the_comma_backtrack_moves_an_embedding_with_its_text(encoder):
    first, second = encoder.chunks("cat " * 70 + ", GreenHat cat cat")  # the chunk fills 4 tokens after the comma
    assert vector_positions(first[0]) == []
    assert vector_positions(second[0]) == [(1, "GreenHat", 0), (2, "GreenHat", 1), (3, "GreenHat", 2)]


def test_wrong_width_is_skipped_and_a_foreign_file_left_out(ti_engine, encoder):
    listing = route(ti_engine, "GET", "embeddings", {})
    assert list(listing["skipped"]) == ["Wide", "XL"]
    assert [(e["shape"], e["vectors"]) for e in listing["skipped"].values()] == [(768, 2), (1280 + 768, 3)]
    assert "notes" not in listing["loaded"] and "notes" not in listing["skipped"]


@pytest.mark.parametrize("field", ["prompt", "negative_prompt"])
def test_naming_an_embedding_of_another_family_is_an_error(ti_engine, encoder, field):
    """A1111 would encode the name as plain text; the worker says the embedding doesn't fit."""
    with pytest.raises(ForeignEmbedding, match="'XL'"):
        encoder.chunks("a XL cat")
    with pytest.raises(RequestError) as error:
        route(ti_engine, "POST", "txt2img", {**BASE, field: "a photo, (Wide:1.2)"})
    assert error.value.field == field and "'Wide'" in str(error.value) and "another model family" in str(error.value)


def test_listing_in_a1111_shape(ti_engine):
    listing = route(ti_engine, "GET", "embeddings", {})
    assert list(listing["loaded"]) == ["BlueSky", "EasyNegative", "GreenHat", "RedDog"]
    width = text_width()
    assert listing["loaded"]["RedDog"] == {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None,
                                           "shape": width, "vectors": 2}
    assert listing["loaded"]["GreenHat"] == {"step": 1500, "sd_checkpoint": "0123456789",
                                             "sd_checkpoint_name": "tiny-sd15", "shape": width, "vectors": 3}


def test_refresh_finds_new_files_and_drops_stale_encodings(ti_engine, encoder):
    models_dir = ti_engine.models_dir
    before = encoder.encode("a LateOne")
    path = write_tiny_embedding(models_dir, "LateOne", 1, seed=9)
    try:
        assert torch.equal(encoder.encode("a LateOne"), before)  # not read until refreshed
        assert route(ti_engine, "POST", "refresh-embeddings", {}) is None
        assert "LateOne" in route(ti_engine, "GET", "embeddings", {})["loaded"]
        assert not torch.equal(encoder.encode("a LateOne"), before)
    finally:
        path.unlink()
        ti_engine.embeddings.refresh()


def test_ti_hashes_in_the_infotext_and_the_same_image_as_the_words(ti_engine, decode_png):
    output = route(ti_engine, "POST", "txt2img", {**BASE, "prompt": "a RedDog",
                                                  "negative_prompt": "EasyNegative, GreenHat, RedDog"})
    infotext = json.loads(output["info"])["infotexts"][0]
    hashes = {name: hashlib.sha256((ti_engine.models_dir / "embeddings" / f"{name}{suffix}").read_bytes())
              .hexdigest()[:12] for name, (suffix, _) in EMBEDDINGS.items()}
    expected = f"RedDog: {hashes['RedDog']}, EasyNegative: {hashes['EasyNegative']}, GreenHat: {hashes['GreenHat']}"
    assert f'TI hashes: "{expected}"' in infotext
    assert parse_infotext(infotext)["TI hashes"] == expected
    words = route(ti_engine, "POST", "txt2img", {**BASE, "prompt": "a red dog",
                                                 "negative_prompt": "EasyNegative, green hat wearing, red dog"})
    assert decode_png(words["images"][0]).tobytes() == decode_png(output["images"][0]).tobytes()
    assert "TI hashes" in json.loads(words["info"])["infotexts"][0]  # EasyNegative is still used
    plain = route(ti_engine, "POST", "txt2img", {**BASE, "prompt": "a red dog"})
    assert "TI hashes" not in json.loads(plain["info"])["infotexts"][0]
