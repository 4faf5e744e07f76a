"""The A1111-compatible HTTP app: every route of the router under /sdapi/v1/ (the ControlNet extension's under
/controlnet/), A1111's response and error shapes, HTTP Basic (--api-auth) and bearer-token auth. GET endpoints
take their query parameters as their payload.

Generations and state changes (the router's queued endpoints) run one at a time on a thread of their own,
in a bounded queue (WORKER_QUEUE_SIZE; a full queue answers 503 with Retry-After). Waiting for that queue
holds no thread of the pool that answers the other endpoints, so listings, options, progress, interrupt
and skip stay answerable however many requests wait.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import math
import os
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from schemas import RequestError, limits
from schemas.errors import cut

from ..batching import BatchingEngine
from ..delivery import Destination
from ..errors import NotOffered, describe
from ..router import API_PREFIX, EXTENSION_PREFIXES, ROUTES, UnknownEndpoint, http_path, queued, route

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from engine.runtime import Engine

log = logging.getLogger(__name__)

DEFAULT_QUEUE_SIZE = 32


class Authenticator:
    """Basic credentials or bearer tokens; with neither configured, every request passes."""

    def __init__(self, credentials: list[tuple[str, str]], tokens: list[str]):
        self.credentials, self.tokens = credentials, tokens

    async def __call__(self, request: Request) -> None:  # async: no thread taken
        if not self.credentials and not self.tokens:
            return
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and any(secrets.compare_digest(value, t) for t in self.tokens):
            return
        if scheme.lower() == "basic" and self._basic_ok(value):
            return
        raise _Unauthorized()

    def _basic_ok(self, value: str) -> bool:
        try:
            user, _, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        # compare against every pair, so the time taken does not reveal which part matched
        matches = [secrets.compare_digest(user, u) & secrets.compare_digest(password, p) for u, p in self.credentials]
        return any(matches)


class _Unauthorized(Exception):
    pass


class QueueFull(Exception):
    """Every place in the queue is taken."""


class JobQueue:
    """Runs jobs one at a time on a thread of its own; at most `size` wait while one runs."""

    def __init__(self, size: int, workers: int = 1):
        """`workers`: jobs run at once (their engine calls still take turns: handler/batching.py)."""
        self.size = size
        self.admitted = 0  # waiting or running
        self.last_seconds = 0.0  # the last job's duration: about when a place frees up
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="generation-queue")

    async def run(self, function: Callable[..., Any], *args: Any) -> Any:
        """`function(*args)` when its turn comes, awaited without holding a thread; QueueFull if no place is left."""
        with self._lock:
            if self.admitted > self.size:
                raise QueueFull(f"the queue is full ({self.size} waiting); retry later")
            self.admitted += 1
        future = self._executor.submit(self._timed, function, *args)
        future.add_done_callback(self._leave)
        return await asyncio.wrap_future(future)

    def retry_after(self) -> int:
        """Seconds after which a place is likely free (Retry-After)."""
        return max(1, math.ceil(self.last_seconds))

    def _timed(self, function: Callable[..., Any], *args: Any) -> Any:
        started = time.monotonic()
        try:
            return function(*args)
        finally:
            self.last_seconds = time.monotonic() - started

    def _leave(self, future: Future) -> None:  # done, failed or cancelled before it ran
        with self._lock:
            self.admitted -= 1


def queue_size_from_env() -> int:
    value = os.environ.get("WORKER_QUEUE_SIZE", str(DEFAULT_QUEUE_SIZE))
    if not value.strip().isdigit():
        raise ValueError(f"WORKER_QUEUE_SIZE must be a whole number >= 0 (got {value!r})")
    return int(value)


class AccessLog:
    """One INFO line per request: method, path, status, seconds."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.monotonic(), 500  # unless a response starts

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            log.info("%s %s %d %.2f s", scope["method"], scope["path"], status, time.monotonic() - started)


def _error(status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail, "body": "", "errors": ""}, status_code=status,
                        headers=headers)


def _unprocessable(problems: list[dict[str, Any]]) -> JSONResponse:
    return JSONResponse({"detail": problems}, status_code=422)


def _short(part: Any) -> Any:
    """A location part of a validation error: a key the request sent is quoted only as a prefix."""
    return cut(part) if isinstance(part, str) else part


async def _read_body(request: Request) -> bytes | None:
    """The request body, or None once it passes MAX_REQUEST_MB (read no further)."""
    limit = limits.MAX_REQUEST_MB * 1_000_000
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def create_app(engine: Engine, credentials: list[tuple[str, str]] = (), tokens: list[str] = (),
               queue_size: int | None = None, concurrency: int = 1) -> FastAPI:
    """The app on `engine`; `queue_size` requests may wait for the queue (default: WORKER_QUEUE_SIZE, else 32);
    `concurrency` of them run at once, compatible txt2img requests as one batch (handler/batching.py)."""
    app = FastAPI(title="a1111-worker", description="AUTOMATIC1111-compatible API on diffusers")
    app.add_middleware(AccessLog)
    app.state.queue = queue = JobQueue(queue_size_from_env() if queue_size is None else queue_size, concurrency)
    if concurrency > 1:
        engine = BatchingEngine(engine)
    authenticate = Authenticator(list(credentials), list(tokens))

    @app.exception_handler(_Unauthorized)
    async def unauthorized(request: Request, exc: _Unauthorized):
        response = _error(401, "Unauthorized", "Incorrect username or password")
        response.headers["WWW-Authenticate"] = "Basic"
        return response

    def respond(method: str, endpoint: str, payload: dict[str, Any]) -> JSONResponse:
        destination = Destination.for_job(uuid.uuid4().hex, payload.get("delivery"))
        return JSONResponse(route(engine, method, endpoint, payload, destination))  # rendered off the event loop

    async def run(method: str, endpoint: str, payload: dict[str, Any]) -> JSONResponse:
        if queued(method, endpoint):
            return await queue.run(respond, method, endpoint, payload)
        return await run_in_threadpool(respond, method, endpoint, payload)

    async def call(request: Request, method: str, endpoint: str) -> JSONResponse:
        payload: Any = dict(request.query_params)  # GET's parameters (/progress?skip_current_image=true)
        if method == "POST":
            raw = await _read_body(request)
            if raw is None:
                return _error(413, "Payload Too Large", f"body: over the limit of {limits.MAX_REQUEST_MB} MB "
                                                        "(WORKER_MAX_REQUEST_MB)")
            try:
                payload = json.loads(raw) if raw.strip() else {}
            except (ValueError, RecursionError) as error:  # JSONDecodeError, bad UTF-8, nesting past the parser
                message = f"invalid JSON: {error}" if isinstance(error, ValueError) else "invalid JSON: nested too deep"
                return _unprocessable([{"loc": ["body"], "msg": cut(message), "type": "json_invalid"}])
            if not isinstance(payload, dict):
                return _unprocessable([{"loc": ["body"], "msg": "must be a JSON object", "type": "dict_type"}])
        try:
            return await run(method, endpoint, payload)
        except QueueFull as error:
            return _error(503, "Service Unavailable", str(error), {"Retry-After": str(queue.retry_after())})
        except ValidationError as error:
            return _unprocessable([{"loc": ["body", *map(_short, item["loc"])], "msg": item["msg"],
                                    "type": item["type"]}
                                   for item in error.errors(include_url=False, include_context=False,
                                                            include_input=False)])
        except RequestError as error:
            return _unprocessable([{"loc": ["body", *error.field.split(".")], "msg": describe(error),
                                    "type": "value_error"}])
        except UnknownEndpoint as error:
            return _error(404, "Not Found", describe(error))
        except NotOffered as error:
            return _error(400, "Bad Request", describe(error))
        except Exception as error:  # a bug, a device or a delivery failure: logged, and A1111's error body
            log.exception("%s %s failed", method, http_path(endpoint))
            return _error(500, type(error).__name__, describe(error))

    for method, endpoint in ROUTES:
        async def endpoint_function(request: Request, _method=method, _endpoint=endpoint):
            return await call(request, _method, _endpoint)

        app.add_api_route(http_path(endpoint), endpoint_function, methods=[method], name=f"{method} {endpoint}",
                          dependencies=[Depends(authenticate)])

    for prefix in (API_PREFIX, *EXTENSION_PREFIXES):
        async def not_offered(request: Request, name: str, _prefix=prefix):
            return _error(404, "Not Found", f"{request.method} /{_prefix}{cut(name)} is not offered by this worker")

        app.add_api_route(f"/{prefix}{{name:path}}", not_offered, methods=["GET", "POST", "PUT", "DELETE", "PATCH"],
                          dependencies=[Depends(authenticate)], include_in_schema=False)

    return app
