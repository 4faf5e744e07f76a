"""Progress while a job runs, and live previews: the worker in RunPod's production mode against a loopback stand-in
for RunPod's job API (RunPod's local test server runs jobs inside /status and ignores progress_update, so it can't
show them), /sdapi/v1/progress during an HTTP generation, and the previews themselves."""

from __future__ import annotations

import base64
import io
import json
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import torch
from PIL import Image

from conftest import REPO_ROOT, free_port
from engine.families.sd1 import PREVIEW_COEFFICIENTS as SD1
from engine.families.sdxl import PREVIEW_COEFFICIENTS as SDXL
from engine.tasks.progress import Progress
from handler.__main__ import production_mode
from handler.http.app import create_app
from handler.progress_updates import interval_from_env
from handler.worker import make_handler

BODY = {"prompt": "a lighthouse", "steps": 4, "width": 64, "height": 64, "seed": 3, "subseed": 5}
API_KEY = "test-key"


class JobApi(ThreadingHTTPServer):
    """RunPod's job API as the SDK uses it: GET job-take hands out the queued jobs one by one (then, as a long poll
    with nothing to hand out, 204 after a while), GET job-stop has nothing to stop, and every POST (job-done,
    job-stream) is recorded in arrival order with its query and JSON body."""

    daemon_threads = True

    def __init__(self, jobs: list[dict]):
        self.jobs, self.posts, self.lock = list(jobs), [], threading.Lock()
        self.results = threading.Semaphore(0)  # released at each job result (a job-done post that isn't IN_PROGRESS)
        super().__init__(("127.0.0.1", free_port()), _JobApiRequest)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v2/endpoint"


class _JobApiRequest(BaseHTTPRequestHandler):
    server: JobApi

    def do_GET(self):  # noqa: N802
        with self.server.lock:
            job = self.server.jobs.pop(0) if "/job-take/" in self.path and self.server.jobs else None
        if job is None:
            time.sleep(0.3)
            return self._answer(204, b"")
        self._answer(200, json.dumps(job).encode(), "application/json")

    def do_POST(self):  # noqa: N802
        url = urlsplit(self.path)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        post = {"path": url.path, "query": parse_qs(url.query), "body": body,
                "authorization": self.headers.get("Authorization")}
        with self.server.lock:
            self.server.posts.append(post)
        self._answer(200, b"{}", "application/json")
        if "/job-done/" in url.path and body.get("status") != "IN_PROGRESS":
            self.server.results.release()

    def _answer(self, status: int, data: bytes, content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


JOBS = [
    {"id": "with-previews", "input": {**BODY, "previews": {"every": 1}}},
    {"id": "bad-previews", "input": {**BODY, "previews": {"every": 0}}},
    {"id": "envelope", "input": {"api": {"method": "POST", "endpoint": "/sdapi/v1/txt2img"}, "payload": BODY}},
]


@pytest.fixture(scope="module")
def job_api(models_dir, worker_env, tmp_path_factory):
    """The stand-in with JOBS, after the real worker (`python -m handler`, production mode) posted every result."""
    server = JobApi(JOBS)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = worker_env(models_dir, RUNPOD_WEBHOOK_GET_JOB=f"{server.base}/job-take/$ID?gpu=test",
                     RUNPOD_WEBHOOK_POST_OUTPUT=f"{server.base}/job-done/$RUNPOD_POD_ID/$ID?gpu=test",
                     RUNPOD_WEBHOOK_POST_STREAM=f"{server.base}/job-stream/$RUNPOD_POD_ID/$ID?gpu=test",
                     RUNPOD_AI_API_KEY=API_KEY, RUNPOD_SKIP_GPU_CHECK="true", RUNPOD_SKIP_AUTO_SYSTEM_CHECKS="true",
                     WORKER_PROGRESS_INTERVAL="0.01")
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen([sys.executable, "-m", "handler"], cwd=REPO_ROOT, env=env, stdout=out,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        for _ in JOBS:
            if not server.results.acquire(timeout=120):
                pytest.fail(f"no result within 120 s; worker log:\n{log.read_text(errors='replace')[-3000:]}")
    finally:
        worker.send_signal(signal.SIGTERM)  # the SDK stops taking jobs and exits
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(timeout=20)
        server.shutdown()
    return server


def posts_of(job_api: JobApi, job_id: str) -> list[dict]:
    return [post for post in job_api.posts if post["path"].endswith(f"/{job_id}")]


def decode_jpeg(data: str) -> Image.Image:
    raw = base64.b64decode(data, validate=True)
    assert raw.startswith(b"\xff\xd8"), "not a JPEG"
    image = Image.open(io.BytesIO(raw))
    image.load()
    return image


def test_progress_updates_come_in_order_before_the_result_and_end_at_one(job_api):
    posts = posts_of(job_api, "with-previews")
    *updates, result = posts
    assert all("/job-done/" in post["path"] and post["query"]["isStream"] == ["false"] for post in posts)
    assert all(post["authorization"] == API_KEY for post in posts)
    assert [post["body"]["status"] for post in updates] == ["IN_PROGRESS"] * len(updates)
    assert "status" not in result["body"] and "images" in result["body"]["output"]
    assert len(updates) >= 2, "no update while the job ran"
    outputs = [post["body"]["output"] for post in updates]
    fractions = [output["progress"] for output in outputs]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and fractions[0] < 1.0
    steps = [(output["state"]["job_no"], output["state"]["sampling_step"]) for output in outputs]
    assert steps == sorted(steps)
    for output in outputs:
        state = output["state"]
        assert state["job"] == "txt2img" and state["job_count"] == 1
        assert state["sampling_steps"] in (0, BODY["steps"])  # 0: sampling has not begun (the prompt is encoded)
        assert 0 <= state["sampling_step"] <= BODY["steps"]
        assert isinstance(output["eta_relative"], float) and output["eta_relative"] >= 0
    assert outputs[-1]["eta_relative"] == 0.0 and outputs[-1]["state"]["sampling_step"] == BODY["steps"]
    assert not [post for post in job_api.posts if "/job-stream/" in post["path"]]


def test_previews_are_small_jpegs_when_asked(job_api):
    outputs = [post["body"]["output"] for post in posts_of(job_api, "with-previews")[:-1]]
    previews = [decode_jpeg(output["current_image"]) for output in outputs if output["current_image"]]
    assert previews and outputs[-1]["current_image"]  # the last update carries the latest preview
    for preview in previews:
        assert preview.format == "JPEG" and preview.size == (BODY["width"] // 8, BODY["height"] // 8)
    assert all(len(output["current_image"]) < 4000 for output in outputs if output["current_image"])
    # asked for by neither of the other forms' jobs: progress without previews
    envelope = [post["body"]["output"] for post in posts_of(job_api, "envelope")[:-1]]
    assert envelope and envelope[-1]["progress"] == 1.0
    assert all(output["current_image"] is None for output in envelope)


def test_the_result_is_the_a1111_body_the_handler_returns(job_api, engine):
    local = make_handler(engine)({"id": "local", "input": BODY})
    for job_id in ("with-previews", "envelope"):
        output = posts_of(job_api, job_id)[-1]["body"]["output"]
        assert set(output) == {"images", "parameters", "info"}
        assert output["images"] == local["images"] and output["parameters"] == local["parameters"]
        info, expected = json.loads(output["info"]), json.loads(local["info"])
        assert info.pop("job_timestamp") and expected.pop("job_timestamp")
        assert info == expected


def test_a_bad_previews_request_fails_the_job_without_updates(job_api):
    (result,) = posts_of(job_api, "bad-previews")
    assert result["body"]["error"].startswith("previews: must be")
    assert "output" not in result["body"]


# ---------------------------------------------------------------- the A1111 HTTP API

@pytest.fixture
def slow_steps(engine):
    """Each UNet evaluation of the shared engine takes 0.2 s longer (for this test)."""
    hook = engine.model.unet.register_forward_hook(lambda *args: time.sleep(0.2))
    yield
    hook.remove()


def test_http_progress_shows_the_running_generation_and_its_preview(engine, serve_app, slow_steps, decode_png):
    base = serve_app(create_app(engine)) + "/sdapi/v1/"
    original = engine.options
    requests.post(base + "options", json={"show_progress_every_n_steps": 2}, timeout=30).raise_for_status()
    result = {}
    generation = threading.Thread(target=lambda: result.update(
        response=requests.post(base + "txt2img", json={**BODY, "steps": 8}, timeout=300)))
    try:
        generation.start()
        deadline = time.monotonic() + 60
        while True:
            progress = requests.get(base + "progress", timeout=10).json()
            if progress["state"]["job"] == "txt2img" and progress["current_image"]:
                break
            assert time.monotonic() < deadline and generation.is_alive(), "no preview during the generation"
            time.sleep(0.05)
        skipped = requests.get(base + "progress", params={"skip_current_image": "true"}, timeout=10).json()
        generation.join(timeout=120)
    finally:
        engine.options = original
    assert progress["state"]["job"] == "txt2img" and progress["state"]["sampling_steps"] == 8
    assert progress["state"]["sampling_step"] >= 2 and 0 < progress["progress"] < 1
    assert progress["eta_relative"] > 0
    assert decode_png(progress["current_image"]).size == (8, 8)
    assert skipped["current_image"] is None and skipped["state"]["job"] == "txt2img"
    assert result["response"].status_code == 200


# ---------------------------------------------------------------- the previews and the settings

def test_progress_keeps_latents_every_n_steps_and_previews_them_by_the_family():
    progress = Progress()
    progress.begin("txt2img", preview_every=2)
    progress.expect(1, SD1)
    latents = [torch.full((2, 4, 3, 5), float(step)) for step in range(6)]
    progress.step(0, 6, latents[0])
    progress.step(1, 6, latents[1])
    assert progress.preview() is None  # step 0 is the noise; step 1 is the first of two
    progress.step(2, 6, latents[2])
    first = progress.preview()
    progress.step(3, 6, latents[3])
    assert progress.preview() is first  # made once, until other latents are kept
    progress.step(4, 6, latents[4])
    second = progress.preview()
    assert (first.number, second.number) == (1, 2) and second.image.size == (5, 3)
    # latents of 4 (0..3) on every channel: RGB = 4 * (the column sums), mapped from [-1, 1] to 0..255
    expected = tuple(round(min(max((4 * sum(row[c] for row in SD1) + 1) * 127.5, 0), 255)) for c in range(3))
    assert second.image.getpixel((0, 0)) == expected
    progress.end()
    assert progress.preview() is second  # the last preview outlives its job, as A1111's does
    progress.begin("txt2img")
    assert progress.preview() is None


def test_previews_use_the_latents_family_coefficients():
    progress = Progress()
    progress.begin("txt2img", preview_every=1)
    progress.expect(1, SDXL)
    latents = torch.zeros(1, 4, 2, 2)
    latents[0, 1] = 1.0
    progress.step(1, 2, latents)
    assert progress.preview().image.getpixel((1, 1)) == tuple(round((SDXL[1][c] + 1) * 127.5) for c in range(3))
    progress.begin("txt2img", preview_every=1)
    progress.expect(1, None)  # a family without coefficients: no previews
    progress.step(1, 2, latents)
    assert progress.preview() is None


@pytest.mark.parametrize("value, expected", [("", 1.0), ("0", 0.0), ("0.25", 0.25), ("2", 2.0)])
def test_progress_interval_setting(monkeypatch, value, expected):
    monkeypatch.setenv("WORKER_PROGRESS_INTERVAL", value)
    assert interval_from_env() == expected


@pytest.mark.parametrize("value", ["-1", "soon", "inf", "nan"])
def test_a_bad_progress_interval_is_refused_naming_the_variable(monkeypatch, value):
    monkeypatch.setenv("WORKER_PROGRESS_INTERVAL", value)
    with pytest.raises(ValueError, match="WORKER_PROGRESS_INTERVAL"):
        interval_from_env()



@pytest.mark.parametrize("job_api_url, argv, expected", [
    ("http://api/job-take/$ID?gpu=x", [], True),
    ("http://api/job-take/$ID?gpu=x", ["--rp_log_level", "INFO"], True),
    ("http://api/job-take/$ID?gpu=x", ["--test_input", "{}"], False),
    ("http://api/job-take/$ID?gpu=x", ["--test_input={}"], False),
    ("http://api/job-take/$ID?gpu=x", ["--rp_serve_api"], False),
    (None, [], False),
])
def test_updates_are_posted_only_in_the_sdks_production_mode(monkeypatch, job_api_url, argv, expected):
    if job_api_url:
        monkeypatch.setenv("RUNPOD_WEBHOOK_GET_JOB", job_api_url)
    else:
        monkeypatch.delenv("RUNPOD_WEBHOOK_GET_JOB", raising=False)
    assert production_mode(argv) is expected
