"""`python -m handler`: the RunPod serverless worker. RunPod's flags work (--test_input, --rp_serve_api, ...).

The engine loads the checkpoint here, before serverless.start, so it happens once per worker. The
runpod package is imported meanwhile on a second thread: its import takes over a second (it probes
the CPU in a subprocess), time the model load would otherwise wait behind.
"""

import importlib
import sys
from concurrent.futures import ThreadPoolExecutor

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

runpod_import.result().start({"handler": make_handler(engine)})
