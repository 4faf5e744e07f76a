"""Start reading the default checkpoint's weights from disk before the imports that precede loading it.

A fresh worker spends seconds importing torch, diffusers and transformers, with the disk idle; the
kernel can read the weight files into the page cache meanwhile (posix_fadvise WILLNEED starts the
reads and returns). Light on purpose: nothing here imports torch.
"""

from __future__ import annotations

import os
from pathlib import Path

from .converted import usable_conversion
from .models_dir import Checkpoint, ModelsDirError, default_checkpoint, models_dir_from_env


def weight_files(checkpoint: Checkpoint) -> list[Path]:
    """The files loading the checkpoint reads: its current conversion's, else its own."""
    folder = usable_conversion(checkpoint) or checkpoint.path
    return sorted(folder.rglob("*.safetensors")) if folder.is_dir() else [folder]


def prefetch_default_checkpoint() -> None:
    """For the checkpoint Engine.start will load (MODELS_DIR, SD_MODEL); errors are left to it."""
    try:
        checkpoint = default_checkpoint(models_dir_from_env(), os.environ.get("SD_MODEL"))
    except ModelsDirError:
        return
    for file in weight_files(checkpoint):
        descriptor = os.open(file, os.O_RDONLY)
        try:
            os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_WILLNEED)
        finally:
            os.close(descriptor)
