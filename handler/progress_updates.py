"""RunPod progress updates: while a job generates, its progress is posted as the job's IN_PROGRESS output, which
RunPod's /status shows until the result replaces it.

An update is A1111's /sdapi/v1/progress body (`progress` 0..1, `eta_relative` seconds, `state.sampling_step` of
`state.sampling_steps`, `state.job_no` of `state.job_count`), with the latest live preview as a base64 JPEG in
`current_image` when the job asks for previews (`input.previews`), else null. They are posted as the SDK's
`progress_update` posts them, but one at a time from one thread per job: at most every `interval` seconds, when
something changed, and once the job succeeded, a last one at 1.0 before the handler returns, so before the SDK
posts the result. (`progress_update` starts a thread per call: updates could arrive out of order, or after the
result.) A job that ends before the first interval gets no updates.

Why not /stream: RunPod streams what a generator handler yields, and a generator handler's /run and /runsync
output is then the list of yielded chunks (`return_aggregate_stream`) or nothing, never the A1111 body.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

from .control import encoded_preview, progress_body

if TYPE_CHECKING:
    from engine.tasks.progress import Progress

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 1.0
PREVIEW_FORMAT = "jpeg"
_STOP_TIMEOUT = 10.0  # seconds the job's result waits for its last update at most

Post = Callable[[dict[str, Any]], None]
Sender = Callable[[dict[str, Any]], AbstractContextManager[Post]]  # job -> (a context giving) its poster


def interval_from_env() -> float:
    """WORKER_PROGRESS_INTERVAL: seconds between updates (0: none); ValueError naming it if unusable."""
    value = os.environ.get("WORKER_PROGRESS_INTERVAL", "").strip()
    if not value:
        return DEFAULT_INTERVAL
    try:
        interval = float(value)
    except ValueError:
        interval = -1.0
    if not 0 <= interval < float("inf"):
        raise ValueError(f"WORKER_PROGRESS_INTERVAL must be a number of seconds >= 0 (got {value!r})")
    return interval


@contextmanager
def runpod_sender(job: dict[str, Any]) -> Iterator[Post]:
    """Posts `job`'s IN_PROGRESS outputs to RunPod's job API with the SDK's own client and URLs, on the calling
    thread (an event loop of its own). A failed post is logged by the SDK and does not fail the job."""
    from runpod.http_client import AsyncClientSession
    from runpod.serverless.modules.rp_http import send_result

    async def open_session():
        return AsyncClientSession()

    loop = asyncio.new_event_loop()
    session = loop.run_until_complete(open_session())
    try:
        yield lambda output: loop.run_until_complete(
            send_result(session, {"status": "IN_PROGRESS", "output": output}, job))
    finally:
        loop.run_until_complete(session.close())
        loop.close()


class JobUpdates:
    """One job's updates, on a thread of their own while the job runs (a context manager around the job)."""

    def __init__(self, progress: Progress, post_with: AbstractContextManager[Post], interval: float, previews: bool):
        self._progress, self._post_with, self._interval, self._previews = progress, post_with, interval, previews
        self._done = threading.Event()
        self._succeeded = False
        self._thread = threading.Thread(target=self._run, name="progress-updates", daemon=True)

    def __enter__(self) -> JobUpdates:
        self._thread.start()
        return self

    def __exit__(self, kind, error, traceback) -> None:
        self._succeeded = kind is None
        self._done.set()
        self._thread.join(timeout=_STOP_TIMEOUT)
        if self._thread.is_alive():
            log.warning("progress updates: the last one is still being posted after %.0f s", _STOP_TIMEOUT)

    def _run(self) -> None:
        try:
            with self._post_with as post:
                last = self._updates(post)
                if self._succeeded and last is not None:
                    post(self._finished(last))
        except Exception:  # an update is not worth failing a job for
            log.exception("progress updates failed")

    def _updates(self, post: Post) -> dict[str, Any] | None:
        """Post what changed, every interval, until the job is done; the last update posted."""
        last, posted = None, None  # the last update; what it showed: (state, preview number)
        while not self._done.wait(self._interval):
            state = self._progress
            if not state.job:
                continue
            preview = encoded_preview(state, PREVIEW_FORMAT) if self._previews else None
            update = progress_body(state, preview[1] if preview else None)
            shown = (update["state"], preview[0] if preview else None)
            if shown != posted:
                post(update)
                last, posted = update, shown
        return last

    def _finished(self, last: dict[str, Any]) -> dict[str, Any]:
        """The update at 1.0 after `last`, with the job's latest preview (Progress keeps it after the job)."""
        state = last["state"]
        preview = encoded_preview(self._progress, PREVIEW_FORMAT) if self._previews else None
        return {**last, "progress": 1.0, "eta_relative": 0.0, "current_image": preview[1] if preview else None,
                "state": {**state, "job_no": state["job_count"], "sampling_step": state["sampling_steps"]}}


class ProgressUpdates:
    """What makes each job's updates: how to post them (default: to RunPod) and how often."""

    def __init__(self, interval: float = DEFAULT_INTERVAL, sender: Sender = runpod_sender):
        self.interval, self.sender = interval, sender

    def track(self, job: dict[str, Any], progress: Progress, previews: bool) -> AbstractContextManager[Any]:
        """A context around running `job`: updates while it runs, and the last one when it succeeded."""
        if not self.interval:
            return nullcontext()
        return JobUpdates(progress, self.sender(job), self.interval, previews)
