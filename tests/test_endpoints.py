"""Every endpoint A1111 1.10 serves answers, through both adapters (the HTTP app and the RunPod envelope):
the listings in A1111's shapes, and training and server control refused with 400 and a clear reason."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from handler.http.app import create_app
from handler.router import ROUTES, queued
from handler.worker import make_handler

# A1111 1.10's modules/api/api.py (server-kill, -restart, -stop only with --api-server-stop), and the
# built-in Lora extension's loras / refresh-loras; interrogate is left to its own issue.
A1111_ENDPOINTS = {
    ("POST", "txt2img"), ("POST", "img2img"), ("POST", "extra-single-image"), ("POST", "extra-batch-images"),
    ("POST", "png-info"), ("GET", "progress"), ("POST", "interrupt"), ("POST", "skip"), ("GET", "options"),
    ("POST", "options"), ("GET", "cmd-flags"), ("GET", "samplers"), ("GET", "schedulers"), ("GET", "upscalers"),
    ("GET", "latent-upscale-modes"), ("GET", "sd-models"), ("GET", "sd-vae"), ("GET", "hypernetworks"),
    ("GET", "face-restorers"), ("GET", "realesrgan-models"), ("GET", "prompt-styles"), ("GET", "embeddings"),
    ("POST", "refresh-embeddings"), ("POST", "refresh-checkpoints"), ("POST", "refresh-vae"),
    ("POST", "create/embedding"), ("POST", "create/hypernetwork"), ("POST", "train/embedding"),
    ("POST", "train/hypernetwork"), ("GET", "memory"), ("POST", "unload-checkpoint"),
    ("POST", "reload-checkpoint"), ("GET", "scripts"), ("GET", "script-info"), ("GET", "extensions"),
    ("POST", "server-kill"), ("POST", "server-restart"), ("POST", "server-stop"), ("GET", "loras"),
    ("POST", "refresh-loras"),
}
NOT_OFFERED = {
    "create/embedding": "training", "create/hypernetwork": "training", "train/embedding": "training",
    "train/hypernetwork": "training", "server-kill": "stopping or restarting the server",
    "server-restart": "stopping or restarting the server", "server-stop": "stopping or restarting the server",
}


@pytest.fixture(scope="module")
def listed_dir(tiny_models_dir_factory):
    """tiny-sd15 with files the listings find without reading them: two RealESRGAN/ upscalers, an ESRGAN/ one
    and a VAE; and a styles.csv."""
    directory = tiny_models_dir_factory("endpoint-models")
    (directory / "styles.csv").write_text('name,prompt,negative_prompt\nnoir,"{prompt}, film noir",colour\n')
    for relative in ("RealESRGAN/RealESRGAN_x2plus.pth", "RealESRGAN/custom-4x.pth", "ESRGAN/other.pth",
                     "VAE/other-vae.safetensors"):
        (directory / relative).parent.mkdir(exist_ok=True)
        (directory / relative).write_bytes(b"listed, never loaded")
    return directory


@pytest.fixture(scope="module")
def listed_engine(listed_dir, start_tiny_engine):
    return start_tiny_engine(listed_dir)


@pytest.fixture(scope="module")
def call(listed_engine):
    """call(method, endpoint, payload): (HTTP status, HTTP body, RunPod output) for one endpoint."""
    client, handler = TestClient(create_app(listed_engine)), make_handler(listed_engine)

    def both(method: str, endpoint: str, payload: dict | None = None) -> tuple[int, Any, Any]:
        response = client.request(method, f"/sdapi/v1/{endpoint}", json=payload if method == "POST" else None)
        output = handler({"id": "job", "input": {"api": {"method": method, "endpoint": f"/sdapi/v1/{endpoint}"},
                                                 "payload": payload or {}}})
        return response.status_code, response.json(), output

    return both


def test_every_a1111_endpoint_is_routed():
    assert A1111_ENDPOINTS <= set(ROUTES)


def test_realesrgan_models_lists_the_realesrgan_files_present(call, listed_dir):
    status, body, output = call("GET", "realesrgan-models")
    assert status == 200 and body == output == [
        {"name": "custom-4x", "path": str(listed_dir / "RealESRGAN" / "custom-4x.pth"), "scale": 4},
        {"name": "R-ESRGAN 2x+", "path": str(listed_dir / "RealESRGAN" / "RealESRGAN_x2plus.pth"), "scale": 2}]


def test_prompt_styles_lists_the_styles_file(call):
    status, body, output = call("GET", "prompt-styles")
    assert status == 200 and body == output == [
        {"name": "noir", "prompt": "{prompt}, film noir", "negative_prompt": "colour"}]


def test_sd_modules_lists_the_vaes_in_forges_shape(call, listed_dir):
    status, body, output = call("GET", "sd-modules")
    assert status == 200 and body == output == [
        {"model_name": "other-vae.safetensors", "filename": str(listed_dir / "VAE" / "other-vae.safetensors")}]


def test_extensions_list_nothing(call):
    assert call("GET", "extensions")[1:] == ([], [])


@pytest.mark.parametrize("endpoint", NOT_OFFERED)
def test_training_and_server_control_are_refused_with_a_reason(call, endpoint):
    status, body, output = call("POST", endpoint, {"name": "x", "steps": 1})
    assert status == 400
    assert set(body) == {"error", "detail", "body", "errors"} and body["error"] == "Bad Request"
    assert body["detail"].startswith(NOT_OFFERED[endpoint]) and "not offered by a serverless worker" in body["detail"]
    assert output == {"error": body["detail"]}
    assert not queued("POST", endpoint)  # answered at once, never behind a generation
