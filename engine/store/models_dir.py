"""The models directory, in A1111's layout: checkpoints under Stable-diffusion/.

A checkpoint is a single .safetensors file (as A1111 and civitai ship them) or a diffusers folder
(one holding model_index.json). Names, titles and hashes follow A1111: `name` is the path relative to
Stable-diffusion/, `model_name` that path without extension, `title` "name [short hash]", and the
short hash is the first 10 hex digits of the file's sha256. Hashes recorded at build time by
`python -m engine.store.bake` (hashes.json) are used as they are, so start-up never reads gigabytes to hash.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path, PurePosixPath

CHECKPOINTS_SUBDIR = "Stable-diffusion"
CHECKPOINT_SUFFIX = ".safetensors"
VAE_BESIDE_CHECKPOINT = ".vae" + CHECKPOINT_SUFFIX  # a VAE file beside the checkpoints (engine/store/vae.py), not one
STYLES_FILE = "styles.csv"  # A1111's prompt styles (engine/prompts/styles.py)
HASHES_FILE = "hashes.json"  # {path relative to the models dir: {"sha256": ..., "size": bytes[, "addnet": ...]}}


class ModelsDirError(RuntimeError):
    """The models directory can't provide a checkpoint; the message says what to put where."""


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    name: str

    @property
    def model_name(self) -> str:
        stem = self.name.removesuffix(CHECKPOINT_SUFFIX)
        return stem.replace("/", "_").replace("\\", "_")

    @property
    def is_single_file(self) -> bool:
        return self.path.is_file()

    @property
    def models_dir(self) -> Path:
        return self.path.parents[len(PurePosixPath(self.name).parts)]

    @property
    def sha256(self) -> str:
        """sha256 of the file; for a diffusers folder, of its files' relative paths and bytes in order.

        A hash baked into hashes.json is trusted while the file keeps its recorded size.
        """
        return sha256_of(self.models_dir, self.path)

    @property
    def short_hash(self) -> str:
        return self.sha256[:10]

    @property
    def title(self) -> str:
        return f"{self.name} [{self.short_hash}]"

    @property
    def short_title(self) -> str:
        """A1111's "name [hash]" (the file's stem), as the infotext names a second checkpoint."""
        return f"{PurePosixPath(self.name).stem} [{self.short_hash}]"

    def matches(self, wanted: str) -> bool:
        """A1111 accepts a title, a name, a model name or a short hash wherever a checkpoint is named."""
        wanted = wanted.strip()
        without_hash = wanted.rsplit(" [", 1)[0] if wanted.endswith("]") else wanted
        if without_hash in (self.name, self.model_name, self.name.removesuffix(CHECKPOINT_SUFFIX)):
            return not wanted.endswith("]") or wanted == self.title
        return _looks_like_short_hash(wanted) and wanted == self.short_hash  # hash only when asked by hash


def sha256_of(models_dir: Path, path: Path) -> str:
    """sha256 of a file (or a folder's files) in the models directory: the one baked into hashes.json
    while the file keeps its recorded size, else computed once per file version."""
    stat = path.stat()
    baked = read_baked_hashes(models_dir).get(path.relative_to(models_dir).as_posix(), {})
    if baked.get("sha256") and (not path.is_file() or baked.get("size") == stat.st_size):
        return baked["sha256"]
    return _sha256(path, stat.st_size, stat.st_mtime_ns)


def describe_error(error: Exception) -> str:
    """The first line of a loader's error (torch.load and diffusers explain at length), for one-line messages."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
def addnet_hash(models_dir: Path, path: Path) -> str:
    """sha256 of a safetensors file's bytes after its header: the LoRA hash of kohya's scripts and A1111
    ("addnet"). One baked into hashes.json as "addnet" is trusted while the file keeps its recorded size."""
    stat = path.stat()
    baked = read_baked_hashes(models_dir).get(path.relative_to(models_dir).as_posix(), {})
    if baked.get("addnet") and baked.get("size") == stat.st_size:
        return baked["addnet"]
    return file_addnet_hash(path)


def file_addnet_hash(path: Path) -> str:
    """The addnet hash computed from the file, once per file version."""
    stat = path.stat()
    return _addnet_hash(path, stat.st_size, stat.st_mtime_ns)


def list_files(models_dir: Path, subdir: str, suffixes: tuple[str, ...]) -> list[Path]:
    """Files with one of `suffixes` under models_dir/subdir (recursively), sorted case-insensitively."""
    root = models_dir / subdir
    if not root.is_dir():
        return []
    return sorted((p for p in root.rglob("*") if p.is_file() and p.name.lower().endswith(suffixes)),
                  key=lambda p: p.relative_to(root).as_posix().lower())


def read_baked_hashes(models_dir: Path) -> dict[str, dict]:
    path = models_dir / HASHES_FILE
    return _read_json(path, path.stat().st_mtime_ns) if path.is_file() else {}


@lru_cache(maxsize=8)
def _read_json(path: Path, mtime_ns: int) -> dict:
    return json.loads(path.read_text())


@lru_cache(maxsize=None)
def _sha256(path: Path, size: int, mtime_ns: int) -> str:
    """Computed once per file version (size and mtime are part of the cache key)."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if file != path:
            digest.update(file.relative_to(path).as_posix().encode())
        with file.open("rb") as stream:
            while chunk := stream.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


@lru_cache(maxsize=None)
def _addnet_hash(path: Path, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        header_length = int.from_bytes(stream.read(8), "little")
        stream.seek(8 + header_length)
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _looks_like_short_hash(text: str) -> bool:
    return len(text) == 10 and all(c in "0123456789abcdef" for c in text)


def list_checkpoints(models_dir: Path) -> list[Checkpoint]:
    """Checkpoints under models_dir/Stable-diffusion, sorted by name."""
    root = models_dir / CHECKPOINTS_SUBDIR
    if not root.is_dir():
        return []
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if (here / "model_index.json").is_file() and here != root:
            found.append(Checkpoint(here, here.relative_to(root).as_posix()))
            dirnames.clear()  # a diffusers folder's subfolders are its components
            continue
        found += [Checkpoint(here / f, (here / f).relative_to(root).as_posix())
                  for f in filenames if f.endswith(CHECKPOINT_SUFFIX) and not f.endswith(VAE_BESIDE_CHECKPOINT)]
        dirnames.sort()
    return sorted(found, key=lambda c: c.name.lower())


def find_checkpoint(checkpoints: list[Checkpoint], wanted: str) -> Checkpoint:
    for checkpoint in checkpoints:
        if checkpoint.matches(wanted):
            return checkpoint
    names = ", ".join(c.name for c in checkpoints) or "none"
    raise LookupError(f"no checkpoint {wanted!r} in the models directory; available: {names}")


def default_checkpoint(models_dir: Path, wanted: str | None = None) -> Checkpoint:
    """The checkpoint to load at start: `wanted` (SD_MODEL) if given, else the first found."""
    checkpoints = list_checkpoints(models_dir)
    if not checkpoints:
        raise ModelsDirError(
            f"no checkpoint found in {(models_dir / CHECKPOINTS_SUBDIR).resolve()}: put a Stable Diffusion "
            f"checkpoint there as a single '{CHECKPOINT_SUFFIX}' file or a diffusers folder (with "
            "model_index.json), or set MODELS_DIR to a directory that has them; "
            "`python -m engine.tiny --models-dir DIR` writes a tiny demo model"
        )
    if not wanted:
        return checkpoints[0]
    try:
        return find_checkpoint(checkpoints, wanted)
    except LookupError as error:
        raise ModelsDirError(
            f"SD_MODEL: {error}; checkpoints are read from {(models_dir / CHECKPOINTS_SUBDIR).resolve()}"
        ) from None
