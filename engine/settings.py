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
ATTENTION_KERNELS = ("default", "flash", "efficient", "cudnn", "math")  # WORKER_ATTENTION: SDPA's kernel on CUDA


class SettingsError(ValueError):
    """An environment variable has a value the worker can't use; the message names it."""


@dataclass(frozen=True)
class FastPathOptions:
    """The GPU fast path (engine/store/fast_path.py): options a CUDA deployment turns on; each is off by default,
    and the process-wide ones (cuDNN benchmark, the attention kernel) apply on CUDA only."""

    channels_last: bool = False  # WORKER_CHANNELS_LAST: the UNet's and VAE's convolutions in NHWC
    fuse_qkv: bool = False  # WORKER_FUSE_QKV: the UNet's attention projections fused (q, k, v in one matmul)
    compile: bool = False  # WORKER_COMPILE: torch.compile the UNet, with the models directory's compile cache
    # WORKER_COMPILE_SIZES: the sizes compiled at start and baked (none given: the checkpoint's own, 512 or 1024)
    compile_sizes: tuple[tuple[int, int], ...] = ()
    cudnn_benchmark: bool = False  # WORKER_CUDNN_BENCHMARK: cuDNN times its convolution algorithms per shape
    attention: str = "default"  # WORKER_ATTENTION: the only SDPA kernel allowed on CUDA (default: torch picks)

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> FastPathOptions:
        attention = env.get("WORKER_ATTENTION", "").strip().lower() or "default"
        if attention not in ATTENTION_KERNELS:
            raise SettingsError(f"WORKER_ATTENTION must be one of {', '.join(ATTENTION_KERNELS)} "
                                f"(got {attention[:40]!r})")
        return cls(channels_last=_switch(env, "WORKER_CHANNELS_LAST"), fuse_qkv=_switch(env, "WORKER_FUSE_QKV"),
                   compile=_switch(env, "WORKER_COMPILE"), compile_sizes=_sizes(env, "WORKER_COMPILE_SIZES"),
                   cudnn_benchmark=_switch(env, "WORKER_CUDNN_BENCHMARK"), attention=attention)


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
    fast_path: FastPathOptions = FastPathOptions()  # the WORKER_* options of the GPU fast path

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
            fast_path=FastPathOptions.from_env(env),
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


def _switch(env: Mapping[str, str], variable: str) -> bool:
    """An on/off variable: `1` or `0` (unset: off)."""
    text = env.get(variable, "").strip()
    if text not in ("", "0", "1"):
        raise SettingsError(f"{variable} must be 0 or 1 (got {text[:40]!r})")
    return text == "1"


def _sizes(env: Mapping[str, str], variable: str) -> tuple[tuple[int, int], ...]:
    """Image sizes, `WIDTHxHEIGHT` separated by commas (e.g. `512x512,768x512`), each side a multiple of 8."""
    sizes = []
    for item in filter(None, (item.strip() for item in env.get(variable, "").split(","))):
        try:
            width, height = (int(side) for side in item.lower().split("x"))
        except ValueError:
            raise SettingsError(f"{variable} must be sizes such as 512x512,768x512 (got {item[:40]!r})") from None
        if min(width, height) < 64 or width % 8 or height % 8:
            raise SettingsError(f"{variable}: each side must be a multiple of 8, at least 64 (got {width}x{height})")
        sizes.append((width, height))
    return tuple(sizes)
