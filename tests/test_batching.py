"""Several jobs at once: compatible txt2img requests run as one batch (engine/tasks/batch.py) and give the images
they give alone; incompatible ones run alone; a bad request in a batch fails alone; the RunPod worker takes
WORKER_CONCURRENCY jobs at once (handler/batching.py), checked in its production mode against a stand-in for
RunPod's job API."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest

from conftest import REPO_ROOT
from handler.batching import BatchingEngine
from schemas import RequestError, Txt2ImgRequest
from test_live_progress import API_KEY, JobApi, _JobApiRequest

BASE = {"steps": 3, "width": 64, "height": 64, "sampler_name": "Euler a"}
REQUESTS = [  # one batch key: prompts, seeds, CFG scales, batch sizes, chunk counts and AND parts differ
    Txt2ImgRequest(prompt="a cat", seed=1, cfg_scale=7, **BASE),
    Txt2ImgRequest(prompt="a (dog:1.3) BREAK in a park", negative_prompt="blurry", seed=2, cfg_scale=5, batch_size=2,
                   **BASE),
    Txt2ImgRequest(prompt="a [cat:dog:2] AND a hat :0.5", seed=3, cfg_scale=9, **BASE),
]


def pixels(generation) -> np.ndarray:
    return np.stack([np.asarray(image.image, dtype=np.int16) for image in generation.images])


def test_a_batch_gives_each_request_its_images_seeds_and_infotexts(engine):
    assert len({engine.batch_key(request) for request in REQUESTS}) == 1
    together = engine.txt2img_batch(REQUESTS)
    for request, batched in zip(REQUESTS, together):
        alone = engine.txt2img(request)
        assert np.abs(pixels(batched) - pixels(alone)).max() <= 1  # batch-size-dependent kernels: a level at most
        assert batched.info["all_seeds"] == alone.info["all_seeds"]
        assert batched.info["infotexts"] == alone.info["infotexts"]


def test_a_bad_request_fails_alone_and_the_others_complete(engine):
    bad = Txt2ImgRequest(prompt="a cat <lora:no-such-lora:1>", seed=4, **BASE)
    first, failed, last = engine.txt2img_batch([REQUESTS[0], bad, REQUESTS[2]])
    assert isinstance(failed, RequestError) and "no-such-lora" in str(failed)
    assert np.array_equal(pixels(first), pixels(engine.txt2img(REQUESTS[0])))
    assert np.abs(pixels(last) - pixels(engine.txt2img(REQUESTS[2]))).max() <= 1


@pytest.mark.parametrize("change", [
    {"steps": 4}, {"width": 128}, {"sampler_name": "Euler"}, {"scheduler": "Karras", "sampler_name": "DPM++ 2M"},
    {"prompt": "a cat <lora:tiny-lora:0.5>"}, {"tiling": True}, {"override_settings": {"CLIP_stop_at_last_layers": 2}},
    {"eta": 0.5},
])
def test_requests_that_differ_in_what_the_denoiser_sees_are_not_batched(engine, change):
    assert engine.batch_key(Txt2ImgRequest(**{**BASE, "prompt": "a cat", **change})) != \
        engine.batch_key(REQUESTS[0])


@pytest.mark.parametrize("change", [
    {"enable_hr": True, "denoising_strength": 0.5}, {"n_iter": 2}, {"override_settings_restore_afterwards": False},
    {"refiner_checkpoint": "tiny-sd15"},
    {"alwayson_scripts": {"controlnet": {"args": [{"enabled": True, "image": "x"}]}}},
    {"script_name": "prompts from file or textbox", "script_args": [False, False, "start", "a\nb"]},
])
def test_requests_with_work_of_their_own_run_alone(engine, change):
    assert engine.batch_key(Txt2ImgRequest(**{**BASE, "prompt": "a cat", **change})) is None


@pytest.fixture
def held_batches(engine, monkeypatch) -> tuple[list[int], threading.Event]:
    """(the sizes of the batches the engine ran, an event that lets the first one go): the first call holds the
    engine until the others wait behind it."""
    batches, release = [], threading.Event()
    original = type(engine).txt2img_batch

    def recording(self, requests):
        release.wait(10)
        batches.append(len(requests))
        return original(self, requests)

    monkeypatch.setattr(type(engine), "txt2img_batch", recording)
    return batches, release


def run_while_held(calls, release: threading.Event) -> None:
    """The first call starts (and holds the engine), the others arrive while it waits; then the engine goes on."""
    threads = [threading.Thread(target=call) for call in calls]
    threads[0].start()
    time.sleep(0.5)
    for thread in threads[1:]:
        thread.start()
    time.sleep(1)
    release.set()
    for thread in threads:
        thread.join(120)


def test_calls_that_arrive_while_the_engine_is_busy_batch(engine, held_batches):
    """Threads calling txt2img together: the engine thread takes the compatible ones as one batch, each caller gets
    its own generation; an error reaches only its caller."""
    batches, release = held_batches
    batching = BatchingEngine(engine)
    bad = Txt2ImgRequest(prompt="a cat BREAK " * 30, seed=4, **BASE)  # over the chunk limit: fails in the batch
    assert engine.batch_key(bad) == engine.batch_key(REQUESTS[0])
    results: dict[int, object] = {}

    def call(index, request):
        try:
            results[index] = batching.txt2img(request)
        except RequestError as error:
            results[index] = error

    run_while_held([lambda i=i, r=r: call(i, r) for i, r in enumerate([*REQUESTS, bad])], release)
    assert batches == [1, 3]  # the first ran alone; the three that waited, together
    assert isinstance(results[3], RequestError)
    for index, request in enumerate(REQUESTS):
        assert np.abs(pixels(results[index]) - pixels(engine.txt2img(request))).max() <= 1
    assert batching.options is engine.options  # plain attributes are read as they are


class _BatchTake(_JobApiRequest):
    """The batch job-take API (the SDK asks it for several jobs when its concurrency is above 1)."""

    def do_GET(self):  # noqa: N802
        url = urlsplit(self.path)
        if "/job-take-batch/" not in url.path:
            return super().do_GET()
        wanted = int(parse_qs(url.query).get("batch_size", ["1"])[0])
        with self.server.lock:
            jobs, self.server.jobs = self.server.jobs[:wanted], self.server.jobs[wanted:]
        if not jobs:
            time.sleep(0.3)
            return self._answer(204, b"")
        self.server.taken.append(len(jobs))
        self._answer(200, json.dumps(jobs).encode(), "application/json")


def test_the_worker_takes_several_jobs_at_once_and_answers_each(models_dir, worker_env, tmp_path):
    jobs = [{"id": f"job-{i}", "input": {**BASE, "prompt": f"a cat number {i}", "seed": i}} for i in range(3)]
    server = JobApi(jobs)
    server.RequestHandlerClass, server.taken = _BatchTake, []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = worker_env(models_dir, RUNPOD_WEBHOOK_GET_JOB=f"{server.base}/job-take/$ID?gpu=test",
                     RUNPOD_WEBHOOK_POST_OUTPUT=f"{server.base}/job-done/$RUNPOD_POD_ID/$ID?gpu=test",
                     RUNPOD_WEBHOOK_POST_STREAM=f"{server.base}/job-stream/$RUNPOD_POD_ID/$ID?gpu=test",
                     RUNPOD_AI_API_KEY=API_KEY, RUNPOD_SKIP_GPU_CHECK="true", RUNPOD_SKIP_AUTO_SYSTEM_CHECKS="true",
                     WORKER_PROGRESS_INTERVAL="0", WORKER_CONCURRENCY="3")
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen([sys.executable, "-m", "handler"], cwd=REPO_ROOT, env=env, stdout=out,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        for _ in jobs:
            assert server.results.acquire(timeout=120), log.read_text(errors="replace")[-3000:]
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
        server.shutdown()
    assert server.taken[0] == 3  # asked for three at once
    done = {post["path"].rsplit("/", 1)[-1]: post["body"] for post in server.posts if "/job-done/" in post["path"]}
    assert set(done) == {job["id"] for job in jobs}
    for job in jobs:
        info = json.loads(done[job["id"]]["output"]["info"])
        assert info["all_seeds"] == [job["input"]["seed"]] and info["prompt"] == job["input"]["prompt"]


def test_the_http_server_batches_requests_that_arrive_together(engine, serve_app, held_batches):
    """With concurrency, requests that arrive while one runs wait for the engine thread and run as one batch; each
    response is the one it gets alone."""
    import requests

    from handler.http.app import create_app

    batches, release = held_batches
    base = serve_app(create_app(engine, queue_size=8, concurrency=4))
    bodies = [{**BASE, "prompt": f"a cat number {i}", "seed": i} for i in range(4)]
    responses: dict[int, dict] = {}

    def post(index):
        responses[index] = requests.post(f"{base}/sdapi/v1/txt2img", json=bodies[index], timeout=120).json()

    run_while_held([lambda i=i: post(i) for i in range(4)], release)
    assert batches == [1, 3]
    for index, body in enumerate(bodies):
        alone = engine.txt2img(Txt2ImgRequest(**body))
        assert json.loads(responses[index]["info"])["infotexts"] == alone.info["infotexts"]


@pytest.fixture(scope="module")
def addons_engine(tiny_models_dir_factory, start_tiny_engine):
    """tiny-sd15 with a tiny LoRA and VAE."""
    from engine.tiny.addons import write_tiny_vae
    from engine.tiny.lora import write_tiny_lora

    directory = tiny_models_dir_factory("batching-models")
    write_tiny_lora(directory, "tiny-lora", seed=1)
    write_tiny_vae(directory, "other.safetensors", seed=2)
    return start_tiny_engine(directory)


def test_concurrent_jobs_keep_their_own_loras_overrides_vaes_and_sizes(addons_engine):
    """Jobs that differ (a LoRA, an override, a VAE, a size) run side by side through the batching engine, each
    getting exactly the images it gets alone, and the next request is the base model's."""
    engine = addons_engine
    batching = BatchingEngine(engine)
    requests_ = [Txt2ImgRequest(**{**BASE, "prompt": "a cat", "seed": 9, **change}) for change in (
        {}, {"prompt": "a cat <lora:tiny-lora:0.8>"}, {"override_settings": {"CLIP_stop_at_last_layers": 2}},
        {"override_settings": {"sd_vae": "other.safetensors"}}, {"width": 128}, {"prompt": "a dog"})]
    alone = [pixels(engine.txt2img(request)) for request in requests_]
    assert all(not np.array_equal(alone[0], other) for other in alone[1:4] + alone[5:])  # each change shows
    results: dict[int, object] = {}
    threads = [threading.Thread(target=lambda i=i, r=r: results.__setitem__(i, batching.txt2img(r)))
               for i, r in enumerate(requests_)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for index, expected in enumerate(alone):
        assert np.abs(pixels(results[index]) - expected).max() <= 1, index
    assert np.array_equal(pixels(engine.txt2img(requests_[0])), alone[0])
