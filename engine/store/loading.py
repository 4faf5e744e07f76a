"""Load a checkpoint from the models directory into a diffusers pipeline, offline.

Single files load from the form `python -m engine.store.bake` converted them into (engine/store/converted.py)
when it is there and current; otherwise through diffusers' single-file loader with the configs
shipped in engine/configs (chosen by inspecting the file's tensors, never fetched). Diffusers folders
load through from_pretrained.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline
from diffusers.utils import logging as diffusers_logging
from safetensors import safe_open
from transformers import CLIPTokenizer

from ..configs import CLIP_TOKENIZER_DIR, architecture_dir
from .converted import load_converted, usable_conversion
from ..families.ldm_format import TEXT_ENCODER_PREFIX, UNET_PREFIX
from .models_dir import Checkpoint


class UnsupportedCheckpoint(ValueError):
    """The checkpoint is of an architecture this worker can't run (yet)."""


# conv_in's output width identifies the SD 1.x family member whose config we ship
_SD1_BY_WIDTH = {320: "sd15", 32: "tiny-sd15"}
# conv_in's input channels: 4 latents, or 9 (latents + mask + masked-image latents) for inpainting
_VARIANT_BY_CHANNELS = {4: "", 9: "-inpainting"}
_SAFETENSORS_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32}
_OPTIONS = {"local_files_only": True, "safety_checker": None, "feature_extractor": None,
            "requires_safety_checker": False}


def detect_architecture(checkpoint: Checkpoint) -> str:
    """The shipped config (engine/configs/<name>) matching a single-file checkpoint's tensors."""
    with safe_open(checkpoint.path, framework="pt") as weights:
        keys = set(weights.keys())
        conv_in = f"{UNET_PREFIX}input_blocks.0.0.weight"
        if conv_in not in keys:
            raise UnsupportedCheckpoint(f"{checkpoint.name}: no Stable Diffusion UNet found in the file")
        if any(k.startswith("conditioner.embedders.") for k in keys):
            raise UnsupportedCheckpoint(f"{checkpoint.name}: SDXL checkpoints are not supported yet")
        if not any(k.startswith(TEXT_ENCODER_PREFIX) for k in keys):
            raise UnsupportedCheckpoint(
                f"{checkpoint.name}: not an SD 1.x checkpoint (SD 2.x and others are not supported yet)"
            )
        width, in_channels = weights.get_slice(conv_in).get_shape()[:2]
    if width not in _SD1_BY_WIDTH or in_channels not in _VARIANT_BY_CHANNELS:
        raise UnsupportedCheckpoint(
            f"{checkpoint.name}: unknown SD 1.x variant (UNet width {width}, {in_channels} input channels)")
    return _SD1_BY_WIDTH[width] + _VARIANT_BY_CHANNELS[in_channels]


def components_config_dir(checkpoint: Checkpoint) -> Path:
    """The folder holding the checkpoint's component configs (vae/config.json, unet/config.json, ...)."""
    return architecture_dir(detect_architecture(checkpoint)) if checkpoint.is_single_file else checkpoint.path


def stored_dtype(checkpoint: Checkpoint) -> torch.dtype | None:
    """The dtype the checkpoint's UNet weights are stored in (None where the file doesn't say)."""
    if checkpoint.is_single_file:
        path, key = checkpoint.path, f"{UNET_PREFIX}input_blocks.0.0.weight"
    else:
        path, key = checkpoint.path / "unet" / "diffusion_pytorch_model.safetensors", "conv_in.weight"
    if not path.is_file():
        return None
    with safe_open(path, framework="pt") as weights:
        return _SAFETENSORS_DTYPES.get(weights.get_slice(key).get_dtype()) if key in weights.keys() else None


def load_pipeline(checkpoint: Checkpoint, device: torch.device, dtype: torch.dtype) -> StableDiffusionPipeline:
    diffusers_logging.disable_progress_bar()  # worker logs, not a terminal
    if checkpoint.is_single_file:
        converted = usable_conversion(checkpoint)
        return load_converted(converted, device, dtype) if converted else load_single_file(checkpoint, device, dtype)
    return _ready(StableDiffusionPipeline.from_pretrained(checkpoint.path, **_OPTIONS, dtype=dtype), device)


def load_single_file(checkpoint: Checkpoint, device: torch.device, dtype: torch.dtype) -> StableDiffusionPipeline:
    """Through diffusers' single-file loader: its key conversion runs on every load."""
    return _ready(StableDiffusionPipeline.from_single_file(  # the UNet's channels come from the config
        str(checkpoint.path),
        config=str(architecture_dir(detect_architecture(checkpoint))),
        tokenizer=CLIPTokenizer.from_pretrained(CLIP_TOKENIZER_DIR),
        **_OPTIONS, dtype=dtype,
    ), device)


def _ready(pipe: StableDiffusionPipeline, device: torch.device) -> StableDiffusionPipeline:
    pipe.set_progress_bar_config(disable=True)
    return pipe if device.type == "cpu" else pipe.to(device)  # loaded on the CPU already
