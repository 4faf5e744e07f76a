"""Upscalers by A1111 name: latent-space modes (hires fix) and pixel-space upscalers.

Pixel-space upscalers are the built-in None, Lanczos and Nearest, and neural networks from weight
files in the models directory's A1111 folders (ESRGAN/, RealESRGAN/, SwinIR/, DAT/, ...). Spandrel
detects each file's architecture; a network is loaded on first use and kept. Networks run in tiles
(with context around each, cropped away) so memory stays bounded, then Lanczos gives the exact size.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from schemas import RequestError
from schemas.errors import quoted

from ..faults import reraise_server_fault
from ..store.models_dir import list_files
from ..settings import DEFAULT_UPSCALE_TILE, SettingsError

if TYPE_CHECKING:
    from spandrel import ImageModelDescriptor

# A1111 latent upscale mode -> (torch interpolation mode, antialias)
LATENT_MODES: dict[str, tuple[str, bool]] = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}

PixelUpscaler = Callable[[Image.Image, int, int], Image.Image]


def _lanczos(image: Image.Image, width: int, height: int) -> Image.Image:
    return image.resize((width, height), Image.Resampling.LANCZOS)


def _nearest(image: Image.Image, width: int, height: int) -> Image.Image:
    return image.resize((width, height), Image.Resampling.NEAREST)


# "None" is A1111's plain resize, which is Lanczos
PIXEL_UPSCALERS: dict[str, PixelUpscaler] = {"None": _lanczos, "Lanczos": _lanczos, "Nearest": _nearest}

REALESRGAN_FOLDER = "RealESRGAN"
# A1111's upscaler folders: folder -> (the model_name its /upscalers listing shows, {file name: (A1111's name,
# scale)}). Other weight files are named by their stem, with scale 4, as A1111 lists them.
FOLDERS: dict[str, tuple[str | None, dict[str, tuple[str, int]]]] = {
    "ESRGAN": ("ESRGAN_4x", {}),
    REALESRGAN_FOLDER: (None, {
        "RealESRGAN_x4plus.pth": ("R-ESRGAN 4x+", 4),
        "RealESRGAN_x4plus_anime_6B.pth": ("R-ESRGAN 4x+ Anime6B", 4),
        "RealESRGAN_x2plus.pth": ("R-ESRGAN 2x+", 2),
        "realesr-general-x4v3.pth": ("R-ESRGAN General 4xV3", 4),
        "realesr-general-wdn-x4v3.pth": ("R-ESRGAN General WDN 4xV3", 4),
        "realesr-animevideov3.pth": ("R-ESRGAN AnimeVideo", 4),
    }),
    "SwinIR": ("SwinIR 4x", {
        "003_realSR_BSRGAN_DFOWMFC_s64w8_SwinIR-L_x4_GAN.pth": ("SwinIR 4x", 4),
        "SwinIR_4x.pth": ("SwinIR 4x", 4),
    }),
    "DAT": (None, {"DAT_x2.pth": ("DAT x2", 2), "DAT_x3.pth": ("DAT x3", 3), "DAT_x4.pth": ("DAT x4", 4)}),
    "HAT": (None, {}),
    "ScuNET": ("ScuNET GAN", {
        "scunet_color_real_gan.pth": ("ScuNET GAN", 1),
        "scunet_color_real_psnr.pth": ("ScuNET PSNR", 1),
    }),
}
WEIGHT_SUFFIXES = (".pth", ".pt", ".safetensors")
DEFAULT_SCALE = 4
TILE_CONTEXT = 16  # pixels of context around each tile, cropped from its output
MAX_PASSES = 3  # a network runs again while the image is still smaller than the target (as A1111)


def upscale_latents(latents: torch.Tensor, mode: str, height: int, width: int) -> torch.Tensor:
    interpolation, antialias = LATENT_MODES[mode]
    return F.interpolate(latents, size=(height, width), mode=interpolation, antialias=antialias)




@dataclass(frozen=True)
class WeightFile:
    name: str
    path: Path
    scale: int
    model_name: str | None
    folder: str


def scan(models_dir: Path) -> dict[str, WeightFile]:
    """The upscaler weight files in the models directory, by A1111 name (the first file of a name wins)."""
    found: dict[str, WeightFile] = {}
    for folder, (model_name, known) in FOLDERS.items():
        for path in list_files(models_dir, folder, WEIGHT_SUFFIXES):
            name, scale = known.get(path.name, (path.stem, DEFAULT_SCALE))
            found.setdefault(name, WeightFile(name, path, scale, model_name, folder))
    return found


class Upscalers:
    """The pixel-space upscalers a worker offers. Weight files are found at start; a network is loaded
    (onto the engine's device, in its dtype where the architecture supports it) on first use and kept."""

    def __init__(self, models_dir: Path, device: torch.device, dtype: torch.dtype, tile: int = DEFAULT_UPSCALE_TILE):
        """`tile`: WORKER_UPSCALE_TILE (engine/settings.py), 0 or at least 4 x TILE_CONTEXT."""
        if tile and tile < 4 * TILE_CONTEXT:
            raise SettingsError(f"WORKER_UPSCALE_TILE must be 0 (no tiling) or at least {4 * TILE_CONTEXT} "
                                f"(got {tile})")
        self.models_dir, self.device, self.dtype, self.tile = models_dir, device, dtype, tile
        self.files = scan(models_dir)
        self._networks: dict[Path, Network] = {}

    @property
    def names(self) -> list[str]:
        """Built-in first, then the others by name, as A1111 orders them."""
        return [*PIXEL_UPSCALERS, *sorted(self.files, key=str.lower)]

    def listing(self) -> list[dict[str, Any]]:
        """Items of A1111's /sdapi/v1/upscalers."""
        items = []
        for name in self.names:
            file = self.files.get(name)
            items.append({"name": name, "model_name": file.model_name if file else None,
                          "model_path": str(file.path) if file else None, "model_url": None,
                          "scale": file.scale if file else DEFAULT_SCALE})
        return items

    def realesrgan_listing(self) -> list[dict[str, Any]]:
        """Items of A1111's /sdapi/v1/realesrgan-models: the files in RealESRGAN/, by name."""
        return [{"name": file.name, "path": str(file.path), "scale": file.scale}
                for file in sorted(self.files.values(), key=lambda file: file.name.lower())
                if file.folder == REALESRGAN_FOLDER]

    def find(self, name: str, field: str, also: Iterable[str] = ()) -> PixelUpscaler:
        """The upscaler called `name`, loaded; `also`: other names valid in `field`, for the error."""
        if name in PIXEL_UPSCALERS:
            return PIXEL_UPSCALERS[name]
        if name not in self.files:
            self.files = scan(self.models_dir)  # files may have been added
        if name not in self.files:
            raise RequestError(field, f"unknown upscaler {quoted(name)}; available: {', '.join([*also, *self.names])}")
        path = self.files[name].path
        if path not in self._networks:
            self._networks[path] = Network(_load(path, name, field, self.device, self.dtype), self.tile)
        return self._networks[path]

    def unload(self) -> None:
        self._networks.clear()


def load_descriptor(path: Path, label: str, field: str, device: torch.device,
                    extra_architectures: bool = False) -> ImageModelDescriptor:
    """A weight file through spandrel's architecture detection (with spandrel_extra_arches' architectures
    if asked); `label` ("upscaler 'X'") names it in errors, which are the caller's (`field`)."""
    try:
        spandrel = _import_spandrel()
        registry = spandrel.MAIN_REGISTRY
        if extra_architectures:
            registry = registry.copy()
            registry.add(*importlib.import_module("spandrel_extra_arches").EXTRA_REGISTRY)
    except ImportError as error:
        extra = "faces" if extra_architectures else "upscalers"
        raise RequestError(field, f"{label} needs the {error.name} package, which is not installed "
                                  f"({error}); install a1111-worker[{extra}]") from None
    try:
        descriptor = spandrel.ModelLoader(device, registry).load_from_file(path)
    except Exception as error:  # spandrel raises several kinds for files it can't read or recognise
        reraise_server_fault(error)
        raise RequestError(field, f"{label} ({path.name}) can't be loaded: {error}") from None
    if not isinstance(descriptor, spandrel.ImageModelDescriptor):
        raise RequestError(field, f"{label} ({path.name}) is a {descriptor.architecture.name} model, not an "
                                  "image-to-image network")
    return descriptor


def _load(path: Path, name: str, field: str, device: torch.device, dtype: torch.dtype) -> ImageModelDescriptor:
    descriptor = load_descriptor(path, f"upscaler {name!r}", field, device)
    if descriptor.purpose not in ("SR", "Restoration") \
            or descriptor.input_channels != 3 or descriptor.output_channels != 3:
        raise RequestError(field, f"upscaler {name!r} ({path.name}) is a {descriptor.architecture.name} "
                                  f"{descriptor.purpose} model, not an RGB upscaler")
    supported = {torch.float16: descriptor.supports_half, torch.bfloat16: descriptor.supports_bfloat16}
    return descriptor.to(dtype if supported.get(dtype, True) else torch.float32).eval()


def _import_spandrel() -> ModuleType:
    """spandrel, imported on first use (start-up stays fast). It imports torchvision for two architectures
    that upscaling never uses (LaMa, RestoreFormer); PyPI has no CPU build of torchvision, so where none is
    installed, stand-ins for those names (failing if called) are there while spandrel is imported."""
    stand_ins: dict[str, ModuleType] = {}
    if importlib.util.find_spec("torchvision") is None:
        stand_ins = {name: ModuleType(name) for name in
                     ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")}
        functional = stand_ins["torchvision.transforms.functional"]
        functional.InterpolationMode = functional.rotate = functional.normalize = _no_torchvision
    sys.modules.update(stand_ins)
    try:
        return importlib.import_module("spandrel")
    finally:
        for stand_in in stand_ins:
            del sys.modules[stand_in]


def _no_torchvision(*args: Any, **kwargs: Any) -> None:
    raise RuntimeError("torchvision is not installed")


class Network:
    """A neural upscaler: a spandrel ImageModelDescriptor run in tiles of `tile` pixels (0: whole)."""

    def __init__(self, descriptor: ImageModelDescriptor, tile: int):
        self.descriptor, self.tile = descriptor, tile

    @property
    def scale(self) -> int:
        return self.descriptor.scale

    def __call__(self, image: Image.Image, width: int, height: int) -> Image.Image:
        """Run the network until the image covers width x height (at most MAX_PASSES times; a target the
        same size as the image runs it once), then Lanczos to exactly that size, as A1111 does."""
        for done in range(MAX_PASSES):
            if image.width >= width and image.height >= height and (done or image.size != (width, height)):
                break
            before = image.size
            image = self.run(image)
            if image.size == before:
                break
        return image if image.size == (width, height) else _lanczos(image, width, height)

    def run(self, image: Image.Image) -> Image.Image:
        """One pass of the network over the whole image."""
        pixels = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)[None]
        pixels = pixels.to(self.descriptor.device, self.descriptor.dtype) / 255
        with torch.inference_mode():
            output = self._tiled(pixels)
        data = (output[0].permute(1, 2, 0).float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        return Image.fromarray(data, "RGB")

    def _tiled(self, pixels: torch.Tensor) -> torch.Tensor:
        """Each tile's core (the tile less TILE_CONTEXT on each side) is computed with its context around it,
        then the context is cropped from the output, so tiles meet without seams."""
        _, _, height, width = pixels.shape
        if not self.tile or (height <= self.tile and width <= self.tile):
            return self.descriptor(pixels)
        scale, core = self.scale, self.tile - 2 * TILE_CONTEXT
        output = pixels.new_empty(1, 3, height * scale, width * scale)
        for top in range(0, height, core):
            for left in range(0, width, core):
                bottom, right = min(top + core, height), min(left + core, width)
                y0, x0 = max(top - TILE_CONTEXT, 0), max(left - TILE_CONTEXT, 0)
                y1, x1 = min(bottom + TILE_CONTEXT, height), min(right + TILE_CONTEXT, width)
                piece = self.descriptor(pixels[:, :, y0:y1, x0:x1])
                output[:, :, top * scale:bottom * scale, left * scale:right * scale] = \
                    piece[:, :, (top - y0) * scale:(bottom - y0) * scale, (left - x0) * scale:(right - x0) * scale]
        return output
