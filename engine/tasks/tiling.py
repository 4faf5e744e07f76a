"""Seamless tiling (A1111's `tiling`): circular padding in every convolution for one generation."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def tiled(*modules: torch.nn.Module, enabled: bool = True) -> Iterator[None]:
    convs = [m for module in modules for m in module.modules() if isinstance(m, torch.nn.Conv2d)] if enabled else []
    saved = [conv.padding_mode for conv in convs]
    for conv in convs:
        conv.padding_mode = "circular"
    try:
        yield
    finally:
        for conv, mode in zip(convs, saved):
            conv.padding_mode = mode
