"""Tiny ControlNets for the tiny checkpoints: `python -m engine.tiny --models-dir DIR --controlnet [--family sdxl]`
writes DIR/ControlNet/tiny-controlnet-sd15.safetensors (or tiny-controlnet-sdxl) from a fixed seed.

They are saved in the original layout (control_model.*, as lllyasviel's files), so they load through the path
real ControlNets take. A trained ControlNet's zero convolutions are zero only before training: these are small
random values, as is the hint embedding's last convolution, so that a control image changes the image.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import ControlNetModel
from safetensors.torch import save_file

from ..configs import architecture_dir
from ..controlnet.models import CONTROLNET_SUBDIR, to_original_layout

CONTROLNETS = {"sd15": "tiny-controlnet-sd15", "sdxl": "tiny-controlnet-sdxl"}  # --family: shipped config
SEED = 4321
OUTPUT_STD = 0.1  # the random "zero" convolutions' weights and biases


def build_tiny_controlnet(family: str = "sd15") -> ControlNetModel:
    torch.manual_seed(SEED)
    model = ControlNetModel.from_config(ControlNetModel.load_config(architecture_dir(CONTROLNETS[family])))
    outputs = [*model.controlnet_down_blocks, model.controlnet_mid_block, model.controlnet_cond_embedding.conv_out]
    with torch.no_grad():
        for parameter in (p for module in outputs for p in module.parameters()):
            parameter.normal_(std=OUTPUT_STD)
    return model


def write_tiny_controlnet(models_dir: Path, family: str = "sd15", name: str | None = None) -> Path:
    path = Path(models_dir) / CONTROLNET_SUBDIR / f"{name or CONTROLNETS[family]}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(to_original_layout(build_tiny_controlnet(family)), path, metadata={"format": "pt"})
    return path
