"""Start-up shared by the adapters (`python -m handler`, `python -m handler.http`).

Starting the engine is mostly imports, so what start-up would otherwise wait on runs beside them:
the disk reads the weights (engine/store/prefetch.py), and a second thread imports the adapter's server
libraries (runpod takes over a second: it probes the CPU in a subprocess). The garbage collector is
off meanwhile: start-up creates some 800,000 objects that live as long as the worker, and collecting
while they are created cost about a third of the start on a 2-core CPU. They are frozen afterwards,
so no later collection (nor the exit) goes through them.

Light on purpose: importing this imports neither torch nor the engine.
"""

from __future__ import annotations

import gc
import importlib
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from engine.store.prefetch import prefetch_default_checkpoint
from engine.settings import Settings, SettingsError

if TYPE_CHECKING:
    from engine.runtime import Engine


def start_engine(beside: tuple[str, ...] = ()) -> Engine:
    """Engine.start(), with the modules named in `beside` imported on a second thread meanwhile (they
    must not import the engine: two threads importing one module wait on each other). A models
    directory, checkpoint or setting that can't be used ends the process with a one-line message."""
    try:
        settings = Settings.from_env()
    except SettingsError as error:
        sys.exit(f"error: {error}")
    prefetch_default_checkpoint(settings)
    gc.disable()
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            imported = [pool.submit(importlib.import_module, name) for name in beside]
            from engine.families import UnsupportedCheckpoint
            from engine.store.models_dir import ModelsDirError
            from engine.runtime import Engine

            try:
                engine = Engine.start(settings)
            except (ModelsDirError, UnsupportedCheckpoint, SettingsError) as error:
                sys.exit(f"error: {error}")
        for future in imported:
            future.result()  # re-raises an import error here, on the main thread
        return engine
    finally:
        gc.freeze()
        gc.enable()
