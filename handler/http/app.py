"""The A1111-compatible HTTP app: every route of the router under /sdapi/v1/, A1111's response and
error shapes, HTTP Basic (--api-auth) and bearer-token auth, and one generation at a time while
listings, options and progress stay answerable.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import threading
import uuid
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from schemas import RequestError

from ..delivery import Destination
from ..errors import describe
from ..router import API_PREFIX, GENERATION_ENDPOINTS, ROUTES, UnknownEndpoint, route

if TYPE_CHECKING:
    from engine.runtime import Engine


class Authenticator:
    """Basic credentials or bearer tokens; with neither configured, every request passes."""

    def __init__(self, credentials: list[tuple[str, str]], tokens: list[str]):
        self.credentials, self.tokens = credentials, tokens

    def __call__(self, request: Request) -> None:
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


def _error(status: int, error: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail, "body": "", "errors": ""}, status_code=status)


def _unprocessable(problems: list[dict[str, Any]]) -> JSONResponse:
    return JSONResponse({"detail": problems}, status_code=422)


def create_app(engine: Engine, credentials: list[tuple[str, str]] = (), tokens: list[str] = ()) -> FastAPI:
    app = FastAPI(title="a1111-worker", description="AUTOMATIC1111-compatible API on diffusers")
    generation = threading.Lock()  # the queue: one generation at a time
    authenticate = Authenticator(list(credentials), list(tokens))

    @app.exception_handler(_Unauthorized)
    async def unauthorized(request: Request, exc: _Unauthorized):
        response = _error(401, "Unauthorized", "Incorrect username or password")
        response.headers["WWW-Authenticate"] = "Basic"
        return response

    def run(method: str, endpoint: str, payload: dict[str, Any]) -> Any:
        destination = Destination.for_job(uuid.uuid4().hex, payload.get("delivery"))
        if endpoint in GENERATION_ENDPOINTS:
            with generation:
                return route(engine, method, endpoint, payload, destination)
        return route(engine, method, endpoint, payload, destination)

    async def call(request: Request, method: str, endpoint: str) -> JSONResponse:
        payload: Any = {}
        if method == "POST":
            raw = await request.body()
            try:
                payload = json.loads(raw) if raw.strip() else {}
            except json.JSONDecodeError as error:
                return _unprocessable([{"loc": ["body"], "msg": f"invalid JSON: {error}", "type": "json_invalid"}])
            if not isinstance(payload, dict):
                return _unprocessable([{"loc": ["body"], "msg": "must be a JSON object", "type": "dict_type"}])
        try:
            return JSONResponse(await run_in_threadpool(run, method, endpoint, payload))
        except ValidationError as error:
            return _unprocessable([{"loc": ["body", *item["loc"]], "msg": item["msg"], "type": item["type"]}
                                   for item in error.errors(include_url=False, include_context=False,
                                                            include_input=False)])
        except RequestError as error:
            return _unprocessable([{"loc": ["body", *error.field.split(".")], "msg": describe(error),
                                    "type": "value_error"}])
        except UnknownEndpoint as error:
            return _error(404, "Not Found", describe(error))
        except Exception as error:  # a bug, a device or a delivery failure: A1111's error body
            return _error(500, type(error).__name__, describe(error))

    for method, endpoint in ROUTES:
        async def endpoint_function(request: Request, _method=method, _endpoint=endpoint):
            return await call(request, _method, _endpoint)

        app.add_api_route(f"/{API_PREFIX}{endpoint}", endpoint_function, methods=[method], name=f"{method} {endpoint}",
                          dependencies=[Depends(authenticate)])

    @app.api_route(f"/{API_PREFIX}{{name:path}}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"],
                   dependencies=[Depends(authenticate)], include_in_schema=False)
    async def not_offered(request: Request, name: str):
        return _error(404, "Not Found", f"{request.method} /{API_PREFIX}{name} is not offered by this worker")

    return app
