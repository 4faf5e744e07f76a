"""ControlNet preprocessors: the weightless modules' maps (size, and what each does to the image), module names and
labels, the sliders' defaults, /controlnet/module_list's order and details, pixel perfect, the tiny depth networks
(random weights, real transformers classes) and line networks (HED, lineart), hand-built ones with known maps, and
the missing-network errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from engine.controlnet import detectors
from engine.controlnet.annotators import ANNOTATORS_SUBDIR, AnnotatorMissing, Annotators
from engine.controlnet.line_networks import HED, LineartGenerator
from engine.controlnet.preprocessors import (
    PREPROCESSORS,
    Params,
    find_preprocessor,
    module_detail,
    module_list,
    pixel_perfect_resolution,
)
from engine.tiny.annotators import TINY_HED_BLOCKS, tiny_lineart, write_tiny_annotators
from schemas import RequestError

WIDTH, HEIGHT = 90, 60
SCALED_64 = (96, 64)  # (WIDTH, HEIGHT) with the short side scaled to 64
NATIVE = 64  # the smallest resolution: an image of this short side keeps its pixels


def picture(seed: int = 0, size: tuple[int, int] = (WIDTH, HEIGHT)) -> Image.Image:
    """Smooth colour noise with a dark rectangle: edges, lines and a range of values."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (size[1] // 6, size[0] // 6, 3), dtype=np.uint8)
    image = Image.fromarray(noise, "RGB").resize(size, Image.BICUBIC)
    pixels = np.asarray(image).copy()
    pixels[20:40, 30:60] = 15
    return Image.fromarray(pixels, "RGB")


def native(seed: int = 0) -> Image.Image:
    return picture(seed, SCALED_64)


def lines(rows: slice = slice(None), columns: slice = slice(None)) -> Image.Image:
    """Black lines on white, at the native size."""
    pixels = np.full((NATIVE, SCALED_64[0], 3), 255, np.uint8)
    pixels[rows, columns] = 0
    return Image.fromarray(pixels, "RGB")


def run(module: str, image: Image.Image, resolution: float = -1, a: float = -1, b: float = -1) -> np.ndarray:
    preprocessor = find_preprocessor(module)
    detected = preprocessor.detect(image, *preprocessor.resolve(resolution, a, b))
    assert detected.mode == "RGB"
    return np.asarray(detected)


@pytest.mark.parametrize("module, size", [
    ("none", (WIDTH, HEIGHT)), ("canny", SCALED_64), ("invert", (WIDTH, HEIGHT)), ("threshold", SCALED_64),
    ("blur_gaussian", SCALED_64), ("scribble_xdog", SCALED_64), ("tile_resample", (WIDTH, HEIGHT)),
    ("inpaint_only", (WIDTH, HEIGHT)), ("inpaint_global_harmonious", (WIDTH, HEIGHT)),
    ("lineart_standard", SCALED_64), ("recolor_luminance", (WIDTH, HEIGHT)), ("recolor_intensity", (WIDTH, HEIGHT)),
])
def test_weightless_maps_are_rgb_at_the_scaled_size_or_the_images(module, size):
    """Resizing modules scale the short side to the resolution (64 here; 60 x 90 becomes 64 x 96)."""
    assert run(module, picture(), 64).shape == (size[1], size[0], 3)
    assert not find_preprocessor(module).needs_weights


def test_the_default_resolution_scales_the_short_side_to_512():
    assert run("canny", picture()).shape == (512, 768, 3)
    assert run("threshold", picture(), 100).shape == (100, 150, 3)


def test_canny_thresholds_set_how_many_edges_survive():
    low = run("canny", picture(), 64, 20, 60)
    high = run("canny", picture(), 64, 150, 250)
    assert set(np.unique(low)) == {0, 255}
    assert (low[..., 0] == low[..., 1]).all() and (low[..., 0] == low[..., 2]).all()
    assert (low > 0).sum() > (high > 0).sum() > 0
    assert (run("canny", picture(), 64) == run("canny", picture(), 64, 100, 200)).all()  # -1: 100 and 200


def test_invert_inverts_the_image_at_its_size():
    assert (run("invert", picture(), 64) == 255 - np.asarray(picture())).all()


def test_threshold_binarises_the_darkest_channel_at_threshold_a():
    """At the image's own short side the pixels are the image's: white where min(R, G, B) > a."""
    pixels = np.asarray(native())
    for a in (50, 127, 200):
        expected = np.where(pixels.min(axis=2) > a, 255, 0)
        assert (run("threshold", native(), NATIVE, a)[..., 0] == expected).all()
    halves = np.full((NATIVE, NATIVE, 3), 100, np.uint8)
    halves[:, NATIVE // 2:] = 200
    image = Image.fromarray(halves, "RGB")
    assert (run("threshold", image, NATIVE, 100) > 0).mean() == 0.5  # strictly above
    assert (run("threshold", image, NATIVE, 99) > 0).all()
    assert (run("threshold", image, NATIVE) > 0).mean() == 0.5  # -1: 127


def test_blur_gaussian_blurs_by_sigma():
    spread = [run("blur_gaussian", native(), NATIVE, sigma).astype(float).std() for sigma in (0.01, 2.0, 9.0)]
    assert spread[0] > spread[1] > spread[2]
    assert (run("blur_gaussian", native(), NATIVE, 0.01) == np.asarray(native())).all()  # sigma 0.01: no blur
    assert (run("blur_gaussian", native(), NATIVE) == run("blur_gaussian", native(), NATIVE, 9.0)).all()


def test_tile_resample_shrinks_by_threshold_a():
    assert run("tile_resample", picture(), 64, 2.0).shape == (30, 45, 3)
    assert run("tile_resample", picture(), 64, 3.0).shape == (20, 30, 3)
    assert (run("tile_resample", picture(), 64, 1.05) == np.asarray(picture())).all()  # below 1.1: unchanged
    assert run("tile_resample", picture()).shape == (HEIGHT, WIDTH, 3)  # -1: a factor of 1


def test_scribble_xdog_finds_dark_lines_and_threshold_a_thins_them():
    image = lines(rows=slice(30, 33))
    counts = [(run("scribble_xdog", image, NATIVE, a)[..., 0] > 0).sum() for a in (1, 32, 64)]
    assert counts[0] >= counts[1] >= counts[2] > 0
    detected = run("scribble_xdog", image, NATIVE, 32)[..., 0]
    assert detected[31].all() and not detected[:20].any() and not detected[44:].any()
    assert not run("scribble_xdog", lines(rows=slice(0, 0)), NATIVE).any()  # a blank page


@pytest.mark.parametrize("grey, shown", [(0, True), (65, False), (100, True)])
def test_scribble_xdog_doubles_in_uint8_as_the_extension(grey, shown):
    """A 1-pixel line of grey 65 is ~135 darker than its blur; doubled in uint8 that wraps to ~14, under the
    default threshold 32, so the extension drops it while lighter and darker lines show."""
    pixels = np.asarray(lines(rows=slice(0, 0))).copy()
    pixels[31] = grey
    assert run("scribble_xdog", Image.fromarray(pixels, "RGB"), NATIVE)[31, 10:80].all() == shown


def test_lineart_standard_turns_black_lines_on_white_into_white_lines():
    detected = run("lineart_standard", lines(columns=slice(44, 46)), NATIVE)[..., 0]
    assert detected[:, 44:46].min() > 100 and detected[:, :30].max() == 0


def test_inpaint_modules_pass_the_image_through_and_show_the_mask_as_transparency():
    assert (run("inpaint_only", picture(), 64) == np.asarray(picture())).all()
    assert find_preprocessor("inpaint_only").needs_mask and not find_preprocessor("canny").needs_mask
    mask = Image.new("L", (WIDTH, HEIGHT), 0)
    mask.paste(255, (0, 0, 30, 60))
    shown = np.asarray(detectors.inpaint_display_map(picture(), mask))
    assert (shown[..., :3] == np.asarray(picture())).all()
    assert (shown[:, :30, 3] == 128).all() and (shown[:, 30:, 3] == 255).all()


def test_none_passes_the_image_through_and_transparency_goes_white():
    assert (run("none", picture(), 64) == np.asarray(picture())).all()
    rgba = Image.new("RGBA", (4, 2), (10, 20, 30, 255))
    rgba.putpixel((0, 0), (10, 20, 30, 0))
    pixels = run("none", rgba)
    assert pixels[0, 0].tolist() == [255, 255, 255] and pixels[1, 1].tolist() == [10, 20, 30]


def test_modules_are_found_by_label_or_internal_name():
    assert find_preprocessor("invert (from white bg & black line)") is find_preprocessor("invert")
    assert find_preprocessor("depth_midas") is find_preprocessor("depth")
    assert find_preprocessor("inpaint_global_harmonious") is find_preprocessor("inpaint")
    assert find_preprocessor("lineart_standard (from white bg & black line)").name == "lineart_standard"
    assert find_preprocessor("softedge_hed") is find_preprocessor("hed")
    assert find_preprocessor("softedge_hedsafe") is find_preprocessor("hed_safe")
    assert find_preprocessor("lineart_realistic") is find_preprocessor("lineart")
    for name in ("depth", "depth_midas", "depth_anything", "depth_anything_v2", "hed", "softedge_hedsafe",
                 "lineart_realistic", "lineart_coarse"):
        assert find_preprocessor(name).needs_weights


def test_modules_the_worker_lacks_are_refused_naming_the_field():
    with pytest.raises(RequestError, match="not offered by this worker: it needs weights or an architecture") as e:
        find_preprocessor("openpose_full")
    assert e.value.field == "module"
    for module in ("scribble_hed", "softedge_pidinet", "lineart_anime", "reference_only", "openpose_full"):
        with pytest.raises(RequestError, match="not offered"):
            find_preprocessor(module)
    with pytest.raises(RequestError, match="'cany' is not a ControlNet module") as e:
        find_preprocessor("cany", field="controlnet_module")
    assert e.value.field == "controlnet_module"


def test_values_outside_a_slider_take_its_default_as_the_extension_does():
    canny = find_preprocessor("canny")
    assert canny.resolve(-1, -1, -1) == Params(512, 100, 200)
    assert canny.resolve(3000, 0, 300) == Params(512, 100, 200)  # out of range: the default, not clamped
    assert canny.resolve(256, 50, 150) == Params(256, 50, 150)
    assert find_preprocessor("threshold").resolve(-1, -1, -1) == Params(512, 127, 0.5)
    assert find_preprocessor("blur_gaussian").resolve(-1, -1, -1).threshold_a == 9.0
    assert find_preprocessor("scribble_xdog").resolve(-1, -1, -1).threshold_a == 32
    assert find_preprocessor("tile_resample").resolve(-1, 0.5, -1).threshold_a == 1.0
    assert find_preprocessor("invert").resolve(-1, -1, 0.25) == Params(0.5, 0.5, 0.25)  # hidden: [0, 1], 0.5


def test_module_list_order_and_details_are_the_extensions():
    """"none" first, then by priority (100, 20, 0) and label, both descending."""
    assert module_list(alias_names=True) == [
        "none", "tile_resample", "recolor_luminance", "lineart_standard (from white bg & black line)",
        "inpaint_only", "depth_midas", "canny", "invert (from white bg & black line)", "threshold",
        "softedge_hedsafe", "softedge_hed", "scribble_xdog", "recolor_intensity", "openpose", "lineart_realistic",
        "lineart_coarse", "inpaint_global_harmonious", "depth_anything_v2", "depth_anything", "blur_gaussian"]
    names = module_list()
    assert names[:2] == ["none", "tile_resample"] and "depth" in names and "invert" in names
    resolution = {"name": "Resolution", "value": 512, "min": 64, "max": 2048, "step": 8}
    detail = module_detail(alias_names=True)
    assert detail["canny"] == {"model_free": False, "sliders": [
        resolution, {"name": "Low Threshold", "value": 100, "min": 1, "max": 255, "step": 1},
        {"name": "High Threshold", "value": 200, "min": 1, "max": 255, "step": 1}]}
    assert detail["invert (from white bg & black line)"]["sliders"] == []
    assert detail["tile_resample"]["sliders"] == [  # the extension lists a Resolution slider the module ignores
        resolution, {"name": "Down Sampling Rate", "value": 1.0, "min": 1.0, "max": 8.0, "step": 0.01}]
    for label in ("softedge_hed", "softedge_hedsafe", "lineart_realistic", "lineart_coarse"):
        assert detail[label] == {"model_free": False, "sliders": [resolution]}
    assert set(module_detail()) == set(names) and len(names) == len(PREPROCESSORS)


@pytest.mark.parametrize("image_size, target, mode, expected", [
    # 600 x 400 to 512 x 768: height ratio 1.92, width ratio 0.8533...; short side 400
    ((600, 400), (512, 768), "Just Resize", 768),
    ((600, 400), (512, 768), "Crop and Resize", 768),
    ((600, 400), (512, 768), "Resize and Fill", 341),  # 341.33
    # 1024 x 768 to 512 x 512: ratios 0.6667 (height) and 0.5 (width); short side 768
    ((1024, 768), (512, 512), "Crop and Resize", 512),
    ((1024, 768), (512, 512), "Resize and Fill", 384),
    # halves round to even, as numpy's round: 8 x 4 to 5 x 2 gives 0.625 * 4 = 2.5; to 7 x 2, 0.875 * 4 = 3.5
    ((8, 4), (5, 2), "Crop and Resize", 2),
    ((8, 4), (7, 2), "Just Resize", 4),
])
def test_pixel_perfect_resolution(image_size, target, mode, expected):
    assert pixel_perfect_resolution(image_size, *target, mode) == expected


def test_pixel_perfect_wants_a_resize_mode():
    with pytest.raises(ValueError, match="resize mode"):
        pixel_perfect_resolution((8, 4), 8, 4, "Envelope (Outer Fit)")


# ---------------------------------------------------------------- networks

@pytest.fixture(scope="module")
def annotators(tmp_path_factory) -> Annotators:
    models_dir = tmp_path_factory.mktemp("models")
    write_tiny_annotators(models_dir)
    return Annotators(models_dir, torch.device("cpu"))


@pytest.mark.parametrize("module", ["depth_midas", "depth_anything", "depth_anything_v2", "softedge_hed",
                                    "softedge_hedsafe", "lineart_realistic", "lineart_coarse"])
def test_tiny_networks_give_grey_maps_at_the_scaled_size(annotators, module):
    preprocessor = find_preprocessor(module)
    detect = annotators.detector(preprocessor)
    depth = np.asarray(detect(picture(), *preprocessor.resolve(64, -1, -1)))
    assert depth.shape == (64, 96, 3)
    assert (depth[..., 0] == depth[..., 1]).all() and (depth[..., 0] == depth[..., 2]).all()
    assert depth.max() > depth.min()
    assert not (np.asarray(detect(picture(1), 64, 0.5, 0.5)) == depth).all()  # it follows the image
    assert np.asarray(detect(picture(), 100, 0.5, 0.5)).shape == (100, 150, 3)


def test_tiny_annotators_are_the_same_bytes_every_time(annotators, tmp_path):
    write_tiny_annotators(tmp_path)
    for name in ("midas/model.safetensors", "depth_anything/model.safetensors", "depth_anything_v2/model.safetensors",
                 "hed/ControlNetHED.pth", "lineart/sk_model.pth", "lineart/sk_model2.pth"):
        ours = annotators.models_dir / ANNOTATORS_SUBDIR / name
        assert ours.read_bytes() == (tmp_path / ANNOTATORS_SUBDIR / name).read_bytes()
    lineart = annotators.models_dir / ANNOTATORS_SUBDIR / "lineart"
    assert (lineart / "sk_model.pth").read_bytes() != (lineart / "sk_model2.pth").read_bytes()


def test_a_missing_network_is_named_with_its_source(tmp_path):
    empty = Annotators(tmp_path, torch.device("cpu"))
    with pytest.raises(AnnotatorMissing) as error:
        empty.detector(find_preprocessor("depth_anything"), field="controlnet_module")
    assert error.value.field == "controlnet_module" and isinstance(error.value, RequestError)
    message = str(error.value)
    assert f"{ANNOTATORS_SUBDIR}/depth_anything/" in message and "hf://LiheYoung/depth-anything-large-hf" in message
    assert str(tmp_path) in message
    with pytest.raises(AnnotatorMissing, match="ControlNetAnnotators/midas/"):
        empty.detector(find_preprocessor("depth"))
    assert empty.detector(find_preprocessor("canny")) is detectors.canny  # weightless modules need no folder


@pytest.mark.parametrize("module, file", [("softedge_hed", "hed/ControlNetHED.pth"),
                                          ("softedge_hedsafe", "hed/ControlNetHED.pth"),
                                          ("lineart_realistic", "lineart/sk_model.pth"),
                                          ("lineart_coarse", "lineart/sk_model2.pth")])
def test_a_missing_line_network_names_its_file_and_source(tmp_path, module, file):
    write_tiny_annotators(tmp_path)
    (tmp_path / ANNOTATORS_SUBDIR / file).unlink()  # the other files stay: the coarse one wants its own
    with pytest.raises(AnnotatorMissing) as error:
        Annotators(tmp_path, torch.device("cpu")).detector(find_preprocessor(module), field="controlnet_module")
    message = str(error.value)
    assert error.value.field == "controlnet_module" and f"has no {ANNOTATORS_SUBDIR}/{file}" in message
    assert f"hf://lllyasviel/Annotators/{file.split('/')[1]}" in message and str(tmp_path) in message


def test_another_networks_file_is_an_error_naming_it(tmp_path):
    write_tiny_annotators(tmp_path)
    folder = tmp_path / ANNOTATORS_SUBDIR
    (folder / "hed" / "ControlNetHED.pth").write_bytes((folder / "lineart" / "sk_model.pth").read_bytes())
    with pytest.raises(RequestError, match="ControlNetAnnotators/hed/ControlNetHED.pth can't be loaded: .*block1"):
        Annotators(tmp_path, torch.device("cpu")).detector(find_preprocessor("softedge_hed"))


def save_network(models_dir, module: str, model: torch.nn.Module, suffix: str = ".pth") -> None:
    from safetensors.torch import save_file

    from engine.controlnet.annotators import WEIGHTS_FILES

    path = models_dir / ANNOTATORS_SUBDIR / find_preprocessor(module).annotator / WEIGHTS_FILES[module].file
    path = path.with_suffix(suffix)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)


def hed_with(projection_biases: list[float], red_gain: float = 0.0, offset: float = 0.0) -> HED:
    """A tiny HED whose convolutions are zero but for block 1 carrying the red channel, less `offset`, through its
    ReLUs (centre taps of 1) to its projection (x red_gain); each block's projection bias given."""
    model = HED(TINY_HED_BLOCKS)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        model.norm[0, 0] = offset
        for conv in model.block1.convs:
            conv.weight[0, 0, 1, 1] = 1.0
        model.block1.projection.weight[0, 0] = red_gain
        for index, bias in enumerate(projection_biases, start=1):
            getattr(model, f"block{index}").projection.bias.fill_(bias)
    return model


@pytest.mark.parametrize("biases, plain, safe", [
    ([1.0, 2.0, 0.0, -1.0, 3.0], 186, 255),  # sigmoid(1) = 0.731: 186; safe: trunc(2.19) / 2 = 1
    ([0.5, -0.5, 0.0, 0.0, 0.0], 127, 127),  # sigmoid(0) = 0.5: 127; safe: trunc(1.5) / 2 = 0.5
    ([-1.0, -1.0, -1.0, -1.0, -1.0], 68, 0),  # sigmoid(-1) = 0.269: 68; safe: trunc(0.81) = 0
])
def test_hed_is_the_sigmoid_of_the_projections_mean(tmp_path, biases, plain, safe):
    save_network(tmp_path, "hed", hed_with(biases), ".safetensors")  # a .safetensors beside the name is read
    annotators = Annotators(tmp_path, torch.device("cpu"))
    for module, expected in (("softedge_hed", plain), ("softedge_hedsafe", safe)):
        detected = np.asarray(annotators.detector(find_preprocessor(module))(picture(), 64, 0.5, 0.5))
        assert detected.shape == (64, 96, 3) and (detected == expected).all()


def test_hed_averages_the_projections_at_the_images_size(tmp_path):
    """Block 1's projection follows the red channel (above the offset 100): the map is sigmoid(max(red - 100, 0) *
    0.05 / 5), the other four projections adding zero to the mean."""
    save_network(tmp_path, "hed", hed_with([0.0] * 5, red_gain=0.05, offset=100.0))
    detect = Annotators(tmp_path, torch.device("cpu")).detector(find_preprocessor("hed"))
    red = np.asarray(native(), dtype=np.float64)[..., 0]
    expected = 255.0 / (1.0 + np.exp(-np.maximum(red - 100.0, 0.0) * 0.05 / 5))
    detected = np.asarray(detect(native(), NATIVE, 0.5, 0.5))[..., 0].astype(np.float64)
    assert np.abs(detected - np.floor(expected)).max() <= 1 and detected.max() > detected.min() + 50


@pytest.mark.parametrize("bias, expected", [(2.0, 31), (-2.0, 225)])  # 255 - trunc(255 * sigmoid(bias))
def test_lineart_maps_the_generators_white_paper_to_black(tmp_path, bias, expected):
    """The generator draws dark lines on white (1); its map is 255 - that: white lines on black."""
    model = tiny_lineart()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        model.model4[1].bias.fill_(bias)
    save_network(tmp_path, "lineart", model)
    detect = Annotators(tmp_path, torch.device("cpu")).detector(find_preprocessor("lineart_realistic"))
    detected = np.asarray(detect(picture(), 100, 0.5, 0.5))
    assert detected.shape == (100, 150, 3) and (detected == expected).all()


def test_line_networks_take_their_widths_from_the_weights():
    hed = HED.from_state_dict(HED([(3, 1), (5, 2)]).state_dict())
    assert [len(hed.block1.convs), len(hed.block2.convs), hed.block2.convs[1].out_channels] == [1, 2, 5]
    lineart = LineartGenerator.from_state_dict(LineartGenerator(2, [3, 4], 1, [5, 6], 1).state_dict())
    assert [lineart.model0[1].out_channels, lineart.model1[3].out_channels, len(lineart.model2),
            lineart.model3[3].out_channels] == [2, 4, 1, 6]
    assert tuple(lineart(torch.zeros(1, 3, 8, 12)).shape) == (1, 1, 8, 12)
