"""What the worker is doing, for /progress, /interrupt and /skip (A1111's shared state)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime


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
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def begin(self, job: str, job_count: int = 1) -> None:
        with self._lock:
            self.job, self.job_count, self.job_no = job, job_count, 0
            self.job_timestamp = datetime.now().strftime("%Y%m%d%H%M%S")
            self.sampling_step = self.sampling_steps = 0
            self.interrupted = self.skipped = False

    def expect(self, batches: int) -> None:
        with self._lock:
            self.job_count = batches

    def step(self, step: int, steps: int) -> None:
        with self._lock:
            self.sampling_step, self.sampling_steps = step, steps

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
