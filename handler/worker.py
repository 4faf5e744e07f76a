"""The RunPod serverless adapter: job input -> router -> A1111 response, or a FAILED job with one line.

Images are delivered as the job asks (`input.delivery`, the job's `s3Config`, BUCKET_* settings): see
handler/delivery.py. Each job logs one line: id, endpoint, size, seconds, outcome (never images,
prompts or credentials). Accepted inputs (../shared/runpod.md):
  - the bare A1111 body, routed by its keys (BARE_BODY_KEYS): img2img when it has `init_images`,
    extra-batch-images when it has `imageList`, extra-single-image when it has `image`, else txt2img
  - the envelope: {"api": {"method": "POST", "endpoint": "/sdapi/v1/txt2img"}, "payload": {...}}
Beside either, `previews: {"every": N}` asks for a live preview every N sampling steps in the job's progress
updates, which the worker posts in RunPod's production mode (handler/progress_updates.py).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from engine.faults import OutOfMemory
from schemas import RequestError
from schemas.errors import quoted

from .delivery import DeliveryError, Destination
from .errors import BadEnvelope, NotOffered, describe
from .router import UnknownEndpoint, normalize_endpoint, route

if TYPE_CHECKING:
    from engine.runtime import Engine

    from .progress_updates import ProgressUpdates

log = logging.getLogger(__name__)

_CALLER_ERRORS = (ValidationError, RequestError, UnknownEndpoint, BadEnvelope, DeliveryError, NotOffered)

# a bare body's endpoint: that of the first of these keys it has, else txt2img
BARE_BODY_KEYS = {"init_images": "img2img", "imageList": "extra-batch-images", "image": "extra-single-image"}


def bare_body_endpoint(body: dict[str, Any]) -> str:
    """Extras bodies have no prompt: one with both is refused rather than guessed."""
    key = next((key for key in BARE_BODY_KEYS if key in body), None)
    if key is None:
        return "txt2img"
    endpoint = BARE_BODY_KEYS[key]
    if endpoint.startswith("extra-") and "prompt" in body:
        raise BadEnvelope(f"input: a body with {key!r} is /sdapi/v1/{endpoint}, which takes no 'prompt'; "
                          "remove one of them, or name the endpoint with the envelope")
    return endpoint


def parse_job_input(job_input: Any) -> tuple[str, str, dict[str, Any]]:
    """(method, endpoint, payload) from either input form (`delivery` is read beside them)."""
    if not isinstance(job_input, dict):
        raise BadEnvelope(f"input: must be a JSON object (got {type(job_input).__name__})")
    if "api" not in job_input:
        return "POST", bare_body_endpoint(job_input), job_input
    api, payload = job_input["api"], job_input.get("payload", {})
    if not isinstance(api, dict) or not isinstance(api.get("endpoint"), str):
        raise BadEnvelope('api: must be {"method": "POST" or "GET", "endpoint": "/sdapi/v1/<name>"}')
    if not isinstance(payload, dict):
        raise BadEnvelope(f"payload: must be a JSON object (got {type(payload).__name__})")
    method = api.get("method", "POST")
    if not isinstance(method, str) or method.upper() not in ("GET", "POST"):
        raise BadEnvelope(f"api.method: must be GET or POST (got {quoted(str(method))})")
    return method, api["endpoint"], payload


def previews_asked(job_input: dict[str, Any]) -> int:
    """Sampling steps between the live previews the job asks for (`previews: {"every": N}`); 0: none."""
    previews = job_input.get("previews")
    if previews is None:
        return 0
    every = previews.get("every") if isinstance(previews, dict) and set(previews) == {"every"} else None
    if not isinstance(every, int) or isinstance(every, bool) or every < 1:
        raise BadEnvelope('previews: must be {"every": N}: a live preview every N sampling steps (N >= 1)')
    return every


def make_handler(engine: Engine, updates: ProgressUpdates | None = None) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """`updates`: how to post each job's progress while it runs (RunPod's production mode); None: not at all."""
    def handle(job: dict[str, Any]) -> dict[str, Any]:
        """A returned string `error` makes the job FAILED; the worker goes on to the next job."""
        started, job_id = time.monotonic(), str(job.get("id") or uuid.uuid4().hex)
        output, outcome, failure = _run(engine, job_id, job, updates)
        endpoint, size = _summary(job.get("input"))
        log.log(logging.ERROR if failure else logging.INFO, "job %s: %s %s, %.2f s, %s", _one_line(job_id, 100),
                _one_line(endpoint, 40), size, time.monotonic() - started, outcome, exc_info=failure)
        return output

    return handle


def _run(engine: Engine, job_id: str, job: dict[str, Any],
         updates: ProgressUpdates | None) -> tuple[dict[str, Any], str, Exception | None]:
    """(the job's output, its outcome for the log, the exception of an internal error: its traceback is logged)."""
    try:
        method, endpoint, payload = parse_job_input(job.get("input"))
        previews = previews_asked(job["input"])
        destination = Destination.for_job(job_id, job["input"].get("delivery"), job.get("s3Config"))
        with updates.track(job, engine.progress, previews > 0) if updates else nullcontext():
            output = route(engine, method, endpoint, payload, destination, previews)
        return output, "ok", None
    except _CALLER_ERRORS as error:
        message = describe(error)
        return {"error": message}, f"client error: {_one_line(message, 200)}", None
    except OutOfMemory as error:  # the server's limit, not a bug: its own message; the cache was emptied
        return {"error": str(error)}, "out of memory", error
    except Exception as error:  # a bug or a device failure: report it, keep serving
        return {"error": f"internal error: {type(error).__name__}: {describe(error)}"}, "internal error", error


def _summary(job_input: Any) -> tuple[str, str]:
    """(endpoint, `WxHxN`: width, height, batch_size * n_iter) as far as the input says; `-` for unknown."""
    try:
        _, endpoint, payload = parse_job_input(job_input)
    except BadEnvelope:
        return "-", "-"
    numbers = [payload.get(key, default) for key, default in
               (("width", None), ("height", None), ("batch_size", 1), ("n_iter", 1))]
    if not all(isinstance(n, int) and not isinstance(n, bool) for n in numbers):
        return normalize_endpoint(endpoint), "-"
    width, height, batch_size, n_iter = numbers
    return normalize_endpoint(endpoint), f"{width}x{height}x{batch_size * n_iter}"


def _one_line(text: str, limit: int) -> str:
    """Text a request chose, fit for one log line: control characters and whitespace folded, cut at `limit`."""
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())[:limit]
