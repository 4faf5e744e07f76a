"""Tiny ControlNets for the tiny checkpoints: `python -m engine.tiny --models-dir DIR --controlnet [--family sdxl]`
writes DIR/ControlNet/tiny-controlnet-sd15.safetensors (or tiny-controlnet-sdxl) from a fixed seed.

They are saved in the original layout (control_model.*, as lllyasviel's files), so they load through the path
real ControlNets take. A trained ControlNet's zero convolutions are zero only before training: these are small
random values, as is the hint embedding's last convolution, so that a control image changes the image. The hint
embedding's other convolutions carry the control image further than diffusers' initialisation (under which a
sparse map, such as canny edges, fades about fourfold per layer, and the image hardly depends on it).
"""

from __future__ import annotations

from pathlib import Path

import math

import torch
from diffusers import ControlNetModel
from safetensors.torch import save_file

from ..configs import architecture_dir
from ..controlnet.models import CONTROLNET_SUBDIR, to_original_layout

CONTROLNETS = {"sd15": "tiny-controlnet-sd15", "sdxl": "tiny-controlnet-sdxl"}  # --family: shipped config
SEED = 4321
OUTPUT_STD = 0.1  # the random "zero" convolutions' weights and biases
HINT_GAIN = 2.0  # the hint embedding's inner convolutions: He-normal weights at this gain, zero biases


def build_tiny_controlnet(family: str = "sd15") -> ControlNetModel:
    torch.manual_seed(SEED)
    model = ControlNetModel.from_config(ControlNetModel.load_config(architecture_dir(CONTROLNETS[family])))
    outputs = [*model.controlnet_down_blocks, model.controlnet_mid_block, model.controlnet_cond_embedding.conv_out]
    hint = model.controlnet_cond_embedding
    with torch.no_grad():
        for parameter in (p for module in outputs for p in module.parameters()):
            parameter.normal_(std=OUTPUT_STD)
        for conv in (hint.conv_in, *hint.blocks):
            conv.weight.normal_(std=HINT_GAIN * math.sqrt(2 / conv.weight[0].numel()))
            conv.bias.zero_()
    return model


def write_tiny_controlnet(models_dir: Path, family: str = "sd15", name: str | None = None) -> Path:
    path = Path(models_dir) / CONTROLNET_SUBDIR / f"{name or CONTROLNETS[family]}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(to_original_layout(build_tiny_controlnet(family)), path, metadata={"format": "pt"})
    return path
