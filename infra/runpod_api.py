"""A small client for RunPod's two HTTP APIs: REST (templates, endpoints) and serverless (/runsync).

Both take `Authorization: Bearer $RUNPOD_API_KEY`. A 429 is retried after its Retry-After (each wait at
most RUNPOD_RETRY_MAX_WAIT seconds, 5 attempts in all); any other error status, or no answer, raises a
DeployError naming the call and the cause in one line. Base URLs can be pointed elsewhere (a fake server
in tests) with RUNPOD_REST_URL and RUNPOD_SERVERLESS_URL.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import requests

from .errors import DeployError

REST_URL = "https://rest.runpod.io/v1"
SERVERLESS_URL = "https://api.runpod.ai/v2"
MAX_ATTEMPTS = 5
DEFAULT_MAX_WAIT = 60.0


class RunPodApi:
    def __init__(self, base_url: str, api_key: str, *, timeout: float = 30, max_wait: float = DEFAULT_MAX_WAIT,
                 sleep: Callable[[float], None] = time.sleep):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.max_wait = max_wait
        self.sleep = sleep
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {api_key}"

    def get(self, path: str):
        return self.request("GET", path)

    def post(self, path: str, body: dict):
        return self.request("POST", path, body)

    def patch(self, path: str, body: dict):
        return self.request("PATCH", path, body)

    def request(self, method: str, path: str, body: dict | None = None):
        """The decoded JSON answer to `method path`."""
        call = f"{method} {path}"
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                response = self.session.request(method, self.base_url + path, json=body, timeout=self.timeout)
            except requests.RequestException as error:
                raise DeployError(f"RunPod API: no answer to {call} from {self.base_url}: "
                                  f"{type(error).__name__}") from None
            if response.status_code != 429 or attempt == MAX_ATTEMPTS:
                break
            self.sleep(min(_retry_after(response, attempt), self.max_wait))
        if response.status_code == 429:
            raise DeployError(f"RunPod API: still rate limited (429) on {call} after {MAX_ATTEMPTS} attempts")
        if response.status_code == 401:
            raise DeployError(f"RunPod API: 401 Unauthorized on {call}: RUNPOD_API_KEY is missing, wrong or revoked")
        if response.status_code == 403:
            raise DeployError(f"RunPod API: 403 Forbidden on {call}: the API key lacks read/write permission")
        if response.status_code >= 500:
            raise DeployError(f"RunPod API: server error {response.status_code} on {call}: {_detail(response)}; "
                              "nothing after this call was changed, run again later")
        if response.status_code >= 400:
            raise DeployError(f"RunPod API: {response.status_code} on {call}: {_detail(response)}")
        try:
            return response.json() if response.content else None
        except ValueError:
            raise DeployError(f"RunPod API: {call} answered {response.status_code} with a body that is not JSON: "
                              f"{_detail(response)}") from None


def from_environment(url_variable: str, default_url: str, *, timeout: float = 30) -> RunPodApi:
    """A client for the API at $url_variable (default `default_url`), keyed by RUNPOD_API_KEY."""
    api_key = os.environ.get("RUNPOD_API_KEY")
    if not api_key:
        raise DeployError("RUNPOD_API_KEY is not set (a RunPod API key with read/write access)")
    try:
        max_wait = float(os.environ.get("RUNPOD_RETRY_MAX_WAIT", DEFAULT_MAX_WAIT))
    except ValueError:
        raise DeployError("RUNPOD_RETRY_MAX_WAIT must be a number of seconds") from None
    return RunPodApi(os.environ.get(url_variable) or default_url, api_key, timeout=timeout, max_wait=max_wait)


def _retry_after(response: requests.Response, attempt: int) -> float:
    """Seconds to wait before the next attempt: the server's Retry-After, else 1, 2, 4, ..."""
    try:
        return max(0.0, float(response.headers["Retry-After"]))
    except (KeyError, ValueError):
        return float(2 ** (attempt - 1))


def _detail(response: requests.Response) -> str:
    """The server's error message, on one line and short."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error") or body.get("message"), str):
        text = body.get("error") or body.get("message")
    else:
        text = response.text or response.reason or "(empty body)"
    return " ".join(text.split())[:300]
