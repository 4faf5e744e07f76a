"""The network preprocessors, from weights in the models directory, never fetched.

Each network is in a folder ControlNetAnnotators/<name>/, <name> being the folder the extension downloads it to
(extensions/sd-webui-controlnet/annotator/downloads/<name>/ in A1111). The depth networks run on transformers, the
folder in its save_pretrained layout (config.json, safetensors weights, preprocessor_config.json):
- midas (depth_midas): hf://Intel/dpt-hybrid-midas, DPT-Hybrid (MiDaS 3.0), the extension's dpt_hybrid-midas-501f0c75
- depth_anything: hf://LiheYoung/depth-anything-large-hf, the extension's depth_anything_vitl14
- depth_anything_v2: hf://depth-anything/Depth-Anything-V2-Large-hf, the extension's depth_anything_v2_vitl
The openpose module's network is the extension's own file, built by this worker's code (openpose.py):
- openpose: openpose/body_pose_model.pth, hf://lllyasviel/Annotators/body_pose_model.pth

As the extension: the image is scaled and padded as for the weightless modules (detectors.resize_with_pad), the
depth predicted on it, scaled back to it, normalised to 0..255 over the padded map (near is white) and cropped.
Depth Anything sees the image scaled up to the processor's size (518) on its short side, sides multiples of 14
(bicubic), with its red and blue swapped, as the extension feeds it. MiDaS differs: the extension runs it at the
padded size, but transformers' DPT-Hybrid takes only square inputs of its configured size (384), so it sees the
padded image scaled to 384 x 384 and its map is scaled back (bicubic): at high resolutions a smoother map.

The line and edge networks (line_networks.py) are one file each, from hf://lllyasviel/Annotators, with the
extension's file name (a .safetensors of the same stem is read in its place when present):
- hed/ControlNetHED.pth (softedge_hed, softedge_hedsafe)
- lineart/sk_model.pth (lineart_realistic) and lineart/sk_model2.pth (lineart_coarse)
They see the scaled, padded image, and their map is cropped, as the extension runs them.
"""

from __future__ import annotations

import json
import math
from functools import partial
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from schemas import RequestError
from schemas.errors import quoted

from ..faults import reraise_server_fault
from ..store.models_dir import describe_error
from . import line_networks, openpose
from ..imaging.image_ops import opencv
from .detectors import resize_with_pad, to_image
from .preprocessors import Detect, Preprocessor

ANNOTATORS_SUBDIR = "ControlNetAnnotators"
PROCESSOR_CONFIG = "preprocessor_config.json"


class AnnotatorMissing(RequestError):
    """A module's network is not in the models directory; the message names the folder to bake."""


@dataclass(frozen=True)
class Network:
    source: str  # what to bake into the folder
    model_class: str  # the transformers class
    predict: Callable[[Any, dict, np.ndarray], torch.Tensor]  # (model, processor config, padded RGB) -> H x W


def _normalised(pixels: np.ndarray, config: dict, device: torch.device) -> torch.Tensor:
    """A float H x W x 3 array in 0..1 as a 1 x 3 x H x W batch, normalised by the processor's mean and std."""
    mean, std = np.asarray(config["image_mean"], np.float32), np.asarray(config["image_std"], np.float32)
    return torch.from_numpy(((pixels - mean) / std).transpose(2, 0, 1).copy()).unsqueeze(0).to(device)


def _predict_midas(model: Any, config: dict, pixels: np.ndarray) -> torch.Tensor:
    cv2 = opencv()
    size = model.config.image_size
    height, width = (size, size) if isinstance(size, int) else size
    square = cv2.resize(pixels.astype(np.float32) / 255.0, (width, height), interpolation=cv2.INTER_CUBIC)
    depth = model(pixel_values=_normalised(square, config, model.device)).predicted_depth
    return torch.nn.functional.interpolate(depth[None], pixels.shape[:2], mode="bicubic", align_corners=False)[0, 0]


def _multiple_at_least(x: float, multiple: int, at_least: int) -> int:
    """x to the nearest multiple (half to even), up to the next one when that falls below `at_least`."""
    y = int(np.round(x / multiple) * multiple)
    return y if y >= at_least else math.ceil(x / multiple) * multiple


def _predict_depth_anything(model: Any, config: dict, pixels: np.ndarray) -> torch.Tensor:
    cv2 = opencv()
    height, width = pixels.shape[:2]
    target_height, target_width = config["size"]["height"], config["size"]["width"]
    multiple = config.get("ensure_multiple_of", 1)
    scale = max(target_height / height, target_width / width)  # the smallest that reaches both target sides
    size = (_multiple_at_least(scale * width, multiple, target_width),
            _multiple_at_least(scale * height, multiple, target_height))
    swapped = pixels[..., ::-1].astype(np.float32) / 255.0  # the extension converts its RGB array "BGR to RGB"
    scaled = cv2.resize(swapped, size, interpolation=cv2.INTER_CUBIC)
    depth = model(pixel_values=_normalised(scaled, config, model.device)).predicted_depth
    return torch.nn.functional.interpolate(depth[None], (height, width), mode="bilinear", align_corners=False)[0, 0]


NETWORKS = {
    "midas": Network("hf://Intel/dpt-hybrid-midas", "DPTForDepthEstimation", _predict_midas),
    "depth_anything": Network("hf://LiheYoung/depth-anything-large-hf", "DepthAnythingForDepthEstimation",
                              _predict_depth_anything),
    "depth_anything_v2": Network("hf://depth-anything/Depth-Anything-V2-Large-hf", "DepthAnythingForDepthEstimation",
                                 _predict_depth_anything),
}


@dataclass(frozen=True)
class WeightsFile:
    """A network the extension loads from one file, built here (line_networks.py)."""

    file: str  # its name in the module's folder, the extension's
    build: Callable[[line_networks.StateDict], torch.nn.Module]
    detector: Callable[[Any], Detect]  # the module's function on the built network

    @property
    def source(self) -> str:
        return f"hf://lllyasviel/Annotators/{self.file}"


def _on_padded(run: Callable[[Any, np.ndarray], np.ndarray]) -> Callable[[Any], Detect]:
    """A module that runs `run(model, padded RGB uint8) -> uint8 H x W map` on the image resize_with_pad gives."""
    def detector(model: Any) -> Detect:
        def detect(image: Image.Image, resolution: float, threshold_a: float, threshold_b: float) -> Image.Image:
            pixels, size = resize_with_pad(image, resolution)
            with torch.inference_mode():
                detected = run(model, pixels)
            return to_image(detected[:size[0], :size[1]])

        return detect

    return detector


# by the modules' internal names
WEIGHTS_FILES = {
    "hed": WeightsFile("ControlNetHED.pth", line_networks.HED.from_state_dict, _on_padded(line_networks.hed_map)),
    "hed_safe": WeightsFile("ControlNetHED.pth", line_networks.HED.from_state_dict,
                            _on_padded(partial(line_networks.hed_map, safe=True))),
    "lineart": WeightsFile("sk_model.pth", line_networks.LineartGenerator.from_state_dict,
                           _on_padded(line_networks.lineart_map)),
    "lineart_coarse": WeightsFile("sk_model2.pth", line_networks.LineartGenerator.from_state_dict,
                                  _on_padded(line_networks.lineart_map)),
    "openpose": WeightsFile(openpose.WEIGHTS, openpose.body_model, lambda model: partial(openpose.detect, model)),
}


def _depth_map(depth: torch.Tensor) -> np.ndarray:
    """Depth (relative inverse depth: near is large) as uint8 0..255 over its own range."""
    depth = depth.float() - depth.min()
    span = depth.max()
    scaled = depth * (255.0 / span) if span > 0 else depth  # a flat map is black
    return scaled.clamp(0, 255).to(torch.uint8).cpu().numpy()


class Annotators:
    """The network modules' models, loaded on first use from the models directory; the last one is kept."""

    def __init__(self, models_dir: Path, device: torch.device):
        self.models_dir, self.device = Path(models_dir), device
        self._loaded: tuple[str, Any, dict] | None = None

    def folder(self, preprocessor: Preprocessor) -> Path:
        return self.models_dir / ANNOTATORS_SUBDIR / preprocessor.annotator

    def detector(self, preprocessor: Preprocessor, field: str = "module") -> Detect:
        """The module's function (image, resolution, threshold_a, threshold_b) -> map, its network loaded;
        AnnotatorMissing (on `field`) when the models directory lacks it."""
        if preprocessor.detect is not None:
            return preprocessor.detect
        if preprocessor.name in WEIGHTS_FILES:
            weights = WEIGHTS_FILES[preprocessor.name]
            return weights.detector(self._load_file(preprocessor, weights, field))
        network = NETWORKS[preprocessor.annotator]
        model, config = self._load(preprocessor, network, field)

        def detect(image: Image.Image, resolution: float, threshold_a: float, threshold_b: float) -> Image.Image:
            pixels, size = resize_with_pad(image, resolution)
            with torch.inference_mode():
                depth = network.predict(model, config, pixels)
            return to_image(_depth_map(depth)[:size[0], :size[1]])

        return detect

    def unload(self) -> None:
        self._loaded = None

    def _load_file(self, preprocessor: Preprocessor, weights: WeightsFile, field: str) -> torch.nn.Module:
        name = f"{preprocessor.annotator}/{weights.file}"
        if self._loaded is not None and self._loaded[0] == name:
            return self._loaded[1]
        folder = self.folder(preprocessor)
        candidates = (folder / Path(weights.file).with_suffix(".safetensors").name, folder / weights.file)
        path = next((candidate for candidate in candidates if candidate.is_file()), None)
        if path is None:
            raise AnnotatorMissing(field, f"ControlNet module {quoted(preprocessor.label)} needs its network "
                                          f"{ANNOTATORS_SUBDIR}/{name} ({weights.source}) in the models directory "
                                          f"({self.models_dir}), which has no {ANNOTATORS_SUBDIR}/{name}")
        self._loaded = None  # the previous network goes before the next one loads
        try:
            model = weights.build(line_networks.load_weights(path))
        except Exception as error:  # a file torch or safetensors can't read, or another network's weights
            reraise_server_fault(error)
            raise RequestError(field, f"the ControlNet annotator {ANNOTATORS_SUBDIR}/{preprocessor.annotator}/"
                                      f"{path.name} can't be loaded: {describe_error(error)}") from None
        model = model.to(self.device, torch.float32).eval()
        self._loaded = name, model, {}
        return model

    def _load(self, preprocessor: Preprocessor, network: Network, field: str) -> tuple[Any, dict]:
        name = preprocessor.annotator
        if self._loaded is not None and self._loaded[0] == name:
            return self._loaded[1:]
        folder = self.folder(preprocessor)
        missing = [file for file in ("config.json", PROCESSOR_CONFIG) if not (folder / file).is_file()]
        if missing:
            raise AnnotatorMissing(field, f"ControlNet module {quoted(preprocessor.label)} needs its network in "
                                          f"{ANNOTATORS_SUBDIR}/{name}/ (the transformers folder of {network.source})"
                                          f" in the models directory ({self.models_dir}), which has no "
                                          f"{ANNOTATORS_SUBDIR}/{name}/{missing[0]}")
        self._loaded = None  # the previous network goes before the next one loads
        try:
            import transformers

            model = getattr(transformers, network.model_class).from_pretrained(folder, local_files_only=True)
            config = json.loads((folder / PROCESSOR_CONFIG).read_text())
        except Exception as error:  # OSError for missing weights, ValueError and others for files it can't read
            reraise_server_fault(error)
            raise RequestError(field, f"the ControlNet annotator {ANNOTATORS_SUBDIR}/{name} can't be loaded: "
                                      f"{describe_error(error)}") from None
        model = model.to(self.device, torch.float32).eval()
        self._loaded = name, model, config
        return model, config
