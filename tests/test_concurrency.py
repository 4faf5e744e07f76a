"""The HTTP adapter under concurrent requests: state changes wait for the running generation, control
endpoints answer while dozens of requests wait, a full queue answers 503, server faults are logged.

A generation is held in the middle of sampling (a UNet forward hook waits for an event), so the tests do
not depend on the machine's speed.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from fastapi.testclient import TestClient

from handler.http.app import create_app
from handler.router import ROUTES, queued

TINY = {"prompt": "a queue", "width": 64, "height": 64, "steps": 1}
CHANGES = [("unload-checkpoint", {}), ("reload-checkpoint", {}),
           ("options", {"sd_model_checkpoint": "tiny-sd15-inpainting"}), ("refresh-checkpoints", {}),
           ("refresh-vae", {}), ("refresh-loras", {}), ("refresh-embeddings", {})]
WAITING = 50  # more than starlette's 40 threads


def api(base: str, endpoint: str) -> str:
    return f"{base}/sdapi/v1/{endpoint}"


def wait_until(condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


@contextlib.contextmanager
def held_generation(engine):
    """Holds the next generation in its first sampling step until the block ends; yields the event it sets
    when it is held."""
    held, release = threading.Event(), threading.Event()

    def hold(*args):
        if not held.is_set():
            held.set()
            release.wait(timeout=60)

    hook = engine.model.unet.register_forward_hook(hold)
    try:
        yield held
    finally:
        release.set()
        hook.remove()


def timed(method: str, url: str, **kwargs) -> tuple[requests.Response, float]:
    started = time.monotonic()
    response = requests.request(method, url, timeout=10, **kwargs)
    return response, time.monotonic() - started


def test_the_router_says_which_endpoints_wait_for_the_queue():
    waiting = {endpoint for method, endpoint in ROUTES if queued(method, endpoint)}
    assert waiting == {"txt2img", "img2img", "extra-single-image", "extra-batch-images", "interrogate",
                       "controlnet/detect", *(name for name, _ in CHANGES)}
    assert queued("post", "/sdapi/v1/options") and not queued("GET", "options")
    assert not queued("POST", "interrupt") and not queued("POST", "nonexistent")


def test_state_changes_wait_for_the_running_generation(engine, serve_app, monkeypatch):
    """Unload, reload, options and refresh-* sent during a generation all succeed, after it has finished."""
    events = []

    def record(owner, name: str) -> None:
        original, label = getattr(owner, name), f"{type(owner).__name__}.{name}"

        def recorded(*args, **kwargs):
            events.append(("start", label))
            try:
                return original(*args, **kwargs)
            finally:
                events.append(("end", label))

        monkeypatch.setattr(owner, name, recorded)

    for owner, name in [(engine, "txt2img"), (engine, "unload"), (engine, "reload"), (engine, "set_options"),
                        (engine, "refresh_checkpoints"), (engine.vaes, "refresh"), (engine.loras, "refresh"),
                        (engine.embeddings, "refresh")]:
        record(owner, name)
    app = create_app(engine)
    base, original = serve_app(app), engine.options
    try:
        with ThreadPoolExecutor(len(CHANGES) + 1) as client, held_generation(engine) as held:
            generation = client.submit(requests.post, api(base, "txt2img"), json=TINY, timeout=60)
            assert held.wait(timeout=30)
            changes = [client.submit(requests.post, api(base, name), json=body, timeout=60) for name, body in CHANGES]
            wait_until(lambda: app.state.queue.admitted == 1 + len(CHANGES))
            assert not any(change.done() for change in changes)
        assert generation.result().status_code == 200
        assert [change.result().status_code for change in changes] == [200] * len(CHANGES)
        assert engine.options.sd_model_checkpoint.startswith("tiny-sd15-inpainting.safetensors")
    finally:
        engine.options = original
    assert events[:2] == [("start", "Engine.txt2img"), ("end", "Engine.txt2img")]  # nothing changed while it ran
    assert {label for _, label in events[2:]} == {"Engine.unload", "Engine.reload", "Engine.set_options",
                                                  "Engine.refresh_checkpoints", "Vaes.refresh", "LoraLibrary.refresh",
                                                  "Embeddings.refresh"}


def test_control_endpoints_answer_while_dozens_of_generations_wait(engine, serve_app):
    app = create_app(engine, queue_size=WAITING)
    base = serve_app(app)
    with ThreadPoolExecutor(WAITING + 1) as client:
        with held_generation(engine) as held:
            first = client.submit(requests.post, api(base, "txt2img"), json={**TINY, "steps": 3}, timeout=120)
            assert held.wait(timeout=30)
            queued_ones = [client.submit(requests.post, api(base, "txt2img"), json=TINY, timeout=120)
                           for _ in range(WAITING)]
            wait_until(lambda: app.state.queue.admitted == WAITING + 1)
            for method, endpoint in [("GET", "progress"), ("GET", "options"), ("GET", "sd-models"),
                                     ("GET", "progress"), ("POST", "interrupt")]:
                response, seconds = timed(method, api(base, endpoint))
                assert response.status_code == 200 and seconds < 1.0, (endpoint, seconds)
            assert timed("GET", api(base, "progress"))[0].json()["state"]["interrupted"] is True
        assert [response.result().status_code for response in [first, *queued_ones]] == [200] * (WAITING + 1)
    assert app.state.queue.admitted == 0


def test_a_full_queue_answers_503_with_retry_after(engine, serve_app, monkeypatch):
    monkeypatch.setenv("WORKER_QUEUE_SIZE", "1")  # read when the app is created
    app = create_app(engine)
    base = serve_app(app)
    with ThreadPoolExecutor(2) as client:
        with held_generation(engine) as held:
            running = client.submit(requests.post, api(base, "txt2img"), json=TINY, timeout=60)
            assert held.wait(timeout=30)
            waiting = client.submit(requests.post, api(base, "txt2img"), json=TINY, timeout=60)
            wait_until(lambda: app.state.queue.admitted == 2)
            for endpoint in ["txt2img", "refresh-checkpoints"]:  # state changes take a place in the queue too
                full, seconds = timed("POST", api(base, endpoint), json=TINY)
                assert full.status_code == 503 and seconds < 1.0
                assert int(full.headers["Retry-After"]) >= 1
                assert full.json() == {"error": "Service Unavailable", "body": "", "errors": "",
                                       "detail": "the queue is full (1 waiting); retry later"}
            assert timed("GET", api(base, "progress"))[0].status_code == 200
        assert running.result().status_code == 200 and waiting.result().status_code == 200
    assert requests.post(api(base, "txt2img"), json=TINY, timeout=60).status_code == 200


@pytest.mark.parametrize("value", ["lots", "-1", ""])
def test_queue_size_must_be_a_whole_number(engine, monkeypatch, value):
    monkeypatch.setenv("WORKER_QUEUE_SIZE", value)
    with pytest.raises(ValueError, match="WORKER_QUEUE_SIZE must be a whole number"):
        create_app(engine)


def test_a_server_fault_is_a_500_with_its_traceback_in_the_log(engine, monkeypatch, caplog):
    def fail(request, *rest):
        raise RuntimeError("the device\nfell over")

    monkeypatch.setattr(engine, "txt2img", fail)
    caplog.set_level(logging.INFO, logger="handler.http.app")
    client = TestClient(create_app(engine))
    response = client.post("/sdapi/v1/txt2img", json=TINY)
    assert response.status_code == 500
    assert response.json() == {"error": "RuntimeError", "detail": "the device fell over", "body": "", "errors": ""}
    (fault,) = [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert fault.getMessage() == "POST /sdapi/v1/txt2img failed" and fault.exc_info[0] is RuntimeError
    assert "Traceback" in caplog.text and "Traceback" not in response.text
    caplog.clear()
    assert client.post("/sdapi/v1/txt2img", json={"width": 63}).status_code == 422  # a client error: no fault
    assert client.get("/sdapi/v1/nonexistent").status_code == 404
    assert [(record.levelno, record.getMessage().rsplit(" ", 2)[0]) for record in caplog.records
            if record.name == "handler.http.app"] == [
        (logging.INFO, "POST /sdapi/v1/txt2img 422"), (logging.INFO, "GET /sdapi/v1/nonexistent 404")]
