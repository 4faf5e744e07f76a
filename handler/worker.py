"""The RunPod serverless adapter: job input -> router -> A1111 response, or a FAILED job with one line.

Images are delivered as the job asks (`input.delivery`, the job's `s3Config`, BUCKET_* settings): see
handler/delivery.py. Accepted inputs (../shared/runpod.md):
  - the bare A1111 body, routed by its keys (BARE_BODY_KEYS): img2img when it has `init_images`,
    extra-batch-images when it has `imageList`, extra-single-image when it has `image`, else txt2img
  - the envelope: {"api": {"method": "POST", "endpoint": "/sdapi/v1/txt2img"}, "payload": {...}}
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from schemas import RequestError
from schemas.errors import quoted

from .delivery import DeliveryError, Destination
from .errors import BadEnvelope, NotOffered, describe
from .router import UnknownEndpoint, route

if TYPE_CHECKING:
    from engine.runtime import Engine

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


def make_handler(engine: Engine) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def handle(job: dict[str, Any]) -> dict[str, Any]:
        """A returned string `error` makes the job FAILED; the worker goes on to the next job."""
        try:
            method, endpoint, payload = parse_job_input(job.get("input"))
            destination = Destination.for_job(str(job.get("id") or uuid.uuid4().hex), job["input"].get("delivery"),
                                              job.get("s3Config"))
            return route(engine, method, endpoint, payload, destination)
        except _CALLER_ERRORS as error:
            return {"error": describe(error)}
        except Exception as error:  # a bug or a device failure: report it, keep serving
            log.exception("job %s failed", job.get("id"))
            return {"error": f"internal error: {type(error).__name__}: {describe(error)}"}

    return handle
