"""The engine a worker holds: set up once at start (load the checkpoint), then serve requests."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from schemas import Txt2ImgRequest

from .device import pick_device, pick_dtype
from .generation import Generation
from .loading import load_pipeline
from .models_dir import Checkpoint, default_checkpoint, models_dir_from_env
from .txt2img import txt2img


class Engine:
    def __init__(self, models_dir: Path, checkpoint: Checkpoint, device: torch.device, dtype: torch.dtype):
        self.models_dir = models_dir
        self.checkpoint = checkpoint
        self.device = device
        self.dtype = dtype
        self.pipe = load_pipeline(checkpoint, device, dtype)
        self.scheduler_config = dict(self.pipe.scheduler.config)  # the checkpoint's own noise schedule
        checkpoint.sha256  # hash at start, not in the first request (A1111's Model hash)

    @classmethod
    def start(cls, models_dir: Path | None = None, sd_model: str | None = None,
              device: str | None = None, dtype: str | None = None) -> Engine:
        """Load the default checkpoint (SD_MODEL, else the first) from MODELS_DIR."""
        models_dir = models_dir or models_dir_from_env()
        checkpoint = default_checkpoint(models_dir, sd_model or os.environ.get("SD_MODEL"))
        torch_device = pick_device(device)
        return cls(models_dir, checkpoint, torch_device, pick_dtype(torch_device, dtype))

    def txt2img(self, request: Txt2ImgRequest) -> Generation:
        return txt2img(self.pipe, self.scheduler_config, self.checkpoint, request)
