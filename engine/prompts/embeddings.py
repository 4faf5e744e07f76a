"""Textual-inversion embeddings from the models directory's embeddings/ folder, used as A1111 uses them.

An embedding is triggered by its file name (without extension) in a prompt: the prompt's CLIP tokens are
matched against the tokens of the name, so case does not matter ("easynegative" triggers EasyNegative.pt).
Its n vectors take n token positions of the 75-token chunk (moving whole to the next chunk when they
don't fit), carry the emphasis weight of the text around them, and stand in for token embeddings at the
text encoders' input: an SDXL embedding's `clip_l` vectors at CLIP-L's, its `clip_g` at OpenCLIP's. An
embedding that does not fit the checkpoint's text encoders (another family's) is listed as skipped, and
naming it in a prompt is an error (engine/tasks/job.py).

Files are read on first use and again after `refresh()`. Accepted layouts (as A1111 reads them):
A1111's training output {"string_to_param": {"*": (n, width)}, "step", "sd_checkpoint", ...} (.pt);
a single tensor under any key, e.g. {"emb_params": (n, width)} (.safetensors) or a diffusers concept
{"<token>": (width,)} (.bin); SDXL's {"clip_g", "clip_l"} (width 1280 + 768).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from ..store.models_dir import describe_error, list_files, sha256_of

EMBEDDINGS_SUBDIR = "embeddings"
SUFFIXES = (".safetensors", ".pt", ".bin")
MAX_VECTORS = 75  # one chunk's worth: a longer embedding could never be placed
SHORT_HASH = 12  # A1111's TI hashes: the first 12 hex digits of the file's sha256

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Embedding:
    name: str
    path: Path
    parts: dict[str, torch.Tensor]  # (n, width) float32 on the CPU, by text encoder ("clip_l", "clip_g"; "": any)
    short_hash: str
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None

    @property
    def width(self) -> int:
        """The vectors' widths together (A1111's `shape`: 2048 for SDXL's clip_l and clip_g)."""
        return sum(part.shape[-1] for part in self.parts.values())

    def __len__(self) -> int:
        return next(iter(self.parts.values())).shape[0]

    def part(self, key: str | None) -> torch.Tensor:
        """The vectors for the text encoder that takes `key` (None: the single tensor of a one-encoder embedding)."""
        return self.parts[key or ""]

    def fits(self, keys: tuple[str | None, ...]) -> bool:
        """Whether it has vectors for each of these text encoders, and for no other."""
        return set(self.parts) == {key or "" for key in keys}

    def listing(self) -> dict[str, Any]:
        """An item of A1111's /sdapi/v1/embeddings."""
        return {"step": self.step, "sd_checkpoint": self.sd_checkpoint, "sd_checkpoint_name": self.sd_checkpoint_name,
                "shape": self.width, "vectors": len(self)}


@dataclass(frozen=True)
class EmbeddingVector:
    """Vector `index` of an embedding, standing in a prompt chunk where a token id would."""

    embedding: Embedding
    index: int


def read_embedding(models_dir: Path, path: Path) -> Embedding:
    """One embedding file; ValueError (or the reader's error) when it is not one."""
    if path.suffix.lower() == ".safetensors":
        data = load_file(path)
    else:  # weights only: an embedding file must not run code when read
        data = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or not data:
        raise ValueError("not a dictionary of tensors")
    parts = {}
    for key, vectors in _parts(data).items():
        vectors = vectors.detach().to(torch.float32)
        if vectors.ndim == 1:
            vectors = vectors[None]
        if vectors.ndim != 2 or not 0 < len(vectors) <= MAX_VECTORS:
            raise ValueError(f"vectors of shape {tuple(vectors.shape)}; expected 1 to {MAX_VECTORS} vectors")
        parts[key] = vectors
    if len({len(vectors) for vectors in parts.values()}) > 1:
        raise ValueError("clip_l and clip_g hold different numbers of vectors")
    return Embedding(path.stem, path, parts, sha256_of(models_dir, path)[:SHORT_HASH], data.get("step"),
                     data.get("sd_checkpoint"), data.get("sd_checkpoint_name"))


def _parts(data: dict) -> dict[str, torch.Tensor]:
    if "string_to_param" in data:
        params = data["string_to_param"]
        params = getattr(params, "_parameters", params)  # a pickled ParameterDict
        if len(params) != 1:
            raise ValueError("holds several embeddings")
        return {"": next(iter(params.values()))}
    if "clip_g" in data and "clip_l" in data:
        return {"clip_l": data["clip_l"], "clip_g": data["clip_g"]}
    tensors = [value for value in data.values() if isinstance(value, torch.Tensor)]
    if len(data) != 1 or len(tensors) != 1:
        raise ValueError("neither an A1111 textual-inversion embedding nor a single-tensor (diffusers) one")
    return {"": tensors[0]}


def read_embeddings(models_dir: Path) -> dict[str, Embedding]:
    """The embeddings in models_dir/embeddings by name (the first file of a name wins); files that are
    not embeddings are logged and left out."""
    found: dict[str, Embedding] = {}
    for path in list_files(models_dir, EMBEDDINGS_SUBDIR, SUFFIXES):
        if path.stem in found or not path.stat().st_size:
            continue
        try:
            found[path.stem] = read_embedding(models_dir, path)
        except Exception as error:  # torch.load and safetensors raise several kinds for foreign files
            log.warning("embedding %s left out: %s", path, describe_error(error))
    return found


class ForeignEmbedding(ValueError):
    """A prompt names an embedding made for another model family's text encoders."""

    def __init__(self, embedding: Embedding, width: int):
        widths = " + ".join(f"{key or 'vectors'} {part.shape[-1]}" for key, part in embedding.parts.items())
        super().__init__(f"embedding {embedding.name!r} ({widths} wide) is for another model family: this "
                         f"checkpoint's text encoders take {width}-wide vectors")


class Lookup:
    """Embeddings found by the CLIP tokens of their names; those that don't fit a model's text encoders (their keys
    and widths) are found too, so that naming one is an error rather than plain text."""

    def __init__(self, embeddings: Iterable[Embedding], tokenizer, width: int, keys: tuple[str | None, ...]):
        self.width, self.keys = width, keys
        self._by_first: dict[int, list[tuple[list[int], Embedding]]] = {}
        for embedding in embeddings:
            ids = tokenizer(embedding.name, add_special_tokens=False).input_ids
            if ids:
                self._by_first.setdefault(ids[0], []).append((ids, embedding))
        for candidates in self._by_first.values():
            candidates.sort(key=lambda candidate: len(candidate[0]), reverse=True)  # the longest name wins

    def find(self, tokens: list[int], position: int) -> tuple[Embedding, int] | None:
        """The embedding whose name's tokens start at `position`, and how many tokens the name has; ForeignEmbedding
        for one that doesn't fit."""
        for ids, embedding in self._by_first.get(tokens[position], ()):
            if tokens[position:position + len(ids)] == ids:
                if embedding.width != self.width or not embedding.fits(self.keys):
                    raise ForeignEmbedding(embedding, self.width)
                return embedding, len(ids)
        return None


class Embeddings:
    """The models directory's embeddings (none without one), read on first use; `version` counts refreshes,
    so that encodings cached before a refresh are not reused."""

    def __init__(self, models_dir: Path | None = None):
        self.models_dir = models_dir
        self.version = 0
        self._all: dict[str, Embedding] | None = None
        self._lookups: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> Lookup

    @property
    def all(self) -> dict[str, Embedding]:
        if self._all is None:
            self._all = read_embeddings(self.models_dir) if self.models_dir else {}
        return self._all

    def refresh(self) -> None:
        self._all = None
        self._lookups.clear()
        self.version += 1

    def lookup(self, tokenizer, width: int, keys: tuple[str | None, ...] = (None,)) -> Lookup:
        lookup = self._lookups.get(tokenizer)
        if lookup is None or (lookup.width, lookup.keys) != (width, keys):
            lookup = self._lookups[tokenizer] = Lookup(self.all.values(), tokenizer, width, keys)
        return lookup

    def listing(self, width: int, keys: tuple[str | None, ...] = (None,)) -> dict[str, dict[str, dict[str, Any]]]:
        """A1111's /sdapi/v1/embeddings for text encoders of `width` taking `keys`: loaded and skipped, by name."""
        ordered = sorted(self.all.values(), key=lambda e: e.name.lower())
        fits = {e.name: e.width == width and e.fits(keys) for e in ordered}
        return {"loaded": {e.name: e.listing() for e in ordered if fits[e.name]},
                "skipped": {e.name: e.listing() for e in ordered if not fits[e.name]}}


def ti_hashes(embeddings: Iterable[Embedding]) -> str:
    """The infotext's `TI hashes` value: "name: short hash, ..." (A1111 drops , and : from names)."""
    return ", ".join(f"{e.name.replace(':', '').replace(',', '')}: {e.short_hash}" for e in embeddings)


@contextmanager
def vectors_at(token_embedding: torch.nn.Module, vectors: dict[int, torch.Tensor]) -> Iterator[None]:
    """While active, `token_embedding`'s output (a batch of one) holds vectors[i] at sequence position i."""
    if not vectors:
        yield
        return
    positions = list(vectors)
    stacked = torch.stack(list(vectors.values()))

    def substitute(module, inputs, output):
        output = output.clone()
        output[0, positions] = stacked.to(output.device, output.dtype)
        return output

    handle = token_embedding.register_forward_hook(substitute)
    try:
        yield
    finally:
        handle.remove()
