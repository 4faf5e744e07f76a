"""The A1111 HTTP API through real HTTP on a free loopback port: shapes, auth, errors, clients."""

from __future__ import annotations

import base64
import io
import subprocess
import sys
import threading
import time

import pytest
import requests
import webuiapi
from PIL import Image

from conftest import REPO_ROOT, subprocess_env
from handler.http.__main__ import main as http_main
from handler.http.__main__ import parse_credentials
from handler.http.app import create_app
from handler.worker import make_handler

SMALL = {"width": 64, "height": 64, "steps": 2}


@pytest.fixture(scope="module")
def serve(engine, serve_app):
    """start(credentials, tokens): an app on the shared engine, served on a free port; returns its base URL."""
    return lambda credentials=(), tokens=(): serve_app(create_app(engine, credentials, tokens))


@pytest.fixture(scope="module")
def base(serve) -> str:
    return serve()


def api(base: str) -> str:
    return base + "/sdapi/v1/"


LISTINGS = {
    "sd-models": (list, {"title", "model_name", "hash", "sha256", "filename", "config"}),
    "samplers": (list, {"name", "aliases", "options"}),
    "schedulers": (list, {"name", "label", "aliases", "default_rho", "need_inner_model"}),
    "latent-upscale-modes": (list, {"name"}),
    "upscalers": (list, {"name", "model_name", "model_path", "model_url", "scale"}),
    "sd-vae": (list, None), "loras": (list, None), "prompt-styles": (list, None), "face-restorers": (list, None),
    "hypernetworks": (list, None),
    "embeddings": (dict, {"loaded", "skipped"}),
    "scripts": (dict, {"txt2img", "img2img"}),
    "cmd-flags": (dict, None),
    "memory": (dict, {"ram", "cuda"}),
    "options": (dict, {"sd_model_checkpoint", "CLIP_stop_at_last_layers", "samples_format"}),
    "progress": (dict, {"progress", "eta_relative", "state", "current_image", "textinfo"}),
}


@pytest.mark.parametrize("name", LISTINGS)
def test_listing_shapes(base, name):
    response = requests.get(api(base) + name, timeout=30)
    assert response.status_code == 200
    kind, keys = LISTINGS[name]
    body = response.json()
    assert isinstance(body, kind)
    if keys and kind is list:
        assert body and all(keys <= set(item) for item in body)
    elif keys:
        assert keys <= set(body)


def test_idle_progress_shape(base):
    state = requests.get(api(base) + "progress", timeout=10).json()
    assert state["progress"] == 0 and state["state"]["job"] == "" and state["state"]["job_count"] == 0
    assert set(state["state"]) == {"skipped", "interrupted", "stopping_generation", "job", "job_count",
                                   "job_timestamp", "job_no", "sampling_step", "sampling_steps"}


@pytest.mark.parametrize("name, expected", [
    ("interrupt", {}), ("skip", None), ("refresh-checkpoints", None), ("refresh-vae", None),
    ("refresh-loras", None), ("reload-checkpoint", {}), ("unload-checkpoint", {}),
])
def test_control_endpoints(base, name, expected):
    response = requests.post(api(base) + name, timeout=60)
    assert response.status_code == 200 and response.json() == expected


def test_txt2img_img2img_pnginfo_shapes(base):
    output = requests.post(api(base) + "txt2img", json={"prompt": "a fox", "seed": 4, **SMALL}, timeout=60).json()
    assert set(output) == {"images", "parameters", "info"} and len(output["images"]) == 1
    image = output["images"][0]
    again = requests.post(api(base) + "img2img", json={"init_images": [image], **SMALL}, timeout=60).json()
    assert set(again) == {"images", "parameters", "info"}
    info = requests.post(api(base) + "png-info", json={"image": image}, timeout=30).json()
    assert set(info) == {"info", "items", "parameters"} and info["parameters"]["Seed"] == "4"


def test_validation_errors_are_422_naming_the_field(base):
    response = requests.post(api(base) + "txt2img", json={"width": 5000, "steps": 0}, timeout=30)
    assert response.status_code == 422
    fields = {tuple(problem["loc"]) for problem in response.json()["detail"]}
    assert fields == {("body", "width"), ("body", "steps")}
    bad_image = requests.post(api(base) + "img2img", json={"init_images": ["nope"]}, timeout=30)
    assert bad_image.status_code == 422 and bad_image.json()["detail"][0]["loc"] == ["body", "init_images", "0"]
    not_json = requests.post(api(base) + "txt2img", data=b"{", headers={"content-type": "application/json"}, timeout=30)
    assert not_json.status_code == 422


def test_unknown_endpoint_is_a_clear_404(base):
    response = requests.post(api(base) + "nothing-here", json={}, timeout=10)
    assert response.status_code == 404
    detail = "POST /sdapi/v1/nothing-here is not offered by this worker"
    assert response.json() == {"error": "Not Found", "detail": detail, "body": "", "errors": ""}


def test_openapi_docs(base):
    assert requests.get(base + "/docs", timeout=10).status_code == 200
    paths = requests.get(base + "/openapi.json", timeout=10).json()["paths"]
    assert "/sdapi/v1/txt2img" in paths and "/sdapi/v1/sd-models" in paths


def test_webuiapi_client(base, engine):
    port = int(base.rsplit(":", 1)[1])
    client = webuiapi.WebUIApi(host="127.0.0.1", port=port, sampler="Euler a", steps=2)
    result = client.txt2img(prompt="a small boat", width=64, height=64, seed=8)
    assert result.image.size == (64, 64) and result.info["all_seeds"] == [8]
    assert client.img2img(images=[result.image], width=64, height=64, denoising_strength=0.4).image.size == (64, 64)
    assert client.png_info(result.image).parameters["Seed"] == "8"
    assert "tiny-sd15.safetensors [" in " ".join(client.util_get_model_names())
    assert "Euler a" in client.util_get_sampler_names() and "karras" in client.util_get_scheduler_names()
    original = client.util_get_current_model()
    try:
        client.util_set_model("tiny-sd15-inpainting")
        assert client.util_get_current_model().startswith("tiny-sd15-inpainting.safetensors")
        assert client.txt2img(prompt="x", width=64, height=64).info["sd_model_name"] == "tiny-sd15-inpainting"
    finally:
        client.set_options({"sd_model_checkpoint": original})
    assert client.get_options()["sd_model_checkpoint"] == original


def test_tutorial_style_requests_script(base):
    url = base
    requests.post(f"{url}/sdapi/v1/options", json={"sd_model_checkpoint": "tiny-sd15", "unknown_option": 1},
                  timeout=60).raise_for_status()
    response = requests.post(f"{url}/sdapi/v1/txt2img", json={"prompt": "puppy dog", "steps": 2,
                                                              "width": 64, "height": 64}, timeout=60)
    image_b64 = response.json()["images"][0]
    Image.open(io.BytesIO(base64.b64decode(image_b64)))
    png_payload = {"image": "data:image/png;base64," + image_b64}
    info = requests.post(f"{url}/sdapi/v1/png-info", json=png_payload, timeout=30).json()["info"]
    assert info.startswith("puppy dog\nSteps: 2") and "Model: tiny-sd15," in info


def test_basic_auth(serve):
    base = serve(credentials=parse_credentials("alice:s3cret,bob:pw"))
    url = api(base) + "sd-models"
    assert requests.get(url, timeout=10).status_code == 401
    denied = requests.get(url, auth=("alice", "wrong"), timeout=10)
    assert denied.status_code == 401 and denied.json()["detail"] == "Incorrect username or password"
    assert requests.get(url, auth=("alice", "s3cret"), timeout=30).status_code == 200
    assert requests.get(url, auth=("bob", "pw"), timeout=30).status_code == 200


def test_bearer_tokens(serve):
    base = serve(tokens=["token-one"])
    url = api(base) + "samplers"
    assert requests.get(url, timeout=10).status_code == 401
    assert requests.get(url, headers={"Authorization": "Bearer nope"}, timeout=10).status_code == 401
    assert requests.get(url, headers={"Authorization": "Bearer token-one"}, timeout=10).status_code == 200


def test_api_auth_format_is_checked_before_the_model_loads(capsys, monkeypatch):
    monkeypatch.setenv("MODELS_DIR", "/nonexistent")  # a start would fail differently
    with pytest.raises(SystemExit) as exit_info:
        http_main(["--api-auth", "alice:pw,just-a-user"])
    assert exit_info.value.code == 2
    assert "argument --api-auth: expected user:password, got 'just-a-user'" in capsys.readouterr().err


# ---------------------------------------------------------------- the image's HTTP command, as a process

def test_http_command_serves_the_api(server_process, models_dir):
    """`python -m handler.http`, the command Lambda-style platforms run the image with (README)."""
    base = server_process(["handler.http", "--host", "127.0.0.1", "--port", "{port}"], models_dir)
    response = requests.post(api(base) + "txt2img", json={"prompt": "a lighthouse", "seed": 3, **SMALL}, timeout=300)
    assert response.status_code == 200, response.text[:500]
    (image,) = response.json()["images"]
    assert Image.open(io.BytesIO(base64.b64decode(image))).size == (64, 64)
    assert "Seed: 3," in response.json()["info"]
    assert requests.post(api(base) + "txt2img", json={"width": 63}, timeout=60).status_code == 422


def test_http_command_without_checkpoints_exits_with_a_clear_message(tmp_path):
    result = subprocess.run([sys.executable, "-m", "handler.http", "--port", "0"], cwd=REPO_ROOT,
                            env=subprocess_env(tmp_path / "empty"), capture_output=True, text=True, timeout=300,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 1
    assert "Stable-diffusion" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("method, endpoint", [("GET", "sd-models"), ("GET", "samplers"), ("GET", "options"),
                                              ("GET", "progress"), ("GET", "latent-upscale-modes")])
def test_envelope_reaches_the_same_endpoints(base, engine, method, endpoint):
    over_http = requests.get(api(base) + endpoint, timeout=30).json()
    envelope = {"api": {"method": method, "endpoint": f"/sdapi/v1/{endpoint}"}, "payload": {}}
    assert make_handler(engine)({"id": "j", "input": envelope}) == over_http


def test_envelope_posts_options(engine):
    handler = make_handler(engine)
    original = engine.options
    try:
        handler({"input": {"api": {"method": "POST", "endpoint": "options"},
                           "payload": {"CLIP_stop_at_last_layers": 2}}})
        assert handler({"input": {"api": {"method": "GET", "endpoint": "options"}}})["CLIP_stop_at_last_layers"] == 2
    finally:
        engine.options = original


def test_progress_answers_during_generation_and_interrupt_stops_it(base, engine):
    """/progress is answered while a generation holds the queue; /interrupt ends it early."""
    calls = []
    unet = engine.model.unet
    hook = unet.register_forward_hook(lambda *args: calls.append(1))
    result = {}
    payload = {"prompt": "a long job", "steps": 150, "n_iter": 3, "width": 64, "height": 64, "seed": 1}
    worker = threading.Thread(target=lambda: result.update(
        response=requests.post(api(base) + "txt2img", json=payload, timeout=300)))
    try:
        worker.start()
        deadline = time.monotonic() + 120
        while True:
            state = requests.get(api(base) + "progress", timeout=10).json()
            if state["state"]["sampling_step"] >= 2:
                break
            assert time.monotonic() < deadline and worker.is_alive(), "generation never reported progress"
            time.sleep(0.05)
        assert state["state"]["job"] == "txt2img" and state["state"]["sampling_steps"] == 150
        assert state["state"]["job_count"] == 3 and 0 < state["progress"] < 1
        assert requests.post(api(base) + "interrupt", timeout=10).json() == {}
        worker.join(timeout=120)
    finally:
        hook.remove()
    assert result["response"].status_code == 200
    assert len(result["response"].json()["images"]) == 1  # the batch under way; the other two never ran
    assert len(calls) < 150
    assert requests.get(api(base) + "progress", timeout=10).json()["state"]["job"] == ""


def test_skip_ends_only_the_current_batch(engine):
    from handler.router import route

    calls = []

    def skip_after_two_steps(*args):
        calls.append(1)
        if len(calls) == 2:
            engine.progress.skipped = True

    hook = engine.model.unet.register_forward_hook(skip_after_two_steps)
    try:
        output = route(engine, "POST", "txt2img", {"prompt": "x", "steps": 5, "n_iter": 2, "width": 64, "height": 64})
    finally:
        hook.remove()
    assert len(output["images"]) == 2 and len(calls) == 2 + 5


def test_upscalers_listing_names_what_hires_fix_accepts(base, engine):
    from handler.router import route

    names = [item["name"] for item in requests.get(api(base) + "upscalers", timeout=10).json()]
    assert names == ["None", "Lanczos", "Nearest"]
    for name in names:  # each listed name works as hr_upscaler
        route(engine, "POST", "txt2img", {**SMALL, "enable_hr": True, "denoising_strength": 0.3, "hr_scale": 1.25,
                                          "hr_upscaler": name})


def test_webuiapi_extras(base):
    port = int(base.rsplit(":", 1)[1])
    client = webuiapi.WebUIApi(host="127.0.0.1", port=port)
    image = Image.new("RGB", (32, 24), (10, 120, 200))
    single = client.extra_single_image(image=image, upscaler_1="Lanczos", upscaling_resize=2)
    assert single.image.size == (64, 48) and "Postprocess upscale by: 2" in single.info
    batch = client.extra_batch_images(images=[image, image], upscaler_1="Nearest", upscaling_resize=2)
    assert [i.size for i in batch.images] == [(64, 48), (64, 48)]
