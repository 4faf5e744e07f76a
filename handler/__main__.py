"""`python -m handler`: the RunPod serverless worker. RunPod's flags work (--test_input, --rp_serve_api, ...).

The engine loads the checkpoint here, before serverless.start, so it happens once per worker.
"""

import sys

import runpod

from engine.loading import UnsupportedCheckpoint
from engine.models_dir import ModelsDirError
from engine.runtime import Engine

from .worker import make_handler

try:
    engine = Engine.start()
except (ModelsDirError, UnsupportedCheckpoint) as error:
    sys.exit(f"error: {error}")

runpod.serverless.start({"handler": make_handler(engine)})
