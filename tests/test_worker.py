"""The RunPod worker: the handler function for both input forms and its errors, then the real thing —
`python -m handler` serving RunPod's local HTTP API, the start-up error, and `python -m handler.local`
(../shared/runpod.md)."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from PIL import Image

from handler.worker import make_handler, parse_job_input

REPO_ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable

SMALL = {"width": 64, "height": 64, "steps": 2}
ENDPOINTS = ["/sdapi/v1/txt2img", "sdapi/v1/txt2img", "txt2img"]

# a1111-api.md "txt2img request fields and their API defaults": the whole documented body as a client
# that spells everything out sends it (steps reduced to keep the test fast)
A1111_FULL_TXT2IMG_BODY = {
    "prompt": "", "negative_prompt": "", "styles": None, "seed": -1, "subseed": -1, "subseed_strength": 0,
    "seed_resize_from_h": -1, "seed_resize_from_w": -1, "sampler_name": None, "scheduler": None,
    "batch_size": 1, "n_iter": 1, "steps": 3, "cfg_scale": 7.0, "width": 512, "height": 512,
    "restore_faces": None, "tiling": None, "do_not_save_samples": False, "do_not_save_grid": False, "eta": None,
    "denoising_strength": None, "s_min_uncond": None, "s_churn": None, "s_tmax": None, "s_tmin": None,
    "s_noise": None, "override_settings": None, "override_settings_restore_afterwards": True,
    "refiner_checkpoint": None, "refiner_switch_at": None, "disable_extra_networks": False, "comments": None,
    "enable_hr": False, "firstphase_width": 0, "firstphase_height": 0, "hr_scale": 2.0, "hr_upscaler": None,
    "hr_second_pass_steps": 0, "hr_resize_x": 0, "hr_resize_y": 0, "hr_checkpoint_name": None,
    "hr_sampler_name": None, "hr_scheduler": None, "hr_prompt": "", "hr_negative_prompt": "",
    "force_task_id": None, "sampler_index": "Euler", "script_name": None, "script_args": [],
    "send_images": True, "save_images": False, "alwayson_scripts": {}, "infotext": None,
}

BAD_PAYLOADS = [  # (payload, the field the error must name)
    ({"prompt": "a cat", "width": 63}, "width"),
    ({"prompt": "a cat", "steps": 0}, "steps"),
    ({"prompt": "a cat", "steps": "many"}, "steps"),
    ({"prompt": "a cat", "sampler_name": "Nope"}, "sampler_name"),
    ({"prompt": "a cat", "scheduler": "KL Optimal"}, "scheduler"),
    ({"prompt": "a cat", "restore_faces": True}, "restore_faces"),
    ({"prompt": "a cat", "batch_size": 8, "n_iter": 100}, "batch_size"),
]


@pytest.fixture(scope="module")
def handle(engine):
    return make_handler(engine)


def assert_one_line_error(output: dict, *needles: str) -> str:
    assert list(output) == ["error"], output
    error = output["error"]
    assert isinstance(error, str) and error  # a dict error would make RunPod report COMPLETED
    assert "\n" not in error and "Traceback" not in error
    for needle in needles:
        assert needle in error, error
    return error


@pytest.fixture
def assert_image_response(decode_png, read_parameters):
    def check(output: dict, size=(64, 64), count=1):
        assert set(output) == {"images", "parameters", "info"}, output.get("error")
        assert len(output["images"]) == count
        for image in output["images"]:
            decoded = decode_png(image)
            assert decoded.size == size
            assert read_parameters(decoded) in json.loads(output["info"])["infotexts"]

    return check


# ---------------------------------------------------------------- input forms

def test_bare_a1111_body(handle, assert_image_response):
    output = handle({"id": "job-1", "input": {"prompt": "a cat", "seed": 3, **SMALL}})
    assert_image_response(output)
    assert json.loads(output["info"])["seed"] == 3


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_envelope(handle, endpoint, assert_image_response):
    job = {"id": "job-2", "input": {"api": {"method": "POST", "endpoint": endpoint},
                                    "payload": {"prompt": "a cat", "seed": 3, **SMALL}}}
    output = handle(job)
    assert_image_response(output)
    bare = handle({"id": "job-3", "input": {"prompt": "a cat", "seed": 3, **SMALL}})
    assert output["images"] == bare["images"]  # the same request either way


def test_envelope_method_defaults_to_post_and_is_case_insensitive():
    assert parse_job_input({"api": {"endpoint": "/sdapi/v1/txt2img"}, "payload": {}})[0] == "POST"
    method, endpoint, payload = parse_job_input({"api": {"method": "post", "endpoint": "txt2img"},
                                                 "payload": {"prompt": "x"}})
    assert (method.upper(), endpoint, payload) == ("POST", "txt2img", {"prompt": "x"})
    assert parse_job_input({"prompt": "x"}) == ("POST", "txt2img", {"prompt": "x"})


@pytest.mark.parametrize("body, endpoint", [
    ({"prompt": "x"}, "txt2img"),
    ({}, "txt2img"),
    ({"init_images": ["a"], "prompt": "x"}, "img2img"),
    ({"init_images": ["a"], "image": "b"}, "img2img"),
    ({"imageList": [{"data": "a"}]}, "extra-batch-images"),
    ({"image": "a", "upscaler_1": "Lanczos"}, "extra-single-image"),
])
def test_a_bare_body_is_routed_by_its_keys(body, endpoint):
    assert parse_job_input(body) == ("POST", endpoint, body)


# ---------------------------------------------------------------- errors

@pytest.mark.parametrize("payload,field", BAD_PAYLOADS, ids=[f for _, f in BAD_PAYLOADS])
def test_bad_payload_is_a_one_line_error_naming_the_field(handle, payload, field):
    assert_one_line_error(handle({"id": "bad", "input": payload}), field)
    envelope = {"api": {"method": "POST", "endpoint": "/sdapi/v1/txt2img"}, "payload": payload}
    assert_one_line_error(handle({"id": "bad", "input": envelope}), field)


def test_unknown_sampler_error_lists_valid_names(handle):
    error = assert_one_line_error(handle({"input": {"sampler_name": "Nope"}}), "sampler_name", "'Nope'")
    assert "DPM++ 2M" in error and "Euler a" in error


@pytest.mark.parametrize("job_input", ["a cat", ["a cat"], 42, None])
def test_input_that_is_not_an_object(handle, job_input):
    assert_one_line_error(handle({"id": "x", "input": job_input}), "input", "JSON object")


def test_job_without_input(handle):
    assert_one_line_error(handle({"id": "x"}), "input")


@pytest.mark.parametrize("job_input,field", [
    ({"api": "txt2img", "payload": {}}, "api"),
    ({"api": {"method": "POST"}, "payload": {}}, "api"),
    ({"api": {"method": "POST", "endpoint": 7}, "payload": {}}, "api"),
    ({"api": {"method": "DELETE", "endpoint": "txt2img"}, "payload": {}}, "api.method"),
    ({"api": {"method": "POST", "endpoint": "txt2img"}, "payload": "prompt=a cat"}, "payload"),
    ({"api": {"method": "POST", "endpoint": "txt2img"}, "payload": [1, 2]}, "payload"),
])
def test_bad_envelope(handle, job_input, field):
    assert assert_one_line_error(handle({"id": "x", "input": job_input})).startswith(f"{field}:")


@pytest.mark.parametrize("method,endpoint", [("POST", "/sdapi/v1/nope"), ("GET", "/sdapi/v1/txt2img"),
                                             ("POST", "/other/v2/txt2img")])
def test_unknown_endpoint(handle, method, endpoint):
    error = assert_one_line_error(
        handle({"input": {"api": {"method": method, "endpoint": endpoint}, "payload": {}}}), "api.endpoint")
    assert "is not offered" in error and "POST /sdapi/v1/txt2img" in error


def test_engine_failure_is_an_internal_error_and_the_worker_goes_on(engine, monkeypatch, assert_image_response):
    original = engine.txt2img
    calls = []

    def fail_once(request, *rest):
        calls.append(request)
        if len(calls) == 1:
            raise RuntimeError("CUDA out of memory.\nTried to allocate 2.00 GiB")
        return original(request)

    monkeypatch.setattr(engine, "txt2img", fail_once)
    handle = make_handler(engine)
    error = assert_one_line_error(handle({"id": "boom", "input": {"prompt": "a cat", **SMALL}}))
    assert error.startswith("internal error: RuntimeError: CUDA out of memory.")
    assert "Tried to allocate" in error
    assert_image_response(handle({"id": "next", "input": {"prompt": "a cat", **SMALL}}))
    assert len(calls) == 2


# ---------------------------------------------------------------- the real worker over HTTP

@pytest.fixture(scope="module")
def runsync(models_dir, server_process):
    """POST /runsync on `python -m handler --rp_serve_api` (RunPod's local API)."""
    base = server_process(["handler", "--rp_serve_api", "--rp_api_port", "{port}", "--rp_api_host", "127.0.0.1"],
                          models_dir)

    def post(job_input) -> dict:
        response = requests.post(f"{base}/runsync", json={"input": job_input}, timeout=300)
        assert response.status_code == 200, response.text[:500]
        return response.json()

    return post


@pytest.fixture
def completed_image(decode_png, read_parameters):
    """The infotext of the one image a COMPLETED /runsync result holds, checked against `info`."""
    def check(result: dict, size: tuple[int, int]) -> str:
        assert result.get("status") == "COMPLETED", result.get("error")
        assert result["id"]
        (image,) = result["output"]["images"]
        decoded = decode_png(image)
        assert decoded.size == size
        infotext = read_parameters(decoded)
        assert infotext and infotext == json.loads(result["output"]["info"])["infotexts"][0]
        return infotext

    return check


def test_http_prompt_only(runsync, completed_image):
    infotext = completed_image(runsync({"prompt": "Astronaut planting a flag on the moon", "steps": 4}), (512, 512))
    assert infotext.startswith("Astronaut planting a flag on the moon\nSteps: 4, Sampler: Euler, ")
    assert "Size: 512x512," in infotext


def test_http_full_documented_parameter_list(runsync, completed_image):
    result = runsync(A1111_FULL_TXT2IMG_BODY)
    completed_image(result, (512, 512))
    assert result["output"]["parameters"]["steps"] == 3


def test_http_envelope(runsync, completed_image):
    result = runsync({"api": {"method": "POST", "endpoint": "/sdapi/v1/txt2img"},
                      "payload": {"prompt": "a cat", "seed": 5, **SMALL}})
    assert "Seed: 5," in completed_image(result, (64, 64))


def test_http_bare_extras_body(runsync, decode_png):
    buffer = io.BytesIO()
    Image.new("RGB", (16, 8), (10, 200, 30)).save(buffer, format="PNG")
    result = runsync({"image": base64.b64encode(buffer.getvalue()).decode(), "upscaler_1": "Nearest"})
    assert result.get("status") == "COMPLETED", result.get("error")
    assert result["output"]["html_info"] == "<p>Postprocess upscale by: 2, Postprocess upscaler: Nearest</p>"
    assert decode_png(result["output"]["image"]).size == (32, 16)


def test_http_bad_payload_fails_then_the_next_job_completes(runsync, completed_image):
    result = runsync({"prompt": "a cat", "width": 63, "steps": 2})
    assert result["status"] == "FAILED"
    assert "output" not in result or not result["output"]
    error = result["error"]
    assert isinstance(error, str) and "\n" not in error and error.startswith("width:")
    completed_image(runsync({"prompt": "a cat", **SMALL}), (64, 64))


# ---------------------------------------------------------------- start-up and local runs

def test_worker_without_checkpoints_exits_with_a_clear_message(tmp_path, worker_env):
    result = subprocess.run([PYTHON, "-m", "handler"], cwd=REPO_ROOT, env=worker_env(tmp_path / "empty"),
                            capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Stable-diffusion" in output
    assert "Traceback" not in output


# libraries a txt2img job on the RunPod worker never needs: S3 delivery, the HTTP server, upscalers,
# face restoration. boto3 is made unimportable: accelerate (which transformers and diffusers import)
# imports it whenever it is installed, so the run shows that nothing of ours needs it.
NOT_ON_THE_START_PATH = ("boto3", "botocore", "fastapi", "uvicorn", "starlette", "spandrel", "cv2")
_REPORT_MODULES_AT_EXIT = """
import atexit, runpy, sys
sys.modules["boto3"] = None
atexit.register(lambda: print("MODULES", *sorted(sys.modules)))
sys.argv = ["handler", "--test_input", sys.argv[1]]
runpy.run_module("handler", run_name="__main__", alter_sys=True)
"""


def test_worker_start_and_first_job_import_only_what_they_need(models_dir, worker_env):
    job = json.dumps({"input": {"prompt": "a cat", **SMALL}})
    result = subprocess.run([PYTHON, "-c", _REPORT_MODULES_AT_EXIT, job], cwd=REPO_ROOT, env=worker_env(models_dir),
                            capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "completed successfully" in result.stdout
    modules = next(line for line in result.stdout.splitlines() if line.startswith("MODULES ")).split()[1:]
    assert "torch" in modules and "runpod.serverless" in modules  # the report is real
    assert [m for m in modules if m.split(".")[0] in NOT_ON_THE_START_PATH] == ["boto3"]  # None: blocked
    pipelines = {m.split(".")[2] for m in modules if m.startswith("diffusers.pipelines.") and m.count(".") >= 3}
    assert pipelines <= {"stable_diffusion", "pipeline_utils", "pipeline_loading_utils"}, pipelines


def test_local_runner_writes_pngs_and_prints_their_paths(models_dir, tmp_path, worker_env, read_parameters):
    job = json.loads((REPO_ROOT / "test_input.json").read_text())
    job["input"]["steps"] = 2
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps(job))
    outputs = tmp_path / "outputs"
    result = subprocess.run([PYTHON, "-m", "handler.local", str(job_file), "--outputs", str(outputs)],
                            cwd=REPO_ROOT, env=worker_env(models_dir), capture_output=True, text=True,
                            timeout=300, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-3000:]
    printed = [Path(line) for line in result.stdout.splitlines() if line.strip().endswith(".png")]
    assert len(printed) == 1
    written = sorted(outputs.glob("*.png"))
    assert [p.resolve() for p in written] == [(p if p.is_absolute() else REPO_ROOT / p).resolve() for p in printed]
    image = Image.open(written[0])
    assert image.format == "PNG"
    assert image.size == (job["input"]["width"], job["input"]["height"])
    infotext = read_parameters(image)
    assert infotext.startswith(job["input"]["prompt"] + "\nNegative prompt: " + job["input"]["negative_prompt"])
    assert "Sampler: DPM++ 2M, Schedule type: Karras," in infotext and "Seed: 42," in infotext


def test_local_runner_reports_a_failed_job(models_dir, tmp_path, worker_env):
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps({"input": {"prompt": "a cat", "width": 63}}))
    result = subprocess.run([PYTHON, "-m", "handler.local", str(job_file), "--outputs", str(tmp_path / "out")],
                            cwd=REPO_ROOT, env=worker_env(models_dir), capture_output=True, text=True,
                            timeout=300, stdin=subprocess.DEVNULL)
    assert result.returncode == 1
    assert "width" in result.stderr and "Traceback" not in result.stderr
    assert not list((tmp_path / "out").glob("*.png"))
