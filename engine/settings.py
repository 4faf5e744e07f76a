"""The worker's settings: every environment variable the engine obeys, read once, at start, into one object that
start-up passes on. Light on purpose: nothing here imports torch (prefetch reads it before the imports).

Request limits are schemas/limits.py's; the adapters' settings (buckets, queue, logs) are the handler's.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .store.models_dir import STYLES_FILE

DEFAULT_MAX_MODELS = 2
DEFAULT_MAX_LORAS = 8
DEFAULT_MAX_CONTROLNETS = 2  # as sd-webui-controlnet's model cache
DEFAULT_UPSCALE_TILE = 192  # pixels a side a neural upscaler sees at once; 0: whole images


class SettingsError(ValueError):
    """An environment variable has a value the worker can't use; the message names it."""


@dataclass(frozen=True)
class Settings:
    models_dir: Path = Path("./models")  # MODELS_DIR
    sd_model: str | None = None  # SD_MODEL: the checkpoint to load at start (default: the first)
    device: str | None = None  # WORKER_DEVICE (default: cuda when present, else cpu)
    dtype: str | None = None  # WORKER_DTYPE (default: engine/device.py's choice)
    warmup: bool | None = None  # WORKER_WARMUP (default: on for CUDA)
    max_models: int = DEFAULT_MAX_MODELS  # WORKER_MAX_MODELS: checkpoints kept loaded
    max_loras: int = DEFAULT_MAX_LORAS  # WORKER_MAX_LORAS: LoRAs kept loaded per checkpoint
    upscale_tile: int = DEFAULT_UPSCALE_TILE  # WORKER_UPSCALE_TILE
    styles_file: Path | None = None  # WORKER_STYLES_FILE (default: styles.csv in the models directory)
    max_controlnets: int = DEFAULT_MAX_CONTROLNETS  # WORKER_MAX_CONTROLNETS: ControlNet models kept loaded

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Settings:
        warmup = env.get("WORKER_WARMUP", "").strip()
        return cls(
            models_dir=Path(env.get("MODELS_DIR") or "./models"),
            sd_model=env.get("SD_MODEL") or None,
            device=env.get("WORKER_DEVICE") or None,
            dtype=env.get("WORKER_DTYPE") or None,
            warmup=warmup == "1" if warmup else None,
            max_models=_whole(env, "WORKER_MAX_MODELS", DEFAULT_MAX_MODELS, minimum=1),
            max_loras=_whole(env, "WORKER_MAX_LORAS", DEFAULT_MAX_LORAS, minimum=1),
            upscale_tile=_whole(env, "WORKER_UPSCALE_TILE", DEFAULT_UPSCALE_TILE, minimum=0),
            styles_file=Path(env["WORKER_STYLES_FILE"]) if env.get("WORKER_STYLES_FILE") else None,
            max_controlnets=_whole(env, "WORKER_MAX_CONTROLNETS", DEFAULT_MAX_CONTROLNETS, minimum=1),
        )

    @property
    def styles_path(self) -> Path:
        """The prompt styles file: WORKER_STYLES_FILE, else styles.csv in the models directory."""
        return self.styles_file or self.models_dir / STYLES_FILE


def _whole(env: Mapping[str, str], variable: str, default: int, minimum: int) -> int:
    text = env.get(variable, "").strip()
    try:
        value = int(text) if text else default
    except ValueError:
        raise SettingsError(f"{variable} must be a whole number (got {text[:40]!r})") from None
    if value < minimum:
        raise SettingsError(f"{variable} must be at least {minimum} (got {value})")
    return value
