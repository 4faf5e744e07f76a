"""Fill a models directory from a manifest, at image build time: `python -m engine.store.bake`.

    python -m engine.store.bake --manifest models.toml --models-dir /models

The manifest lists models by kind, each with a source and optionally its sha256 and file name:

    [[checkpoints]]
    source = "hf://stable-diffusion-v1-5/stable-diffusion-v1-5/v1-5-pruned-emaonly.safetensors"
    sha256 = "6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa"

    [[checkpoints]]
    source = "https://civitai.com/api/download/models/128713"   # resumable; token from token_env
    name = "dreamshaper_8.safetensors"
    token_env = "CIVITAI_TOKEN"

    [[styles]]                                                   # A1111's prompt styles, as styles.csv
    source = "config/styles.csv"
    [[interrogate]]
    source = "hf://Salesforce/blip-image-captioning-base"   # /interrogate's BLIP captioner: BLIP/<repo name>/
    [[controlnet]]                                               # sd-webui-controlnet's models: ControlNet/
    source = "hf://xinsir/controlnet-canny-sdxl-1.0/diffusion_pytorch_model.safetensors"
    name = "controlnet-canny-sdxl-1.0.safetensors"              # listed by its file name, as the extension does
    [[controlnet_annotators]]                                    # the preprocessors' networks: ControlNetAnnotators/
    source = "hf://lllyasviel/Annotators/ControlNetHED.pth"      # one file, keeping its name, into the folder
    name = "hed"                                                 # `name` (the module's: controlnet/annotators.py)
    [[controlnet_annotators]]
    source = "hf://Intel/dpt-hybrid-midas"                       # a transformers repo: the folder `name` itself
    name = "midas"

Sources: `hf://owner/repo/path/file` (one file), `hf://owner/repo` (a diffusers repo: configs and
weights only, fp16 weights where the repo has them; for [[interrogate]] and [[controlnet_annotators]], a
transformers repo: configs, tokenizer and safetensors weights), `http(s)://` URLs, and local paths. Files land in
A1111's folders; a sha256 mismatch is an error that keeps no file; a re-run skips what is present.
Each file's sha256 is recorded in hashes.json (for LoRAs also their "addnet" hash, the one A1111's
infotext uses), so the worker never hashes weights at start.
Single-file checkpoints are also converted into the form that loads fastest (engine/store/converted.py),
unless a current conversion is there already.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from .models_dir import CHECKPOINTS_SUBDIR, HASHES_FILE, STYLES_FILE, Checkpoint, file_addnet_hash, sha256_of

FOLDERS = {"checkpoints": CHECKPOINTS_SUBDIR, "loras": "Lora", "embeddings": "embeddings", "vaes": "VAE",
           "upscalers": "ESRGAN",  # an upscaler entry may name its A1111 folder (RealESRGAN, SwinIR, ...)
           "face_restoration": "GFPGAN",  # or Codeformer/, FaceDetection/ (engine/postprocess/face_restoration.py)
           "interrogate": "BLIP",  # a transformers folder (engine/postprocess/interrogate.py)
           "controlnet": "ControlNet",  # one file each (engine/controlnet/models.py)
           "controlnet_annotators": "ControlNetAnnotators",  # <name>/ each (engine/controlnet/annotators.py)
           "styles": ""}  # the models directory itself
SINGLE_FILES = {"styles": STYLES_FILE}  # kinds that are one file of a fixed name: one entry at most
FILES_ONLY = {"controlnet"}  # kinds the worker reads only as files: an hf:// source names a file, not a repo
TRANSFORMERS_REPOS = {"interrogate", "controlnet_annotators"}  # kinds whose hf://owner/repo is a transformers one
IN_NAMED_FOLDER = {"controlnet_annotators"}  # kinds whose `name` is a folder: a file source keeps its name in it
CHUNK = 1 << 20
_DIFFUSERS_FILES = ("model_index.json", "*/config.json", "*/*.txt", "*/*.json")  # configs, tokenizer, scheduler
_TRANSFORMERS_FILES = ("*.json", "*.txt")  # configs, tokenizer, processor


class BakeError(RuntimeError):
    """A manifest entry could not be baked; the message names it and the cause."""


@dataclass(frozen=True)
class Entry:
    kind: str
    source: str
    name: str
    sha256: str | None = None
    folder: str | None = None
    token_env: str | None = None

    @property
    def relative_path(self) -> str:
        return PurePosixPath(self.folder or FOLDERS[self.kind], self.name).as_posix()


def read_manifest(path: Path) -> list[Entry]:
    data = tomllib.loads(path.read_text())
    unknown = set(data) - set(FOLDERS)
    if unknown:
        raise BakeError(f"{path}: unknown sections {sorted(unknown)}; known: {', '.join(FOLDERS)}")
    entries = []
    for kind, items in data.items():
        if kind in SINGLE_FILES and len(items) > 1:
            raise BakeError(f"{path}: [[{kind}]] takes one entry (the worker reads one {SINGLE_FILES[kind]})")
        for item in items:
            if "source" not in item:
                raise BakeError(f"{path}: a [[{kind}]] entry has no source")
            if kind in FILES_ONLY and _is_hf_repo(item["source"]):
                raise BakeError(f"{path}: a [[{kind}]] entry is one file (hf://owner/repo/path/file), not a repo: "
                                f"{item['source']}")
            name = SINGLE_FILES.get(kind) or item.get("name") or _default_name(item["source"])
            folder = item.get("folder")
            if kind in IN_NAMED_FOLDER:
                if not item.get("name"):
                    raise BakeError(f"{path}: a [[{kind}]] entry names its folder (name = \"hed\", ...): "
                                    f"{item['source']}")
                if not _is_hf_repo(item["source"]):
                    name, folder = _default_name(item["source"]), f"{FOLDERS[kind]}/{item['name']}"
            entries.append(Entry(kind, item["source"], name, (item.get("sha256") or "").lower() or None,
                                 folder, item.get("token_env")))
    return entries


def _is_hf_repo(source: str) -> bool:
    return source.startswith("hf://") and source.count("/") == 3


def _default_name(source: str) -> str:
    return Path(urlparse(source).path).name or Path(source).name


def bake(entries: list[Entry], models_dir: Path, convert: bool = True) -> None:
    hashes_path = models_dir / HASHES_FILE
    hashes = json.loads(hashes_path.read_text()) if hashes_path.is_file() else {}
    for entry in entries:
        target = models_dir / entry.relative_path
        if target.exists() and _present(entry, target, hashes.get(entry.relative_path)):
            print(f"present: {entry.relative_path}")
            continue
        print(f"baking: {entry.relative_path} from {entry.source}")
        target.parent.mkdir(parents=True, exist_ok=True)
        if entry.source.startswith("hf://") and entry.source.count("/") == 3:
            bake_repo = _bake_transformers_repo if entry.kind in TRANSFORMERS_REPOS else _bake_diffusers_repo
            sha256 = bake_repo(entry.source.removeprefix("hf://"), target)
        else:
            sha256 = _write_verified(entry, target)
        hashes[entry.relative_path] = {"sha256": sha256, "size": target.stat().st_size if target.is_file() else None}
        if entry.kind == "loras" and target.name.endswith(".safetensors"):  # the hash A1111's infotext gives LoRAs
            hashes[entry.relative_path]["addnet"] = file_addnet_hash(target)
        hashes_path.write_text(json.dumps(hashes, indent=2, sort_keys=True))
    checkpoints = models_dir / CHECKPOINTS_SUBDIR
    for entry in entries if convert else []:
        target = models_dir / entry.relative_path
        if entry.kind == "checkpoints" and target.is_file() and target.is_relative_to(checkpoints):
            _convert(Checkpoint(target, target.relative_to(checkpoints).as_posix()))


def _present(entry: Entry, target: Path, recorded: dict | None) -> bool:
    if entry.sha256 is None:
        return True
    return bool(recorded) and recorded.get("sha256") == entry.sha256


def _open_source(entry: Entry, offset: int) -> tuple[Iterator[bytes], int]:
    """The source's bytes from `offset` where it can resume (HTTP ranges), else from the start."""
    if urlparse(entry.source).scheme in ("http", "https"):
        return _download(entry, offset)
    if entry.source.startswith("hf://"):
        return _read_file(_hf_file(entry.source.removeprefix("hf://"))), 0
    return _read_file(Path(entry.source.removeprefix("file://"))), 0


def _read_file(path: Path) -> Iterator[bytes]:
    if not path.is_file():
        raise BakeError(f"{path}: no such file")
    with path.open("rb") as stream:
        while chunk := stream.read(CHUNK):
            yield chunk


def _download(entry: Entry, offset: int) -> tuple[Iterator[bytes], int]:
    import requests

    headers = {"Range": f"bytes={offset}-"} if offset else {}
    token = os.environ.get(entry.token_env or "")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        response = requests.get(entry.source, headers=headers, stream=True, timeout=60)
        response.raise_for_status()
    except requests.RequestException as error:
        message = str(error).replace(token, "***") if token else str(error)
        raise BakeError(f"{entry.relative_path}: download from {urlparse(entry.source).netloc} failed: {message}") \
            from None
    resumed = offset if response.status_code == 206 else 0
    return _progress(response, entry.name, resumed), resumed


def _progress(response, name: str, start: int) -> Iterator[bytes]:
    from tqdm import tqdm

    total = int(response.headers.get("content-length", 0)) + start or None
    with response, tqdm(total=total, initial=start, unit="B", unit_scale=True, desc=name, file=sys.stderr) as bar:
        for chunk in response.iter_content(CHUNK):
            bar.update(len(chunk))
            yield chunk


def _write_verified(entry: Entry, target: Path) -> str:
    """Download or copy into `.<name>.part` beside the target (resuming what a broken run left), check
    the sha256, then move it into place. A mismatch deletes the part: nothing is kept."""
    part = target.with_name(f".{target.name}.part")
    offset = part.stat().st_size if part.is_file() else 0
    chunks, offset = _open_source(entry, offset)
    digest = hashlib.sha256()
    if offset:
        for chunk in _read_file(part):
            digest.update(chunk)
    with part.open("ab" if offset else "wb") as stream:
        for chunk in chunks:
            digest.update(chunk)
            stream.write(chunk)
    sha256 = digest.hexdigest()
    if entry.sha256 and sha256 != entry.sha256:
        part.unlink()
        raise BakeError(f"{entry.relative_path}: sha256 mismatch: expected {entry.sha256}, got {sha256}; "
                        "nothing was kept")
    os.replace(part, target)
    return sha256


def _hf_file(spec: str) -> Path:
    """hf://owner/repo/path/in/repo: one file through huggingface_hub's cache."""
    from huggingface_hub import hf_hub_download

    owner, repo, filename = spec.split("/", 2)
    return Path(hf_hub_download(f"{owner}/{repo}", filename))


def _bake_diffusers_repo(repo_id: str, target: Path) -> str:
    """A diffusers repo's configs and weights (fp16 where offered, renamed so they load by default); returns
    the folder's hash."""
    from huggingface_hub import HfApi

    def rename_fp16(staging: Path) -> None:
        for weight in staging.glob("*/*.fp16.safetensors"):
            weight.rename(weight.with_name(weight.name.replace(".fp16.safetensors", ".safetensors")))

    files = HfApi().list_repo_files(repo_id)
    fp16 = any(f.endswith(".fp16.safetensors") for f in files)
    weights = ["*/*.fp16.safetensors"] if fp16 else ["*/*.safetensors"]
    return _bake_snapshot(repo_id, target, [*_DIFFUSERS_FILES, *weights], rename_fp16,
                          ignore=["*.ema.*", "*.non_ema.*", "safety_checker/*", "feature_extractor/*"])


def _bake_transformers_repo(repo_id: str, target: Path) -> str:
    """A transformers repo (a model with its processor) in save_pretrained layout: its safetensors weights where
    it has them, else its PyTorch .bin ones (never the TF or Flax copies); returns the folder's hash."""
    from huggingface_hub import HfApi

    safetensors = any(f.endswith(".safetensors") for f in HfApi().list_repo_files(repo_id))
    return _bake_snapshot(repo_id, target, [*_TRANSFORMERS_FILES, "*.safetensors" if safetensors else "*.bin"])


def _bake_snapshot(repo_id: str, target: Path, allow: list[str], prepare: Callable[[Path], None] | None = None,
                   ignore: list[str] = ()) -> str:
    """The repo's files matching `allow` and not `ignore`, downloaded beside `target`, `prepare`d, then moved in
    place of it. Returns the folder's hash, as the worker computes it for diffusers folders."""
    from huggingface_hub import snapshot_download

    with tempfile.TemporaryDirectory(dir=target.parent) as staging:
        snapshot_download(repo_id, local_dir=staging, allow_patterns=allow, ignore_patterns=list(ignore) or None)
        if prepare:
            prepare(Path(staging))
        shutil.rmtree(Path(staging) / ".cache", ignore_errors=True)
        shutil.rmtree(target, ignore_errors=True)
        shutil.move(staging, target)
    return sha256_of(target.parent.parent, target)


def _convert(checkpoint: Checkpoint) -> None:
    """Write the checkpoint's converted form unless a current one is there; a file the worker can't
    load as a Stable Diffusion checkpoint is left unconverted (the worker reports it at start)."""
    import torch
    from safetensors import SafetensorError

    from .converted import usable_conversion, write_conversion
    from ..families import UnsupportedCheckpoint
    from .loading import detect_architecture, load_single_file, stored_dtype

    if usable_conversion(checkpoint):
        print(f"converted already: {checkpoint.name}")
        return
    print(f"converting: {checkpoint.name}")
    try:
        dtype = stored_dtype(checkpoint)
    except SafetensorError as error:
        print(f"not converted: {checkpoint.name}: not a safetensors file ({error})")
        return
    try:
        pipe = load_single_file(checkpoint, detect_architecture(checkpoint), torch.device("cpu"),
                                dtype or torch.float32)
    except UnsupportedCheckpoint as error:
        print(f"not converted: {error}")
        return
    print(f"converted: {checkpoint.name} -> {write_conversion(checkpoint, pipe)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m engine.store.bake", description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--models-dir", type=Path, default=Path(os.environ.get("MODELS_DIR", "models")))
    parser.add_argument("--no-convert", dest="convert", action="store_false",
                        help="fetch only; a later run without it converts (the Dockerfile's two bake stages)")
    args = parser.parse_args(argv)
    try:
        bake(read_manifest(args.manifest), args.models_dir, args.convert)
    except (BakeError, OSError, tomllib.TOMLDecodeError) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
