"""Run one RunPod job file through the worker locally and save its images.

    python -m handler.local test_input.json --outputs outputs

Loads the engine from MODELS_DIR (as the worker does), runs the job's `input` through the same
handler, writes the images as PNG files and prints their paths. Exits 1 if the job failed.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from datetime import datetime
from pathlib import Path

from engine.families import UnsupportedCheckpoint
from engine.store.models_dir import ModelsDirError
from engine.runtime import Engine

from .worker import make_handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("job", type=Path, nargs="?", default=Path("test_input.json"),
                        help='a JSON file {"input": {...}} as sent to a RunPod endpoint')
    parser.add_argument("--outputs", type=Path, default=Path("outputs"))
    args = parser.parse_args(argv)

    job = json.loads(args.job.read_text())
    try:
        engine = Engine.start()
    except (ModelsDirError, UnsupportedCheckpoint) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    output = make_handler(engine)({"id": "local", "input": job.get("input")})
    if "error" in output:
        print(f"job failed: {output['error']}", file=sys.stderr)
        return 1

    args.outputs.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for index, image in enumerate(output["images"]):
        path = args.outputs / f"{stamp}-{index}.png"
        path.write_bytes(base64.b64decode(image))
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
