"""Load a checkpoint from the models directory into a diffusers pipeline, offline.

The checkpoint's family (engine/families) is found from its tensor names (single files) or its
model_index.json (diffusers folders). Single files load from the form `python -m engine.store.bake`
converted them into (engine/store/converted.py) when it is there and current; otherwise through
diffusers' single-file loader with the configs shipped in engine/configs (chosen by the family from
the file's tensor shapes, never fetched). Diffusers folders load through from_pretrained.

A single file's own Prediction (v-prediction, zero terminal SNR: engine/families/prediction.py) is set on its
scheduler config when it loads. SD 2.x's test of the UNet runs on the CPU in float32 as in A1111 (an 8x8 UNet
evaluation, some seconds at SD 2.x's size), once per load of a file that has no bake-time conversion; a
conversion records its outcome in its scheduler config.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path

import diffusers
import torch
from diffusers.utils import logging as diffusers_logging
from safetensors import safe_open
from transformers import CLIPTokenizer

from ..configs import CLIP_TOKENIZER_DIR, architecture_dir
from ..families import ModelFamily, UnsupportedCheckpoint, family_of_keys, family_of_pipeline
from ..families.prediction import Prediction, single_file_prediction
from ..families.sd1 import CONV_IN
from ..families.sd2 import file_v_parameterized
from .converted import load_converted, usable_conversion
from .models_dir import Checkpoint

_SAFETENSORS_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32}
_OPTIONS = {"local_files_only": True, "safety_checker": None, "feature_extractor": None,
            "requires_safety_checker": False}
MODEL_INDEX = "model_index.json"


@dataclass(frozen=True)
class Architecture:
    """What a checkpoint is: its family and the folder of its component configs (vae/config.json, ...)."""

    family: ModelFamily
    config_dir: Path
    prediction: Prediction = field(default_factory=Prediction)  # a single file's, beyond its config's scheduler

    @property
    def pipeline_class(self) -> type:
        return getattr(diffusers, json.loads((self.config_dir / MODEL_INDEX).read_text())["_class_name"])


def detect_architecture(checkpoint: Checkpoint) -> Architecture:
    if not checkpoint.is_single_file:
        index = json.loads((checkpoint.path / MODEL_INDEX).read_text())
        family = family_of_pipeline(index.get("_class_name", "?"), checkpoint.name, checkpoint.path)
        return Architecture(family, checkpoint.path)
    with safe_open(checkpoint.path, framework="pt") as weights:
        shapes = {key: weights.get_slice(key).get_shape() for key in weights.keys()}
    if CONV_IN not in shapes:
        raise UnsupportedCheckpoint(f"{checkpoint.name}: no Stable Diffusion UNet found in the file")
    family = family_of_keys(set(shapes), checkpoint.name)
    name, prediction = single_file_prediction(family.architecture(shapes, checkpoint.name), shapes,
                                              lambda base: _v_tested(checkpoint, base))
    return Architecture(family, architecture_dir(name), prediction)


def _v_tested(checkpoint: Checkpoint, architecture: str) -> bool:
    """A1111's v-prediction test of the file's UNet; a bake-time conversion of the file answers from its scheduler
    config instead."""
    converted = usable_conversion(checkpoint)
    if converted:
        config = json.loads((converted / "scheduler" / "scheduler_config.json").read_text())
        return config.get("prediction_type") == "v_prediction"
    return file_v_parameterized(checkpoint.path, architecture_dir(architecture))


def stored_dtype(checkpoint: Checkpoint) -> torch.dtype | None:
    """The dtype the checkpoint's UNet weights are stored in (None where the file doesn't say)."""
    if checkpoint.is_single_file:
        path, key = checkpoint.path, CONV_IN
    else:
        path, key = checkpoint.path / "unet" / "diffusion_pytorch_model.safetensors", "conv_in.weight"
    if not path.is_file():
        return None
    with safe_open(path, framework="pt") as weights:
        return _SAFETENSORS_DTYPES.get(weights.get_slice(key).get_dtype()) if key in weights.keys() else None


def load_pipeline(checkpoint: Checkpoint, device: torch.device, dtype: torch.dtype,
                  architecture: Architecture | None = None):
    """The checkpoint's pipeline (`architecture`: detect_architecture's, found again when not given)."""
    diffusers_logging.disable_progress_bar()  # worker logs, not a terminal
    architecture = architecture or detect_architecture(checkpoint)
    if checkpoint.is_single_file:
        converted = usable_conversion(checkpoint)
        if converted:  # converted by an older worker maybe, without the file's prediction: set it again
            return _predicting(load_converted(converted, architecture.pipeline_class, device, dtype), architecture)
        return load_single_file(checkpoint, architecture, device, dtype)
    pipe = architecture.pipeline_class.from_pretrained(checkpoint.path, **_pipeline_options(architecture), dtype=dtype)
    return _ready(pipe, device)


def load_single_file(checkpoint: Checkpoint, architecture: Architecture, device: torch.device, dtype: torch.dtype):
    """Through diffusers' single-file loader: its key conversion runs on every load."""
    tokenizer = CLIPTokenizer.from_pretrained(CLIP_TOKENIZER_DIR)
    components = json.loads((architecture.config_dir / MODEL_INDEX).read_text())
    tokenizers = {name: tokenizer for name in ("tokenizer", "tokenizer_2") if (components.get(name) or [None])[0]}
    return _ready(_predicting(architecture.pipeline_class.from_single_file(  # the UNet's channels: from the config
        str(checkpoint.path), config=str(architecture.config_dir), **tokenizers,
        **_pipeline_options(architecture), dtype=dtype,
    ), architecture), device)


def _predicting(pipe, architecture: Architecture):
    """The pipeline with its scheduler set to the file's Prediction."""
    if architecture.prediction != Prediction():
        scheduler = pipe.scheduler
        pipe.scheduler = type(scheduler).from_config(architecture.prediction.scheduler_config(scheduler.config))
    return pipe


def _pipeline_options(architecture: Architecture) -> dict:
    """The loader options the pipeline class takes (SDXL pipelines have no safety checker)."""
    accepted = inspect.signature(architecture.pipeline_class.__init__).parameters
    return {key: value for key, value in _OPTIONS.items() if key in accepted or key == "local_files_only"}


def _ready(pipe, device: torch.device):
    pipe.set_progress_bar_config(disable=True)
    return pipe if device.type == "cpu" else pipe.to(device)  # loaded on the CPU already
