"""What the worker is doing, for /progress, /interrupt and /skip (A1111's shared state), and its live previews.

The sampling loop hands its latents to `step`; every `preview_every` steps a reference to them is kept (no copy,
no work on the sampling thread), and `preview()` turns the latest into an image only when someone asks, with
the model family's coefficients (engine/imaging/preview.py). The last preview stays until the next job begins,
as A1111's does.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from PIL import Image


@dataclass(frozen=True)
class Preview:
    number: int  # which kept latents it shows: each one kept gets the next number
    image: Image.Image


@dataclass
class Progress:
    job: str = ""
    job_count: int = 0
    job_no: int = 0
    job_timestamp: str = "0"
    sampling_step: int = 0
    sampling_steps: int = 0
    interrupted: bool = False
    skipped: bool = False
    preview_every: int = 0  # keep the latents every this many steps (0: no previews)
    started: float = 0.0  # time.monotonic() at begin
    _coefficients: tuple | None = field(default=None, repr=False)
    _latents: torch.Tensor | None = field(default=None, repr=False)
    _kept: int = field(default=0, repr=False)  # latents kept so far, ever: the number of the latest
    _since_kept: int = field(default=0, repr=False)
    _preview: Preview | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def begin(self, job: str, job_count: int = 1, preview_every: int = 0) -> None:
        with self._lock:
            self.job, self.job_count, self.job_no = job, job_count, 0
            self.job_timestamp = datetime.now().strftime("%Y%m%d%H%M%S")
            self.started = time.monotonic()
            self.sampling_step = self.sampling_steps = 0
            self.interrupted = self.skipped = False
            self.preview_every, self._since_kept = max(preview_every, 0), 0
            self._latents = self._preview = self._coefficients = None

    def expect(self, batches: int, preview_coefficients: tuple | None = None) -> None:
        """The job's batch count, and how its model's latents map to RGB (its family's; None: no previews)."""
        with self._lock:
            self.job_count = batches
            self._coefficients = preview_coefficients

    def step(self, step: int, steps: int, latents: torch.Tensor | None = None) -> None:
        """Sampling step `step` of `steps` begins from `latents` (a batch: the first image is previewed)."""
        with self._lock:
            self.sampling_step, self.sampling_steps = step, steps
            if latents is None or step == 0 or not self.preview_every:
                return
            self._since_kept += 1
            if self._since_kept >= self.preview_every:
                self._latents, self._since_kept, self._kept = latents, 0, self._kept + 1

    def next_batch(self) -> None:
        with self._lock:
            self.job_no += 1
            self.skipped = False

    def end(self) -> None:
        with self._lock:
            self.job, self.job_count, self.job_no = "", 0, 0
            self.sampling_step = self.sampling_steps = 0

    @property
    def stopping(self) -> bool:
        """Whether the current batch should stop sampling (interrupt stops the job, skip the batch)."""
        return self.interrupted or self.skipped

    def fraction(self) -> float:
        if not self.job_count:
            return 0.0
        per_job = self.sampling_step / self.sampling_steps if self.sampling_steps else 0.0
        return min((self.job_no + per_job) / self.job_count, 1.0)

    def eta_relative(self) -> float:
        """Seconds left, extrapolated from the time taken so far (0 until there is progress)."""
        done = self.fraction()
        if not self.job or done <= 0:
            return 0.0
        elapsed = time.monotonic() - self.started
        return elapsed / done - elapsed

    def preview(self) -> Preview | None:
        """The latest kept latents as an image (made at the first call after they were kept), if any."""
        from ..imaging.preview import approximate_rgb

        with self._lock:
            latents, number, coefficients, made = self._latents, self._kept, self._coefficients, self._preview
        if made is not None and made.number == number:
            return made
        if latents is None or coefficients is None or latents.shape[1] != len(coefficients):
            return None
        preview = Preview(number, approximate_rgb(latents[0], coefficients))
        with self._lock:
            if self._kept == number:
                self._preview = preview
        return preview
