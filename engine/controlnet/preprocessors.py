"""ControlNet preprocessors ("modules") as sd-webui-controlnet (1.1.4xx, API version 3) names, describes and runs them.

Each module has an internal name and a UI label ("depth" / "depth_midas", "invert" / "invert (from white bg & black
line)"; mostly the same); a request may name either, the label looked up first. /controlnet/module_list gives the
names, or with alias_names=true the labels, "none" first, then by priority and label, both descending; its
module_detail is {name: {"model_free": false, "sliders": [...]}}, the visible sliders as {name, value, min, max,
step}. As the extension reports them: its older (legacy) modules always list the default Resolution slider, even
those that never resize (tile_resample, recolor).

A unit's processor_res, threshold_a and threshold_b outside their slider's [min, max] (-1, the default, is) take the
slider's default; a hidden slider's range is [0, 1] with default 0.5, so that is what the unit then carries (and
its infotext shows). Pixel perfect replaces processor_res with `pixel_perfect_resolution`, unchecked.

Weightless modules run here (detectors.py); network modules (depth, softedge_hed, lineart, openpose) run through
annotators.Annotators, which loads their weights from the models directory. The extension's other modules (other
openpose, line and soft-edge detectors, segmentation, IP-Adapter, reference, ...) are not offered: their networks need
code or packages this worker does not have.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from PIL import Image

from schemas import RequestError, limits
from schemas.errors import quoted

from . import detectors

Detect = Callable[[Image.Image, float, float, float], Image.Image]


@dataclass(frozen=True)
class Slider:
    """One of a module's sliders, as the extension defines it (its `PreprocessorParameter`)."""

    name: str
    value: float
    min: float
    max: float
    step: float = 0.01
    visible: bool = True

    def resolve(self, value: float) -> float:
        """`value`, or the default when it is outside [min, max] (as -1 is)."""
        return self.value if value < self.min or value > self.max else value

    def api_json(self) -> dict:
        return {"name": self.name, "value": self.value, "min": self.min, "max": self.max, "step": self.step}


# the weightless modules whose map has the image's size, whatever the resolution
_KEEP_SIZE = frozenset({detectors.passthrough, detectors.invert, detectors.tile_resample, detectors.recolor_luminance,
                        detectors.recolor_intensity})
HIDDEN = Slider("EMPTY_LABEL", 0.5, 0.0, 1.0, visible=False)  # the extension's default parameter, not shown
RESOLUTION = Slider("Resolution", 512, 64, 2048, step=8)


class Params(NamedTuple):
    """A unit's resolved processor_res, threshold_a and threshold_b."""

    resolution: float
    threshold_a: float
    threshold_b: float


@dataclass(frozen=True)
class Preprocessor:
    name: str  # the extension's internal name
    label: str  # its UI name (alias_names=true)
    detect: Detect | None  # the weightless modules' function; None for a network's (annotators.py)
    priority: int = 0  # the extension's sorting priority
    resolution: Slider = RESOLUTION
    slider_a: Slider = HIDDEN
    slider_b: Slider = HIDDEN
    annotator: str | None = None  # the folder under ControlNetAnnotators/ holding its network
    needs_mask: bool = False  # the inpaint modules: the image comes with a mask (the engine's)
    tags: tuple[str, ...] = ()  # the extension's control types it is listed under (/controlnet/control_types)

    @property
    def needs_weights(self) -> bool:
        return self.annotator is not None

    def check_map_size(self, image_size: tuple[int, int], resolution: float, field: str) -> None:
        """A RequestError on `field` when the map would pass MAX_INPUT_PIXELS: the modules that scale the image's
        short side to the resolution make a thin image huge (1 x 4000 at 2048: 2048 x 8 million)."""
        if self.detect in _KEEP_SIZE:
            return
        width, height = detectors.scaled_size(*image_size, resolution)
        if width * height > limits.MAX_INPUT_PIXELS:
            raise RequestError(field, f"module {self.label!r} at resolution {resolution:g} would make the "
                                      f"{image_size[0]}x{image_size[1]} image a {width}x{height} map, over the limit "
                                      f"of {limits.MAX_INPUT_PIXELS} pixels (WORKER_MAX_INPUT_PIXELS)")

    def resolve(self, processor_res: float, threshold_a: float, threshold_b: float) -> Params:
        """The values a unit runs with: each outside its slider's range (-1 included) becomes the default."""
        return Params(self.resolution.resolve(processor_res), self.slider_a.resolve(threshold_a),
                      self.slider_b.resolve(threshold_b))

    def detail(self) -> dict:
        """The module's entry in /controlnet/module_list's module_detail."""
        sliders = (self.resolution, self.slider_a, self.slider_b)
        return {"model_free": False, "sliders": [slider.api_json() for slider in sliders if slider.visible]}


PREPROCESSORS: tuple[Preprocessor, ...] = (
    Preprocessor("none", "none", detectors.passthrough, priority=10, tags=("InstructP2P",)),
    Preprocessor("canny", "canny", detectors.canny, priority=100,
                 slider_a=Slider("Low Threshold", 100, 1, 255, step=1),
                 slider_b=Slider("High Threshold", 200, 1, 255, step=1), tags=("Canny",)),
    Preprocessor("invert", "invert (from white bg & black line)", detectors.invert, priority=20, resolution=HIDDEN,
                 tags=("Canny", "Lineart", "Scribble", "MLSD")),
    Preprocessor("blur_gaussian", "blur_gaussian", detectors.blur_gaussian,
                 slider_a=Slider("Sigma", 9.0, 0.01, 64.0), tags=("Tile",)),
    Preprocessor("scribble_xdog", "scribble_xdog", detectors.scribble_xdog,
                 slider_a=Slider("XDoG Threshold", 32, 1, 64), tags=("Scribble", "SparseCtrl")),
    Preprocessor("inpaint", "inpaint_global_harmonious", detectors.passthrough, needs_mask=True, resolution=HIDDEN,
                 tags=("Inpaint",)),
    Preprocessor("inpaint_only", "inpaint_only", detectors.passthrough, priority=100, needs_mask=True,
                 resolution=HIDDEN, tags=("Inpaint",)),
    Preprocessor("threshold", "threshold", detectors.threshold,
                 slider_a=Slider("Binarization Threshold", 127, 0, 255)),
    Preprocessor("tile_resample", "tile_resample", detectors.tile_resample, priority=100,
                 slider_a=Slider("Down Sampling Rate", 1.0, 1.0, 8.0), tags=("Tile",)),
    Preprocessor("lineart_standard", "lineart_standard (from white bg & black line)", detectors.lineart_standard,
                 priority=100, tags=("Lineart",)),
    Preprocessor("recolor_luminance", "recolor_luminance", detectors.recolor_luminance, priority=100,
                 slider_a=Slider("Gamma Correction", 1.0, 0.1, 2.0, step=0.001), tags=("Recolor",)),
    Preprocessor("recolor_intensity", "recolor_intensity", detectors.recolor_intensity,
                 slider_a=Slider("Gamma Correction", 1.0, 0.1, 2.0, step=0.001), tags=("Recolor",)),
    Preprocessor("depth", "depth_midas", None, priority=100, annotator="midas", tags=("Depth",)),
    Preprocessor("depth_anything", "depth_anything", None, annotator="depth_anything", tags=("Depth",)),
    Preprocessor("depth_anything_v2", "depth_anything_v2", None, annotator="depth_anything_v2", tags=("Depth",)),
    Preprocessor("openpose", "openpose", None, annotator="openpose", tags=("OpenPose",)),
    Preprocessor("hed", "softedge_hed", None, annotator="hed", tags=("SoftEdge",)),
    Preprocessor("hed_safe", "softedge_hedsafe", None, annotator="hed", tags=("SoftEdge",)),
    Preprocessor("lineart", "lineart_realistic", None, annotator="lineart", tags=("Lineart",)),
    Preprocessor("lineart_coarse", "lineart_coarse", None, annotator="lineart", tags=("Lineart",)),
)
_BY_LABEL = {p.label: p for p in PREPROCESSORS}
_BY_NAME = {p.name: p for p in PREPROCESSORS}

# the extension's other modules (names and labels), told apart from names it never had
NOT_OFFERED = frozenset("""
    animal_openpose densepose densepose_parula depth_hand_refiner depth_leres depth_leres++ depth_zoe
    dw_openpose_full instant_id_face_embedding instant_id_face_keypoints ip-adapter_clip_sd15 ip-adapter_clip_h
    ip-adapter_clip_sdxl ip-adapter_clip_g ip-adapter_clip_sdxl_plus_vith ip-adapter_face_id ip-adapter_face_id_plus
    ip-adapter-auto ip-adapter_pulid facexlib lineart_anime lineart_anime_denoise mediapipe_face mlsd normal_bae
    normal_map normal_midas normal_dsine openpose_face openpose_faceonly openpose_full openpose_hand
    reference_adain reference_adain+attn reference_only revision_clipvision revision_ignore_prompt scribble_hed
    pidinet_scribble scribble_pidinet anime_face_segment seg_anime_face oneformer_ade20k seg_ofade20k oneformer_coco
    seg_ofcoco segmentation seg_ufade20k pidinet softedge_pidinet pidinet_safe softedge_pidisafe te_hed
    softedge_teed softedge_anyline color t2ia_color_grid pidinet_sketch t2ia_sketch_pidi clip_vision
    t2ia_style_clipvision tile_colorfix tile_colorfix+sharp shuffle inpaint_only+lama mobile_sam
""".split()) | {"densepose (pruple bg & purple torso)", "densepose_parula (black bg & blue torso)"}


def find_preprocessor(module: str, field: str = "module") -> Preprocessor:
    """The module a request names (label or internal name); a RequestError on `field` for any other."""
    found = _BY_LABEL.get(module) or _BY_NAME.get(module)
    if found is not None:
        return found
    offered = ", ".join(module_list(alias_names=True))
    if module in NOT_OFFERED:
        raise RequestError(field, f"ControlNet module {quoted(module)} is not offered by this worker: it needs "
                                  f"weights or an architecture not available in this worker (offered: {offered})")
    raise RequestError(field, f"{quoted(module)} is not a ControlNet module (offered: {offered})")


def module_list(alias_names: bool = False) -> list[str]:
    """The modules' names (labels with alias_names) in the extension's order."""
    ordered = sorted((p for p in PREPROCESSORS if p.name != "none"),
                     key=lambda p: str(p.priority).zfill(8) + p.label, reverse=True)
    return [p.label if alias_names else p.name for p in (_BY_NAME["none"], *ordered)]


def module_detail(alias_names: bool = False) -> dict[str, dict]:
    return {name: find_preprocessor(name).detail() for name in module_list(alias_names)}


RESIZE_MODES = ("Just Resize", "Crop and Resize", "Resize and Fill")


def pixel_perfect_resolution(image_size: tuple[int, int], target_width: int, target_height: int,
                             resize_mode: str) -> int:
    """The processor resolution pixel perfect asks for: the image's short side scaled as the control image will
    be to reach the target size (width, height): by the smaller of the two axis ratios for "Resize and Fill"
    (the image fits inside), the larger otherwise (it covers); rounded half to even, as numpy rounds."""
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"resize mode {resize_mode!r} is not one of {RESIZE_MODES}")
    width, height = image_size
    ratios = (target_height / height, target_width / width)
    scale = min(ratios) if resize_mode == "Resize and Fill" else max(ratios)
    return round(scale * min(width, height))
