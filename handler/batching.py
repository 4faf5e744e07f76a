"""Several jobs at once on one engine: its work runs on one thread, and txt2img requests that arrive while it is
busy run as one batch when they can share the denoiser's calls (engine.batch_key).

`BatchingEngine` stands where the router expects the engine: every engine call goes to that thread and
waits for its turn; `txt2img` calls without a first-pass image or ControlNet units are gathered, those with
one batch key taken together (at most MAX_BATCH_SIZE images), and each caller gets its own generation, or
the error that failed it alone. Other attributes (options, checkpoints, progress) are read as they are.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from schemas import limits

if TYPE_CHECKING:
    import torch

    from engine.runtime import Engine
    from schemas import Txt2ImgRequest

DEFAULT_GPU_CONCURRENCY = 4  # compatible jobs batch on the GPU (on the CPU the default is 1: README, "Several jobs")
MAX_CONCURRENCY = 64


def concurrency_from_env() -> int:
    """WORKER_CONCURRENCY: jobs a worker takes at once (0 or unset: jobs_at_once's default)."""
    value = os.environ.get("WORKER_CONCURRENCY", "").strip() or "0"
    if not value.isdigit() or int(value) > MAX_CONCURRENCY:
        raise ValueError(f"WORKER_CONCURRENCY must be a whole number from 0 to {MAX_CONCURRENCY} (got {value[:20]!r})")
    return int(value)


def jobs_at_once(configured: int, device: torch.device) -> int:
    """WORKER_CONCURRENCY's value, or by default DEFAULT_GPU_CONCURRENCY on CUDA and 1 elsewhere."""
    return configured or (DEFAULT_GPU_CONCURRENCY if device.type == "cuda" else 1)


class _Work:
    def __init__(self, call: Callable[[], Any] | None = None, request: Txt2ImgRequest | None = None,
                 key: Hashable | None = None):
        self.call, self.request, self.key, self.future = call, request, key, Future()


class BatchingEngine:
    def __init__(self, engine: Engine, max_images: int = limits.MAX_BATCH_SIZE):
        self._engine, self._max_images = engine, max_images
        self._waiting: deque[_Work] = deque()
        self._ready = threading.Condition()
        threading.Thread(target=self._serve, name="engine", daemon=True).start()

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._engine, name)
        if not callable(value):
            return value
        return lambda *args, **kwargs: self._submit(_Work(lambda: value(*args, **kwargs)))

    def txt2img(self, request: Txt2ImgRequest, firstpass_image=None, control_images=()) -> Any:
        if firstpass_image is not None or control_images:
            return self._submit(_Work(lambda: self._engine.txt2img(request, firstpass_image, control_images)))
        key = self._engine.batch_key(request)
        if key is None:
            return self._submit(_Work(lambda: self._engine.txt2img(request)))
        return self._submit(_Work(request=request, key=key))

    def _submit(self, work: _Work) -> Any:
        with self._ready:
            self._waiting.append(work)
            self._ready.notify()
        return work.future.result()

    def _serve(self) -> None:
        while True:
            with self._ready:
                while not self._waiting:
                    self._ready.wait()
                batch = self._take()
            if batch[0].key is None:
                self._settle(batch[0], batch[0].call)
                continue
            try:
                results = self._engine.txt2img_batch([work.request for work in batch])
            except Exception as error:  # the batch failed as a whole (out of memory, a device error)
                results = [error] * len(batch)
            for work, result in zip(batch, results):
                (work.future.set_exception if isinstance(result, Exception) else work.future.set_result)(result)

    def _take(self) -> list[_Work]:
        """The first waiting work, with those waiting that share its batch key (in order, images within the limit)."""
        first = self._waiting.popleft()
        if first.key is None:
            return [first]
        batch, images = [first], first.request.batch_size
        for work in list(self._waiting):
            if work.key == first.key and images + work.request.batch_size <= self._max_images:
                self._waiting.remove(work)
                batch.append(work)
                images += work.request.batch_size
        return batch

    @staticmethod
    def _settle(work: _Work, call: Callable[[], Any]) -> None:
        try:
            work.future.set_result(call())
        except Exception as error:  # raised again in the caller's thread
            work.future.set_exception(error)
