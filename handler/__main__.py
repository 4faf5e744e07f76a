"""`python -m handler`: the RunPod serverless worker. RunPod's flags work (--test_input, --rp_serve_api, ...).

The engine loads the checkpoint here, before serverless.start, so it happens once per worker. Start-up
is mostly imports, so what it would otherwise wait on runs beside them: the disk reads the weights
(engine/prefetch.py), and a second thread imports runpod (over a second: it probes the CPU in a
subprocess). The garbage collector is off meanwhile: start-up creates some 800,000 objects that live
as long as the worker, and collecting while they are created cost about a third of the start on a
2-core CPU. They are frozen afterwards, so no later collection (nor the exit) goes through them.
"""

import gc
import importlib
import sys
from concurrent.futures import ThreadPoolExecutor

from engine.prefetch import prefetch_default_checkpoint

prefetch_default_checkpoint()
gc.disable()

with ThreadPoolExecutor(max_workers=1) as pool:
    runpod_import = pool.submit(importlib.import_module, "runpod.serverless")

    from engine.loading import UnsupportedCheckpoint
    from engine.models_dir import ModelsDirError
    from engine.runtime import Engine

    from .worker import make_handler

    try:
        engine = Engine.start()
    except (ModelsDirError, UnsupportedCheckpoint) as error:
        sys.exit(f"error: {error}")

serverless = runpod_import.result()
gc.freeze()
gc.enable()
serverless.start({"handler": make_handler(engine)})
