"""Read the default checkpoint's weights from disk while the imports that precede loading it run.

A fresh worker spends seconds importing torch, diffusers and transformers with the disk idle. A
child process reads the weight files meanwhile, so that loading finds them in the page cache. A
process, not a thread: a reading thread takes the GIL back after every read, which slowed the
imports beside it by more than it saved (posix_fadvise WILLNEED, tried too, read less than half of
the file here). Light on purpose: nothing here imports torch.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

from .converted import usable_conversion
from .models_dir import Checkpoint, ModelsDirError, default_checkpoint
from ..settings import Settings

# 1 MiB reads: the buffer stays in the CPU cache, so files already cached cost little to read again
_READER = """
import sys
buffer = bytearray(1 << 20)
for name in sys.argv[1:]:
    with open(name, "rb", buffering=0) as stream:
        while stream.readinto(buffer):
            pass
"""


def weight_files(checkpoint: Checkpoint) -> list[Path]:
    """The files loading the checkpoint reads: its current conversion's, else its own."""
    folder = usable_conversion(checkpoint) or checkpoint.path
    return sorted(folder.rglob("*.safetensors")) if folder.is_dir() else [folder]


def prefetch_default_checkpoint(settings: Settings) -> subprocess.Popen | None:
    """Start reading the files of the checkpoint Engine.start will load (settings' models_dir and sd_model), in
    a child process that a daemon thread reaps; None when there is nothing to read (Engine.start reports why)."""
    try:
        checkpoint = default_checkpoint(settings.models_dir, settings.sd_model)
    except ModelsDirError:
        return None
    reader = subprocess.Popen([sys.executable, "-I", "-S", "-c", _READER, *map(str, weight_files(checkpoint))],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    threading.Thread(target=reader.wait, name="prefetch", daemon=True).start()
    return reader
