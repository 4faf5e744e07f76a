"""ControlNet models from the models directory, found, named and matched as sd-webui-controlnet does.

Files: ControlNet/ (recursively) ending in .safetensors, .pt, .pth, .ckpt or .bin, ordered by file name. Each is
titled "stem [hash]" (/controlnet/model_list's names), the hash being A1111's old model hash (`model_hash`). A
unit's `model` names one by its title, by its stem in any case, or by a part of a stem (the shortest stem holding
it wins); "None" is no model. Of files sharing a stem (in any case) the list names the last, as the extension's.

A file holds the original layout (`control_model.` + input_blocks, zero_convs, input_hint_block, middle_block_out;
also without the prefix, possibly under a "state_dict" key) or diffusers' (controlnet_cond_embedding, ...).
The config is the shipped one for its cross-attention width (SD 1.x 768, SDXL 2048, the tiny models' 32 and
96: engine/configs/*controlnet*), fitted to its shapes: hint channels, which down blocks attend and how deep
(SDXL's "mid" ControlNets), linear or convolutional attention projections; an SD 1.x file whose stem holds
"shuffle" pools its conditions, as the extension decides. Pickles are read with torch.load(weights_only=True).
Control-LoRAs, ControlNet Union models, T2I-Adapters and IP-Adapters are refused with a message.
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from diffusers import ControlNetModel
from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING, convert_controlnet_checkpoint

from schemas import RequestError
from schemas.errors import quoted

from ..configs import architecture_dir
from ..families import FAMILIES, ModelFamily
from ..families.ldm_format import unet_key
from ..faults import reraise_server_fault
from ..settings import DEFAULT_MAX_CONTROLNETS
from ..store.models_dir import describe_error, list_files

CONTROLNET_SUBDIR = "ControlNet"
SUFFIXES = (".safetensors", ".pt", ".pth", ".ckpt", ".bin")
NONE = "None"
ORIGINAL_PREFIX = "control_model."
# cross-attention width: (family key, shipped config)
CONFIGS = {768: ("sd1", "controlnet-sd15"), 2048: ("sdxl", "controlnet-sdxl"),
           32: ("sd1", "tiny-controlnet-sd15"), 96: ("sdxl", "tiny-controlnet-sdxl")}
_HINT_ORIGINAL, _HINT_DIFFUSERS = "input_hint_block.0.weight", "controlnet_cond_embedding.conv_in.weight"
_UNSUPPORTED = {"lora_controlnet": "a Control-LoRA", "control_add_embedding.": "a ControlNet Union model",
                "difference": "a difference ControlNet (changes to a base model's weights)"}
_HASH_AT, _HASH_BYTES = 0x100000, 0x10000


@dataclass(frozen=True)
class ControlNetFile:
    path: Path

    @property
    def stem(self) -> str:
        return self.path.stem

    @property
    def short_hash(self) -> str:
        return model_hash(self.path)

    @property
    def title(self) -> str:
        return f"{self.stem} [{self.short_hash}]"


def model_hash(path: Path) -> str:
    """A1111's old model hash, which the extension titles ControlNets with: the first 8 hex digits of the sha256
    of the 64 KiB at 1 MiB into the file (of nothing, "e3b0c442", for a smaller file)."""
    stat = path.stat()
    return _model_hash(path, stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=None)
def _model_hash(path: Path, size: int, mtime_ns: int) -> str:
    with path.open("rb") as stream:
        stream.seek(_HASH_AT)
        return hashlib.sha256(stream.read(_HASH_BYTES)).hexdigest()[:8]


def list_controlnets(models_dir: Path) -> dict[str, ControlNetFile]:
    """The ControlNet files by title, ordered by file name; a file named None.* is none (it would read as no model)."""
    paths = sorted(list_files(models_dir, CONTROLNET_SUBDIR, SUFFIXES), key=lambda path: path.name)
    return {file.title: file for file in map(ControlNetFile, paths) if file.stem != NONE}


def family_key(model: ControlNetModel) -> str:
    """The family ("sd1", "sdxl") of a loaded ControlNet, by its cross-attention width."""
    return CONFIGS[model.config.cross_attention_dim][0]


class ControlNets:
    """The ControlNet models a worker offers: found at start (and on refresh), loaded on first use; the
    `capacity` most recently used stay loaded."""

    def __init__(self, models_dir: Path, device: torch.device, dtype: torch.dtype,
                 capacity: int = DEFAULT_MAX_CONTROLNETS):
        self.models_dir, self.device, self.dtype, self.capacity = models_dir, device, dtype, capacity
        self._loaded: OrderedDict[tuple, ControlNetModel] = OrderedDict()
        self.refresh()

    def refresh(self) -> None:
        self.files = list_controlnets(self.models_dir)
        self._by_stem = {file.stem.lower(): title for title, file in self.files.items()}

    def listing(self) -> list[str]:
        """/controlnet/model_list's `model_list`."""
        return list(self._by_stem.values())

    def unload(self) -> None:
        self._loaded.clear()

    def find(self, option: str, family: ModelFamily, field: str) -> tuple[ControlNetFile, ControlNetModel] | None:
        """The ControlNet `option` names, loaded, if it is of the checkpoint's `family`; None for "None"."""
        file = self.resolve(option, field)
        return None if file is None else (file, self.load(file, family, field))

    def resolve(self, option: str, field: str) -> ControlNetFile | None:
        """The file `option` names; None for "None" (or nothing)."""
        if not option or option == NONE:
            return None
        title = self._match(option)
        if title is None:
            self.refresh()  # files may have been added
            title = self._match(option)
        if title is None:
            raise RequestError(field, f"unknown ControlNet model {quoted(option)}; available: "
                                      f"{', '.join([NONE, *self.listing()])}")
        return self.files[title]

    def _match(self, option: str) -> str | None:
        if option in self.files:
            return option
        wanted = option.lower()
        if wanted in self._by_stem:
            return self._by_stem[wanted]
        holding = sorted((stem for stem in self._by_stem if wanted in stem), key=len)
        return self._by_stem[holding[0]] if holding else None

    def load(self, file: ControlNetFile, family: ModelFamily, field: str) -> ControlNetModel:
        """The file's ControlNet on the worker's device and dtype, if it is of `family`; kept for the next call."""
        stat = file.path.stat()
        key = (file.path, stat.st_size, stat.st_mtime_ns)
        if key in self._loaded:
            self._loaded.move_to_end(key)
            _check_family(file, family_key(self._loaded[key]), family, field)
            return self._loaded[key]
        try:
            state = _read_weights(file.path)
        except Exception as error:  # safetensors and torch.load raise several kinds for bad files
            reraise_server_fault(error)
            raise RequestError(field, f"ControlNet model {file.title!r} can't be read: {describe_error(error)}") \
                from None
        plan = _plan(state, file, field)
        _check_family(file, plan.family, family, field)
        _check_weights(plan, file, field)
        try:
            model = ControlNetModel.from_single_file(_diffusers_weights(plan), config=str(plan.config_dir),
                                                     local_files_only=True, dtype=self.dtype, device=self.device,
                                                     **plan.overrides)
        except Exception as error:  # diffusers raises several kinds for weights that don't fit
            reraise_server_fault(error)
            raise RequestError(field, f"ControlNet model {file.title!r} can't be loaded: {describe_error(error)}") \
                from None
        while self._loaded and len(self._loaded) >= self.capacity:
            self._loaded.popitem(last=False)
        self._loaded[key] = model
        return model


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if path.name.lower().endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    while isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"it holds a {type(state).__name__}, not named weights")
    return {key: value for key, value in state.items() if isinstance(value, torch.Tensor)}


@dataclass(frozen=True)
class _Plan:
    """How a file loads: its family, the shipped config and what its shapes change in it, its weights."""

    family: str
    config_dir: Path
    overrides: dict[str, Any]
    weights: dict[str, torch.Tensor]  # the ControlNet's, without the control_model. prefix
    original: bool  # in the original layout (else diffusers')

    @property
    def config(self) -> dict[str, Any]:
        return {**ControlNetModel.load_config(self.config_dir), **self.overrides}


def _plan(state: dict[str, torch.Tensor], file: ControlNetFile, field: str) -> _Plan:
    weights = state
    if any(key.startswith(ORIGINAL_PREFIX) for key in state):
        weights = {key[len(ORIGINAL_PREFIX):]: value for key, value in state.items() if key.startswith(ORIGINAL_PREFIX)}
    for mark, kind in _UNSUPPORTED.items():
        if any(key.removeprefix(ORIGINAL_PREFIX).startswith(mark) for key in state):
            raise RequestError(field, f"ControlNet model {file.title!r} is {kind}, which this worker can't run")
    hint = next((key for key in (_HINT_ORIGINAL, _HINT_DIFFUSERS) if key in weights), None)
    if hint is None:
        raise RequestError(field, f"{file.title!r} is not a ControlNet model this worker can run (T2I-Adapters, "
                                  "IP-Adapters and other control models are not supported)")
    width = next((value.shape[-1] for key, value in weights.items() if key.endswith("attn2.to_k.weight")), None)
    if width not in CONFIGS:
        found = f"a cross-attention width of {width}" if width else "no cross-attention"
        raise RequestError(field, f"ControlNet model {file.title!r} has {found}: it is of no family this worker "
                                  "runs (SD 1.x ControlNets have 768, SDXL ones 2048)")
    family, config_name = CONFIGS[width]
    config = ControlNetModel.load_config(architecture_dir(config_name))
    original = hint == _HINT_ORIGINAL
    span = config["layers_per_block"] + 1  # the original layout numbers a block's layers and its downsampler in turn
    depths = config["transformer_layers_per_block"]
    if isinstance(depths, int):
        depths = [depths] * len(config["down_block_types"])
    types = []
    for block in range(len(depths)):
        prefix = f"input_blocks.{1 + block * span}.1." if original else f"down_blocks.{block}.attentions.0."
        inner = [key[len(prefix):] for key in weights if key.startswith(prefix)]
        types.append("CrossAttnDownBlock2D" if inner else "DownBlock2D")
        if inner:
            depths[block] = len({key.split(".")[1] for key in inner if key.startswith("transformer_blocks.")})
    projection = next((value for key, value in weights.items() if key.endswith("proj_in.weight")), None)
    overrides = {"conditioning_channels": weights[hint].shape[1], "down_block_types": types,
                 "transformer_layers_per_block": depths,
                 "use_linear_projection": projection is not None and projection.ndim == 2,
                 "global_pool_conditions": family == "sd1" and "shuffle" in file.stem.lower()}
    return _Plan(family, architecture_dir(config_name), overrides, weights, original)


def _check_family(file: ControlNetFile, key: str, family: ModelFamily, field: str) -> None:
    if key != family.key:
        names = {f.key: f.name for f in FAMILIES}
        raise RequestError(field, f"ControlNet model {file.title!r} is an {names[key]} ControlNet; the checkpoint "
                                  f"is {family.name}")


def _check_weights(plan: _Plan, file: ControlNetFile, field: str) -> None:
    """Every weight the planned model has is in the file, in its shape (diffusers would leave a missing one unset)."""
    with init_empty_weights():
        skeleton = ControlNetModel.from_config(plan.config)
    layers, hint_blocks = skeleton.config.layers_per_block, len(skeleton.controlnet_cond_embedding.blocks)
    missing = []
    for key, expected in skeleton.state_dict().items():
        name = original_key(key, layers, hint_blocks) if plan.original else key
        found = plan.weights.get(name)
        if found is None:
            missing.append(name)
        elif found.shape != expected.shape:
            raise RequestError(field, f"ControlNet model {file.title!r} can't be loaded: its {name} has the shape "
                                      f"{list(found.shape)}, where its config has {list(expected.shape)}")
    if missing:
        raise RequestError(field, f"ControlNet model {file.title!r} can't be loaded: it lacks {len(missing)} of its "
                                  f"config's weights, e.g. {missing[0]}")


def _diffusers_weights(plan: _Plan) -> dict[str, torch.Tensor]:
    """The weights under diffusers' names: its own conversion, plus SDXL's addition embedding (label_emb), which
    its ControlNet conversion leaves out (diffusers 0.42)."""
    if not plan.original:
        return plan.weights
    weights = convert_controlnet_checkpoint(plan.weights, plan.config)
    for name, original in DIFFUSERS_TO_LDM_MAPPING["controlnet"]["addition_embed_type"].items():
        if original in plan.weights:
            weights.setdefault(name, plan.weights[original])
    return weights


def original_key(key: str, layers_per_block: int, hint_blocks: int) -> str:
    """The original layout's name (without control_model.) of a diffusers ControlNetModel weight."""
    if m := re.fullmatch(r"controlnet_down_blocks\.(\d+)\.(weight|bias)", key):
        return f"zero_convs.{m[1]}.0.{m[2]}"
    if m := re.fullmatch(r"controlnet_mid_block\.(weight|bias)", key):
        return f"middle_block_out.0.{m[1]}"
    if m := re.fullmatch(r"controlnet_cond_embedding\.(conv_in|conv_out|blocks\.\d+)\.(weight|bias)", key):
        # input_hint_block alternates convolutions and SiLUs: conv_in, the blocks, then conv_out
        part = m[1]
        index = 0 if part == "conv_in" else 2 * hint_blocks + 2 if part == "conv_out" else 2 * int(part[7:]) + 2
        return f"input_hint_block.{index}.{m[2]}"
    return unet_key(key, layers_per_block, set())


def to_original_layout(model: ControlNetModel) -> dict[str, torch.Tensor]:
    """A diffusers ControlNetModel's weights as the original files hold them (control_model.*)."""
    layers, hint_blocks = model.config.layers_per_block, len(model.controlnet_cond_embedding.blocks)
    return {ORIGINAL_PREFIX + original_key(key, layers, hint_blocks): value.detach().contiguous()
            for key, value in model.state_dict().items()}
