"""Read the default checkpoint's weights from disk while the imports that precede loading it run.

A fresh worker spends seconds importing torch, diffusers and transformers with the disk idle. A
daemon thread reads the weight files meanwhile (the reads release the GIL), so that loading finds
them in the page cache. (posix_fadvise WILLNEED was tried first: here it read less than half of
the file.) Light on purpose: nothing here imports torch.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from .converted import usable_conversion
from .models_dir import Checkpoint, ModelsDirError, default_checkpoint, models_dir_from_env


def weight_files(checkpoint: Checkpoint) -> list[Path]:
    """The files loading the checkpoint reads: its current conversion's, else its own."""
    folder = usable_conversion(checkpoint) or checkpoint.path
    return sorted(folder.rglob("*.safetensors")) if folder.is_dir() else [folder]


def prefetch_default_checkpoint() -> None:
    """Start reading the files of the checkpoint Engine.start will load (MODELS_DIR, SD_MODEL);
    errors are left to Engine.start."""
    try:
        checkpoint = default_checkpoint(models_dir_from_env(), os.environ.get("SD_MODEL"))
    except ModelsDirError:
        return
    threading.Thread(target=_read, args=(weight_files(checkpoint),), name="prefetch", daemon=True).start()


def _read(files: list[Path]) -> None:
    buffer = bytearray(1 << 20)  # small enough to stay in the CPU cache: reading cached files costs little
    for file in files:
        with file.open("rb", buffering=0) as stream:
            while stream.readinto(buffer):
                pass
