"""Several jobs at once on one engine: its work runs on one thread, and txt2img requests that arrive while it is
busy run as one batch when they can share the denoiser's calls (engine.batch_key).

`BatchingEngine` stands where the router expects the engine: every engine call goes to that thread and
waits for its turn; `txt2img` calls without a first-pass image or ControlNet units are gathered, those with
one batch key taken together (at most MAX_BATCH_SIZE images), and each caller gets its own generation, or
the error that failed it alone. Other attributes (options, checkpoints, progress) are read as they are.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from schemas import limits

if TYPE_CHECKING:
    from engine.runtime import Engine
    from schemas import Txt2ImgRequest


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
