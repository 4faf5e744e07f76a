"""LoRAs: the models directory's Lora/ folder, and LoRAs applied to a pipeline as PEFT adapters.

Files are `.safetensors` in kohya/A1111 key format (lora_unet_*, lora_te_*) or diffusers/PEFT format,
loaded through diffusers' LoRA loader. Names follow A1111: a file is named by its stem (also in
subfolders) or by its alias, the `ss_output_name` in its metadata; an alias two files share, and
"none", name files by stem only. The infotext's `Lora hashes` use A1111's hash: the metadata's
`sshs_model_hash`, else sha256 of the file after its safetensors header ("addnet" hash), 12 digits.

A pipeline keeps the last few LoRAs it loaded (WORKER_MAX_LORAS, default 8) as unfused adapters and
switches between them per sampling pass; with none active its layers compute exactly the base model.
A LoRA made for another model family (its cross-attention width or text encoders differ from the
checkpoint's) is an error naming it, where A1111 would skip it silently.
"""

from __future__ import annotations

import itertools
import re
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors import safe_open

from schemas import RequestError
from schemas.errors import quoted
from schemas.extra_networks import LoraTag

from ..faults import reraise_server_fault
from ..store.models_dir import addnet_hash, describe_error, list_files
from ..settings import DEFAULT_MAX_LORAS

LORA_SUBDIR = "Lora"
LORA_SUFFIX = ".safetensors"
TEXT_ENCODERS = ("text_encoder", "text_encoder_2")  # the pipeline parts a LoRA's te weight applies to
# the cross-attention width a LoRA's UNet layers take, by the family they were trained for
_FAMILY_BY_CONTEXT = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL", 1280: "the SDXL refiner"}
_METADATA_ORDER = {"ss_sd_model_name": 1, "ss_resolution": 2, "ss_clip_skip": 3, "ss_num_train_images": 10,
                   "ss_tag_frequency": 20}  # A1111 lists these metadata keys first, in this order


@dataclass(frozen=True)
class LoraFile:
    path: Path
    models_dir: Path
    metadata: dict[str, str] = field(compare=False, hash=False)

    @property
    def name(self) -> str:
        return self.path.name.removesuffix(LORA_SUFFIX)

    @property
    def alias(self) -> str:
        return self.metadata.get("ss_output_name", self.name)

    @property
    def version(self) -> tuple[Path, int, int]:
        """Identifies this file's contents: a rewritten file is loaded anew."""
        stat = self.path.stat()
        return self.path, stat.st_size, stat.st_mtime_ns

    @property
    def short_hash(self) -> str:
        return (self.metadata.get("sshs_model_hash") or addnet_hash(self.models_dir, self.path))[:12]

    def listing(self) -> dict[str, Any]:
        """A1111's /sdapi/v1/loras entry."""
        return {"name": self.name, "alias": self.alias, "path": str(self.path), "metadata": self.metadata}


def read_metadata(path: Path) -> dict[str, str]:
    """The safetensors header's metadata, A1111's keys first; {} for a file that is not safetensors."""
    try:
        with safe_open(path, framework="pt") as weights:
            metadata = weights.metadata() or {}
    except Exception:  # listed anyway; using it fails with the loader's error
        return {}
    return dict(sorted(metadata.items(), key=lambda item: _METADATA_ORDER.get(item[0], 999)))


class LoraLibrary:
    """The LoRA files of a models directory, found by A1111's names and aliases."""

    def __init__(self, models_dir: Path, capacity: int = DEFAULT_MAX_LORAS):
        """`capacity`: how many LoRAs each checkpoint keeps loaded (WORKER_MAX_LORAS)."""
        self.models_dir, self.capacity = models_dir, capacity
        self.refresh()

    def refresh(self) -> None:
        by_name: dict[str, LoraFile] = {}
        by_alias: dict[str, LoraFile] = {}
        ambiguous = {"none"}  # lower-case aliases that name files by stem only
        for path in list_files(self.models_dir, LORA_SUBDIR, (LORA_SUFFIX,)):
            lora = LoraFile(path, self.models_dir, read_metadata(path))
            by_name[lora.name] = lora
            if lora.alias in by_alias:
                ambiguous.add(lora.alias.lower())
            by_alias[lora.name] = by_alias[lora.alias] = lora
        self.loras, self._by_alias, self._ambiguous = by_name, by_alias, ambiguous

    def _lookup(self, name: str) -> LoraFile | None:
        lora = (self.loras if name.lower() in self._ambiguous else self._by_alias).get(name)
        return lora if lora is not None and lora.path.is_file() else None

    def find(self, name: str, field: str) -> LoraFile:
        """The file a prompt names; the folder is read again before a name counts as unknown."""
        if (lora := self._lookup(name)) is None:
            self.refresh()
            lora = self._lookup(name)
        if lora is None:
            known = ", ".join(self.loras) or "none"
            raise RequestError(field, f"no LoRA {quoted(name)} in {self.models_dir / LORA_SUBDIR} (only "
                                      f"{LORA_SUFFIX} files are read); available: {known}")
        return lora

    def listing(self) -> list[dict[str, Any]]:
        return [lora.listing() for lora in self.loras.values()]


@dataclass(frozen=True)
class Adapter:
    name: str  # the PEFT adapter name in the pipeline
    components: tuple[str, ...]  # those of COMPONENTS it has layers in


class LoraAdapters:
    """The LoRAs loaded into one pipeline, and which of them are active with which weights.

    The prompt encoder learns the active text-encoder adapters, so its cache never mixes encodings.
    """

    def __init__(self, pipe, encoder, library: LoraLibrary, family_name: str, capacity: int | None = None):
        """`capacity`: the LoRAs kept loaded (default: the library's, WORKER_MAX_LORAS)."""
        self.pipe, self.encoder, self.library, self.family_name = pipe, encoder, library, family_name
        self.components = ("unet", *(name for name in TEXT_ENCODERS if getattr(pipe, name, None) is not None))
        self.capacity = capacity or library.capacity
        self._adapters: OrderedDict[tuple, Adapter] = OrderedDict()  # by file version, least recent first
        self._names = (f"lora{i}" for i in itertools.count())

    def resolve(self, tags: Iterable[LoraTag]) -> list[tuple[LoraTag, LoraFile]]:
        return [(tag, self.library.find(tag.name, tag.field)) for tag in tags]

    def load(self, tags: Iterable[LoraTag]) -> None:
        """Find and load every LoRA the tags name, so that bad names and files fail before any work."""
        resolved = self.resolve(tags)
        keep = {lora.version for _, lora in resolved}
        for tag, lora in resolved:
            self._adapter(lora, tag.field, keep)

    def activate(self, tags: Sequence[LoraTag]) -> list[tuple[LoraTag, LoraFile]]:
        """Make exactly these LoRAs active (none: the base model); a LoRA named twice adds its weights.
        Returns the tags with their files."""
        resolved = self.resolve(tags)
        if not resolved:
            self.deactivate()
            return resolved
        weights: dict[Adapter, dict[str, float]] = {}
        keep = {lora.version for _, lora in resolved}
        for tag, lora in resolved:
            adapter = self._adapter(lora, tag.field, keep)
            summed = weights.setdefault(adapter, dict.fromkeys(adapter.components, 0.0))
            for component in summed:
                summed[component] += tag.unet_weight if component == "unet" else tag.te_weight
        self.pipe.enable_lora()
        self.pipe.set_adapters([a.name for a in weights], list(weights.values()))
        self.encoder.adapters = tuple((a.name, next(w[c] for c in TEXT_ENCODERS if c in w))
                                      for a, w in weights.items() if any(c in w for c in TEXT_ENCODERS))
        return resolved

    def deactivate(self) -> None:
        """Back to the base model exactly: adapters stay loaded, their layers compute nothing."""
        if self._adapters:
            self.pipe.disable_lora()
        self.encoder.adapters = ()

    def _adapter(self, lora: LoraFile, field: str, keep: set[tuple]) -> Adapter:
        """`lora` loaded as an adapter (from the cache when loaded before); evicts the least recently used
        beyond capacity, except those in `keep`."""
        version = lora.version
        if version in self._adapters:
            self._adapters.move_to_end(version)
        else:
            self._adapters[version] = self._load(lora, field)
        for old in [v for v in self._adapters if v not in keep][:max(len(self._adapters) - self.capacity, 0)]:
            self._delete(self._adapters.pop(old).name)
        return self._adapters[version]

    def _load(self, lora: LoraFile, field: str) -> Adapter:
        self._check_family(lora, field)
        name = next(self._names)
        try:
            with _quiet_transformers():
                self.pipe.load_lora_weights(str(lora.path.parent), weight_name=lora.path.name, adapter_name=name,
                                            local_files_only=True)
        except Exception as error:  # the loaders raise many kinds; any but a server fault means a bad file
            self._delete(name)
            reraise_server_fault(error)
            raise RequestError(field, f"LoRA {lora.name!r} ({lora.path}) could not be loaded: "
                                      f"{describe_error(error)}") from None
        listed = self.pipe.get_list_adapters()
        components = tuple(c for c in self.components if name in listed.get(c, ()))
        if not components:
            self._delete(name)
            raise RequestError(field, f"LoRA {lora.name!r} ({lora.path}) has no layers this checkpoint has "
                                      "(a LoRA for another model family?)")
        return Adapter(name, components)

    def _check_family(self, lora: LoraFile, field: str) -> None:
        """Refuse a LoRA trained for another family: its UNet's cross-attention width, or its text encoders (kohya's
        lora_te_ for one, lora_te1_/lora_te2_ for two), differ from the checkpoint's."""
        width, text_encoders = lora_shape(lora.path)
        expected = self.pipe.unet.config.cross_attention_dim
        if width is not None and width != expected:
            family = _FAMILY_BY_CONTEXT.get(width, "another model family")
            raise RequestError(field, f"LoRA {lora.name!r} is for {family} (cross-attention width {width}); the "
                                      f"checkpoint is {self.family_name} (width {expected})")
        if text_encoders is not None and text_encoders != len(self.components) - 1:
            raise RequestError(field, f"LoRA {lora.name!r} changes {text_encoders} text encoder(s); the checkpoint "
                                      f"({self.family_name}) has {len(self.components) - 1}: a LoRA for another "
                                      "model family")

    def _delete(self, name: str) -> None:
        if any(name in names for names in self.pipe.get_list_adapters().values()):
            self.pipe.delete_adapters(name)


def lora_shape(path: Path) -> tuple[int | None, int | None]:
    """(the cross-attention width its UNet layers take, how many text encoders it changes) as far as its keys say
    (kohya and diffusers/PEFT layouts); None where they don't. Unreadable files: (None, None), the loader reports."""
    try:
        with safe_open(path, framework="pt") as weights:
            keys = list(weights.keys())
            to_k = next((key for key in keys if re.search(r"attn2[._]to_k\.(lora_down|lora_A)\.weight$", key)), None)
            width = weights.get_slice(to_k).get_shape()[1] if to_k else None
    except Exception:  # not safetensors: the loader's error says what is wrong
        return None, None
    if any(key.startswith(("lora_te2_", "text_encoder_2.", "lora_te1_")) for key in keys):
        return width, 2
    if any(key.startswith(("lora_te_", "text_encoder.")) for key in keys):
        return width, 1
    return width, None


def lora_hashes(applied: Iterable[tuple[LoraTag, LoraFile]]) -> str:
    """The infotext's `Lora hashes` value: "name: hash, ..." with the names as the prompt wrote them."""
    entries = {f"{tag.name.replace(':', '').replace(',', '')}: {lora.short_hash}": None for tag, lora in applied}
    return ", ".join(entries)


@contextmanager
def _quiet_transformers():
    """transformers reports every adapter load as a table of "missing" keys (the other adapters' and the
    base weights', which are not reinitialised) plus a progress bar: keep them out of the worker's logs."""
    from transformers.utils import logging as transformers_logging

    level, bar = transformers_logging.get_verbosity(), transformers_logging.is_progress_bar_enabled()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():  # and PEFT warns that a second adapter is a second adapter
            warnings.filterwarnings("ignore", "Already found a `peft_config`")
            yield
    finally:
        transformers_logging.set_verbosity(level)
        if bar:
            transformers_logging.enable_progress_bar()
