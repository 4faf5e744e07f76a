"""torch.compile's artifacts in the models directory, so that a worker's cold start does not recompile the UNet.

    python -m engine.store.compile_cache --models-dir /models [--sd-model NAME]

run where the worker runs (the same GPU model, torch and diffusers, e.g. in the built image on the GPU), loads the
default checkpoint with WORKER_COMPILE=1 and the environment's other fast-path options (they change the compiled
graph), generates the worker's warm-up at each of WORKER_COMPILE_SIZES, and writes what Inductor compiled
(torch's portable cache: torch.compiler.save_cache_artifacts) to `.compile-cache/<torch>-<device>.bin` in the
models directory. A worker with WORKER_COMPILE=1 loads the file of its own torch version and device at start;
without one it compiles on first use.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import replace
from pathlib import Path

import torch

CACHE_SUBDIR = ".compile-cache"


def cache_path(models_dir: Path, device: torch.device) -> Path:
    """The cache file for this torch version and device (artifacts are specific to both)."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return Path(models_dir) / CACHE_SUBDIR / re.sub(r"[^A-Za-z0-9.+]+", "-", f"torch-{torch.__version__}-{name}.bin")


def load(models_dir: Path, device: torch.device) -> str:
    """Load the models directory's artifacts for this torch and device into torch's compile caches; says what it
    did."""
    path = cache_path(models_dir, device)
    if not path.is_file():
        return f"compile cache: no {path.name} in {path.parent}; the UNet compiles on first use"
    torch.compiler.load_cache_artifacts(path.read_bytes())
    return f"compile cache: loaded {path} ({path.stat().st_size / 1e6:.1f} MB)"


def save(models_dir: Path, device: torch.device) -> Path | None:
    """Write every artifact this process compiled (None when it compiled nothing Inductor caches)."""
    artifacts = torch.compiler.save_cache_artifacts()
    if artifacts is None:
        return None
    path = cache_path(models_dir, device)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(artifacts[0])
    partial.replace(path)
    return path


def main(argv: list[str] | None = None) -> None:
    from ..runtime import Engine
    from ..settings import Settings

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", type=Path, required=True)
    parser.add_argument("--sd-model", help="the checkpoint to compile for (default: SD_MODEL, else the first)")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    settings = replace(settings, models_dir=args.models_dir, sd_model=args.sd_model or settings.sd_model,
                       warmup=True, fast_path=replace(settings.fast_path, compile=True))
    engine = Engine.start(settings)  # compiles the UNet in its warm-up, at each compile size
    path = save(settings.models_dir, engine.device)
    if path is None:
        raise SystemExit("compile cache: nothing was compiled; nothing written")
    print(f"compile cache: wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
