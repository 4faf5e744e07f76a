"""Device and dtype: CUDA fp16 when present, CPU fp32 otherwise; WORKER_DEVICE / WORKER_DTYPE override."""

from __future__ import annotations

import os

import torch

_DTYPES = {"float16": torch.float16, "fp16": torch.float16, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float32": torch.float32, "fp32": torch.float32}


def pick_device(name: str | None = None) -> torch.device:
    name = name or os.environ.get("WORKER_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def pick_dtype(device: torch.device, name: str | None = None) -> torch.dtype:
    name = name or os.environ.get("WORKER_DTYPE")
    if name is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    try:
        return _DTYPES[name.lower()]
    except KeyError:
        raise ValueError(f"WORKER_DTYPE must be one of {', '.join(_DTYPES)} (got {name!r})") from None
