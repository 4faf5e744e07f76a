"""Device and dtype: CUDA fp16 when present; on the CPU the weights' own dtype when it is a half
precision (no fp32 copy of fp16 weights), fp32 otherwise. WORKER_DEVICE / WORKER_DTYPE override."""

from __future__ import annotations

import torch

_DTYPES = {"float16": torch.float16, "fp16": torch.float16, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float32": torch.float32, "fp32": torch.float32}
_HALF = (torch.float16, torch.bfloat16)


def pick_device(name: str | None = None) -> torch.device:
    """WORKER_DEVICE's device, else CUDA when present, else the CPU."""
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def pick_dtype(device: torch.device, name: str | None = None, stored: torch.dtype | None = None) -> torch.dtype:
    """WORKER_DTYPE's dtype (`name`), else the default for the device; `stored`: the dtype the default checkpoint's
    weights are stored in, where known."""
    if name is None:
        if device.type == "cuda":
            return torch.float16
        return stored if stored in _HALF else torch.float32
    try:
        return _DTYPES[name.lower()]
    except KeyError:
        raise ValueError(f"WORKER_DTYPE must be one of {', '.join(_DTYPES)} (got {name!r})") from None
