"""The smoke test: a job through the deployed endpoint's /runsync, its answer checked as A1111's.

The job is test_input.json, asking for base64 delivery unless it names one, so the PNGs themselves are
checked even where the endpoint uploads to a bucket by default. A /runsync that returns before the job
is done (a cold start takes longer than its wait) is followed through /status until `timeout_s`.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Callable
from pathlib import Path

from .errors import DeployError
from .runpod_api import RunPodApi

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PENDING = ("IN_QUEUE", "IN_PROGRESS")


def read_job(path: Path) -> dict:
    """The job file's content, asking for base64 images unless it says otherwise."""
    try:
        job = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise DeployError(f"cannot read the smoke-test job {path}: {error}") from None
    if not isinstance(job, dict) or not isinstance(job.get("input"), dict):
        raise DeployError(f"{path}: a job is {{\"input\": {{...}}}}")
    return {**job, "input": {"delivery": {"mode": "base64"}, **job["input"]}}


def run_smoke_test(api: RunPodApi, endpoint_id: str, job: dict, *, timeout_s: float = 600, poll_s: float = 5,
                   sleep: Callable[[float], None] = time.sleep,
                   clock: Callable[[], float] = time.monotonic) -> str:
    """Runs `job` on the endpoint; a one-line summary of a good answer, else a DeployError saying what is wrong."""
    deadline = clock() + timeout_s
    result = api.post(f"/{endpoint_id}/runsync", job)
    while isinstance(result, dict) and result.get("status") in PENDING:
        if clock() >= deadline:
            raise DeployError(f"smoke test: job {result.get('id')} still {result['status']} after {timeout_s:g} s")
        sleep(poll_s)
        result = api.get(f"/{endpoint_id}/status/{result.get('id')}")
    return check_a1111_response(result)


def check_a1111_response(result) -> str:
    """A one-line summary of a COMPLETED job whose output is A1111's txt2img response; else a DeployError."""
    if not isinstance(result, dict) or result.get("status") != "COMPLETED":
        status = result.get("status") if isinstance(result, dict) else type(result).__name__
        error = f": {result['error']}" if isinstance(result, dict) and result.get("error") else ""
        raise DeployError(f"smoke test: the job ended {status}{error}")
    output = result.get("output")
    images = output.get("images") if isinstance(output, dict) else None
    if not isinstance(images, list) or not images:
        raise DeployError("smoke test: the output has no `images` (expected A1111's response)")
    for index, image in enumerate(images):
        try:
            png = isinstance(image, str) and base64.b64decode(image, validate=True).startswith(PNG_SIGNATURE)
        except binascii.Error:
            png = False
        if not png:
            raise DeployError(f"smoke test: images[{index}] is not a base64 PNG")
    try:
        info = json.loads(output.get("info"))
    except (TypeError, ValueError):
        info = None
    if not isinstance(info, dict):
        raise DeployError("smoke test: the output's `info` is not a JSON object string")
    return f"{len(images)} PNG image(s), seeds {info.get('all_seeds')}, in {result.get('executionTime', '?')} ms"
