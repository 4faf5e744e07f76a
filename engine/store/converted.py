"""Single-file checkpoints converted at bake time into the form that loads fastest, and loading it.

`python -m engine.store.bake` writes, for Stable-diffusion/<name>.safetensors, a diffusers folder
MODELS_DIR/.converted/<name>/: each component's config and its weights as safetensors, already in
diffusers' key layout and in the checkpoint's own dtype. Loading it is building the modules without
initialising any weight (accelerate's empty weights) and handing them the memory-mapped tensors
(`load_state_dict(assign=True)`): no key conversion, no random initialisation, no copy on the CPU.

The folder's source.json, written last, records what it was converted from: the file's sha256 and
size, and the diffusers and transformers versions that wrote it (their key layouts). The worker uses
the folder only while all of these match, and otherwise loads the single file. The checkpoint keeps
the single file's A1111 name, title and hash; .converted/ is not a checkpoint of its own.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

from .models_dir import CHECKPOINT_SUFFIX, Checkpoint

if TYPE_CHECKING:  # imported where used: the worker reads the record before torch is imported
    import torch
    from diffusers import DiffusionPipeline

CONVERTED_SUBDIR = ".converted"
RECORD_FILE = "source.json"
_LIBRARIES = ("diffusers", "transformers")


def converted_dir(checkpoint: Checkpoint) -> Path:
    return checkpoint.models_dir / CONVERTED_SUBDIR / checkpoint.name.removesuffix(CHECKPOINT_SUFFIX)


def _record(checkpoint: Checkpoint) -> dict:
    return {"sha256": checkpoint.sha256, "size": checkpoint.path.stat().st_size,
            **{library: version(library) for library in _LIBRARIES}}


def usable_conversion(checkpoint: Checkpoint) -> Path | None:
    """The checkpoint's converted folder, if one was written from this very file by these libraries."""
    record = converted_dir(checkpoint) / RECORD_FILE
    if not checkpoint.is_single_file or not record.is_file():
        return None
    return record.parent if json.loads(record.read_text()) == _record(checkpoint) else None


def write_conversion(checkpoint: Checkpoint, pipe: DiffusionPipeline) -> Path:
    """Save the loaded checkpoint as its converted folder, replacing any older one (bake time)."""
    target = converted_dir(checkpoint)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        pipe.save_pretrained(staging)
        (staging / RECORD_FILE).write_text(json.dumps(_record(checkpoint), indent=2))
        for path in (staging, *staging.rglob("*")):  # readable like the checkpoint (mkdtemp makes 0700)
            path.chmod(0o755 if path.is_dir() else 0o644)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def load_converted(folder: Path, pipeline_class: type, device: torch.device, dtype: torch.dtype) -> DiffusionPipeline:
    """The pipeline of `pipeline_class` from its converted folder: each component listed in model_index.json built
    empty from its config and given the stored weights; tokenizers and the scheduler from their folders."""
    import importlib
    import inspect

    from accelerate import init_empty_weights

    index = json.loads((folder / "model_index.json").read_text())
    components: dict = {}
    for name, entry in index.items():
        if name.startswith("_"):
            continue
        if not isinstance(entry, list):  # a pipeline setting (requires_aesthetics_score, ...)
            components[name] = entry
            continue
        library, class_name = entry
        if class_name is None or name in ("safety_checker", "feature_extractor", "image_encoder"):
            components[name] = None
            continue
        cls = getattr(importlib.import_module(library), class_name)
        if name.startswith("tokenizer") or name == "scheduler":
            components[name] = cls.from_pretrained(folder / name)
            continue
        with init_empty_weights():  # parameters on the meta device: allocated by nobody, initialised by nobody
            module = cls.from_config(cls.load_config(folder / name)) if library == "diffusers" \
                else cls(cls.config_class.from_pretrained(folder / name))
        _assign_weights(module, folder / name, device, dtype)
        components[name] = module
    if "requires_safety_checker" in inspect.signature(pipeline_class.__init__).parameters:
        components["requires_safety_checker"] = False
    return pipeline_class(**components)


def _assign_weights(module: torch.nn.Module, folder: Path, device: torch.device, dtype: torch.dtype) -> None:
    """The component's safetensors become its parameters: memory-mapped on the CPU (read as they are
    used), copied tensor by tensor to another device; cast only where the stored dtype is not `dtype`."""
    from safetensors import safe_open

    state = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(file, framework="pt", device=str(device)) as weights:
            for key in weights.keys():
                tensor = weights.get_tensor(key)
                state[key] = tensor.to(dtype) if tensor.is_floating_point() else tensor
    module.load_state_dict(state, strict=True, assign=True)
    module.to(device).eval()  # the buffers (built on the CPU, not in the files) follow the weights
