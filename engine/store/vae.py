"""VAEs from the models directory, chosen by A1111's sd_vae option.

Files: VAE/ (.safetensors, .pt, .ckpt, recursively) and *.vae.safetensors / .vae.pt / .vae.ckpt beside the
checkpoints, named by their file name (extension included) as A1111 names them. sd_vae is "Automatic"
(the first VAE whose file name starts with the checkpoint's, e.g. model.vae.safetensors for
model.safetensors, else the checkpoint's own), "None" (the checkpoint's own) or a file name.

A VAE file holds A1111's single-file layout (encoder., decoder., quant_conv., post_quant_conv., possibly
under first_stage_model. or a "state_dict" key); diffusers' single-file loader reads it with the
checkpoint's own VAE config. Loaded VAEs are kept (a few), and the checkpoint's own stays with it.

SD 1.x's and SDXL's VAEs have the same shapes, so a VAE of the other family would load and decode
garbage: a VAE file whose name says SDXL ("xl" as a word part: sdxl_vae, sdxl-vae-fp16-fix, XL_VAE), or
that is a well-known SD 1.x VAE, is refused for a checkpoint of the other family.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import re

import torch
from diffusers import AutoencoderKL

from schemas import RequestError
from schemas.errors import quoted

from ..faults import reraise_server_fault
from .loading import Architecture
from .models_dir import CHECKPOINTS_SUBDIR, Checkpoint, describe_error, list_files, sha256_of

VAE_SUBDIR = "VAE"
SUFFIXES = (".safetensors", ".pt", ".ckpt")
BESIDE_CHECKPOINTS = tuple(".vae" + suffix for suffix in SUFFIXES)
AUTOMATIC, NONE = "Automatic", "None"
CACHED_VAES = 2
_SDXL_NAME = re.compile(r"(?<![a-z])(sd)?xl(?![a-z])")
_SD1_VAES = {"735e4c3a44": "vae-ft-mse-840000-ema-pruned"}  # A1111 VAE hashes of well-known SD 1.x VAEs


@dataclass(frozen=True)
class VaeFile:
    path: Path
    models_dir: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def short_hash(self) -> str:
        """A1111's `VAE hash`: the first 10 hex digits of the file's sha256."""
        return sha256_of(self.models_dir, self.path)[:10]


def list_vaes(models_dir: Path) -> dict[str, VaeFile]:
    """The VAE files by name, sorted; a name in VAE/ wins over the same name beside the checkpoints."""
    found: dict[str, VaeFile] = {}
    for path in [*list_files(models_dir, VAE_SUBDIR, SUFFIXES),
                 *list_files(models_dir, CHECKPOINTS_SUBDIR, BESIDE_CHECKPOINTS)]:
        found.setdefault(path.name, VaeFile(path, models_dir))
    return dict(sorted(found.items(), key=lambda item: item[0].lower()))


class Vaes:
    """The VAEs a worker offers: found at start (and on refresh), loaded on first use and kept."""

    def __init__(self, models_dir: Path, device: torch.device, dtype: torch.dtype):
        self.models_dir, self.device, self.dtype = models_dir, device, dtype
        self.files = list_vaes(models_dir)
        self._loaded: OrderedDict[tuple[Path, Path], AutoencoderKL] = OrderedDict()

    def listing(self) -> list[dict[str, Any]]:
        """Items of A1111's /sdapi/v1/sd-vae."""
        return [{"model_name": file.name, "filename": str(file.path)} for file in self.files.values()]

    def refresh(self) -> None:
        self.files = list_vaes(self.models_dir)

    def unload(self) -> None:
        self._loaded.clear()

    def find(self, option: str, checkpoint: Checkpoint, architecture: Architecture,
             field: str) -> tuple[VaeFile | None, AutoencoderKL | None]:
        """The VAE file `option` names for the checkpoint, loaded; (None, None) for the checkpoint's own."""
        file = self.resolve(option, checkpoint, field)
        if file is None:
            return None, None
        _check_family(file, checkpoint, architecture, field)
        return file, self._load(file, checkpoint, architecture, field)

    def resolve(self, option: str, checkpoint: Checkpoint, field: str) -> VaeFile | None:
        """The VAE file for `checkpoint`; None for the checkpoint's own."""
        if option == NONE:
            return None
        if option == AUTOMATIC:
            stem = checkpoint.path.name.rsplit(".", 1)[0]
            return next((file for file in self.files.values() if file.name.startswith(stem)), None)
        if option not in self.files:
            self.refresh()  # files may have been added
        if option not in self.files:
            raise RequestError(field, f"unknown VAE {quoted(option)}; available: "
                                      f"{', '.join([AUTOMATIC, NONE, *self.files])}")
        return self.files[option]

    def _load(self, file: VaeFile, checkpoint: Checkpoint, architecture: Architecture, field: str) -> AutoencoderKL:
        config = architecture.config_dir
        key = (file.path, config)
        if key in self._loaded:
            self._loaded.move_to_end(key)
            return self._loaded[key]
        try:
            vae = AutoencoderKL.from_single_file(str(file.path), config=str(config), subfolder="vae",
                                                 local_files_only=True, dtype=self.dtype)
        except Exception as error:  # diffusers raises several kinds for files that are not a fitting VAE
            reraise_server_fault(error)
            raise RequestError(field, f"VAE {file.name!r} can't be loaded for checkpoint {checkpoint.name}: "
                                      f"{describe_error(error)}") from None
        while len(self._loaded) >= CACHED_VAES:
            self._loaded.popitem(last=False)
        self._loaded[key] = vae.to(self.device).eval()
        return self._loaded[key]


def _check_family(file: VaeFile, checkpoint: Checkpoint, architecture: Architecture, field: str) -> None:
    """Refuse a VAE known to be of the other family (see the module's docstring)."""
    family = architecture.family
    if _SDXL_NAME.search(file.path.stem.lower()):
        if family.key != "sdxl":
            raise RequestError(field, f"VAE {file.name!r} is an SDXL VAE; checkpoint {checkpoint.name} is "
                                      f"{family.name}")
    elif family.key == "sdxl" and file.short_hash in _SD1_VAES:
        raise RequestError(field, f"VAE {file.name!r} is an SD 1.x VAE ({_SD1_VAES[file.short_hash]}); checkpoint "
                                  f"{checkpoint.name} is SDXL")
