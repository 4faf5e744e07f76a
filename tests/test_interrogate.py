"""/sdapi/v1/interrogate through both adapters, on the demo's tiny BLIP captioner (random weights, real
transformers classes), and its errors: missing weights, deepdanbooru, an unknown model, a bad image."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
import webuiapi
from fastapi.testclient import TestClient
from PIL import Image

from engine.postprocess.interrogate import BLIP_SUBDIR, MIN_LENGTH, Interrogator
from engine.tiny.blip import NAME, WORDS, write_tiny_blip
from handler.http.app import create_app
from handler.worker import make_handler
from schemas import RequestError

URL = "/sdapi/v1/interrogate"
ENVELOPE_API = {"method": "POST", "endpoint": URL}


def picture(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8), "RGB")


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def client(demo_engine) -> TestClient:
    return TestClient(create_app(demo_engine))


def over_runpod(engine, payload: dict) -> dict:
    return make_handler(engine)({"id": "job", "input": {"api": ENVELOPE_API, "payload": payload}})


def test_both_adapters_answer_a1111s_caption(client, demo_engine):
    payload = {"image": b64(picture(0)), "model": "clip"}
    response = client.post(URL, json=payload)
    assert response.status_code == 200
    assert list(response.json()) == ["caption"]
    caption = response.json()["caption"]
    assert isinstance(caption, str) and caption
    assert over_runpod(demo_engine, payload) == {"caption": caption}
    assert client.post(URL, json={"image": b64(picture(0))}).json() == {"caption": caption}  # "clip" is the default


def test_the_caption_is_blips_continuation_of_its_prompt(client):
    """The tiny BLIP ends its captions as soon as A1111's minimum length allows: MIN_LENGTH tokens, of which
    [DEC] "a picture of" are the prompt, cut from the caption."""
    caption = client.post(URL, json={"image": b64(picture(1))}).json()["caption"]
    words = caption.split(" ")
    assert len(words) == MIN_LENGTH - 4
    assert set(words) <= set(WORDS)


def test_the_caption_is_deterministic_and_depends_on_the_image(client):
    captions = [client.post(URL, json={"image": b64(picture(seed))}).json()["caption"] for seed in range(3)]
    assert client.post(URL, json={"image": b64(picture(0))}).json()["caption"] == captions[0]
    assert len(set(captions)) > 1


def test_webuiapi_client_reads_the_caption(demo_engine, serve_app, client):
    port = int(serve_app(create_app(demo_engine)).rsplit(":", 1)[1])
    result = webuiapi.WebUIApi(host="127.0.0.1", port=port).interrogate(picture(2))  # sends a data: URI
    assert result.info == client.post(URL, json={"image": b64(picture(2))}).json()["caption"]


def test_without_a_blip_folder_the_error_names_what_to_bake(engine):
    output = over_runpod(engine, {"image": b64(picture(0))})
    assert output["error"].startswith(
        f"model: interrogation with 'clip' needs a BLIP captioner, a folder {BLIP_SUBDIR}/<name>/ in transformers' "
        f"layout (bake hf://Salesforce/blip-image-captioning-base with an [[interrogate]] entry), in the models "
        f"directory ({engine.models_dir}), which has none")
    response = TestClient(create_app(engine)).post(URL, json={"image": b64(picture(0))})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "model"]


@pytest.mark.parametrize("payload, message", [
    ({"model": "deepdanbooru"}, "model: 'deepdanbooru' is not offered by this worker"),
    ({"model": "blip2"}, "model: Input should be 'clip' or 'deepdanbooru'"),
    ({"image": "bm90IGFuIGltYWdl"}, "image: not a base64-encoded PNG, JPEG or WebP image"),
    ({"image": None}, "image: Input should be a valid string"),
])
def test_bad_requests_are_refused_naming_the_field(client, demo_engine, payload, message):
    payload = {"image": b64(picture(0)), **payload}
    assert over_runpod(demo_engine, payload)["error"].startswith(message)
    response = client.post(URL, json=payload)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", message.split(":")[0]]


def test_the_captioner_loads_on_first_use_and_is_kept(tmp_path, monkeypatch):
    from transformers import BlipForConditionalGeneration

    write_tiny_blip(tmp_path)
    loads = []
    original = BlipForConditionalGeneration.from_pretrained.__func__
    monkeypatch.setattr(BlipForConditionalGeneration, "from_pretrained",
                        classmethod(lambda cls, *args, **kwargs: loads.append(args) or original(cls, *args, **kwargs)))
    interrogator = Interrogator(tmp_path, torch.device("cpu"), torch.float32)
    assert loads == []
    first = interrogator.interrogate("clip", picture(0))
    assert interrogator.interrogate("clip", picture(0)) == first
    assert loads == [(tmp_path / BLIP_SUBDIR / NAME,)]
    interrogator.unload()
    assert interrogator.interrogate("clip", picture(0)) == first and len(loads) == 2


def test_an_unreadable_blip_folder_is_a_request_error(tmp_path):
    folder = write_tiny_blip(tmp_path)
    (folder / "model.safetensors").write_bytes(b"not weights")
    with pytest.raises(RequestError) as raised:
        Interrogator(tmp_path, torch.device("cpu"), torch.float32).interrogate("clip", picture(0))
    assert str(raised.value).startswith(f"model: the BLIP captioner {BLIP_SUBDIR}/{NAME} can't be loaded: ")
