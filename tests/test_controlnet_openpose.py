"""The openpose module: the body network built from the file's names (tiny random weights), what it is fed, the
post-processing on hand-made heatmaps and vector fields (keypoints, limbs, people, drawing), and its errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from engine.controlnet import openpose
from engine.controlnet.annotators import ANNOTATORS_SUBDIR, AnnotatorMissing, Annotators
from engine.controlnet.preprocessors import NOT_OFFERED, find_preprocessor, module_list
from engine.tiny.openpose import write_tiny_openpose
from schemas import RequestError

NECK, R_SHOULDER, R_ELBOW, R_WRIST = 1, 2, 3, 4
HEIGHT, WIDTH = 96, 128


def picture(size: tuple[int, int] = (90, 60)) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    write_tiny_openpose(folder)
    return folder


def test_openpose_is_offered_as_a_network_module():
    preprocessor = find_preprocessor("openpose")
    assert (preprocessor.name, preprocessor.label, preprocessor.tags) == ("openpose", "openpose", ("OpenPose",))
    assert preprocessor.needs_weights and preprocessor.annotator == "openpose"
    assert "openpose" in module_list() and "openpose" not in NOT_OFFERED
    assert preprocessor.resolve(-1, -1, -1).resolution == 512


def test_the_tiny_network_gives_a_black_map_at_the_scaled_size(models_dir):
    detect = Annotators(models_dir, torch.device("cpu")).detector(find_preprocessor("openpose"))
    detected = np.asarray(detect(picture(), 64, 0.5, 0.5))
    assert detected.shape == (64, 96, 3) and not detected.any()  # nothing found: black
    assert np.asarray(detect(picture(), 100, 0.5, 0.5)).shape == (100, 150, 3)


def test_the_network_carries_the_files_names_and_ends_the_heatmaps_with_a_relu(models_dir):
    path = models_dir / ANNOTATORS_SUBDIR / "openpose" / "body_pose_model.pth"
    state = torch.load(path, weights_only=True)
    assert {"conv1_1.weight", "conv4_4_CPM.bias", "conv5_5_CPM_L2.weight", "Mconv1_stage2_L1.weight",
            "Mconv7_stage6_L2.bias"} <= set(state)
    model = openpose.body_model(state).eval()
    fields, heatmaps = model(torch.randn(1, 3, 64, 96))
    assert fields.shape == (1, 38, 8, 12) and heatmaps.shape == (1, 19, 8, 12)
    assert heatmaps.min() >= 0 and fields.min() < 0  # stage 6's heatmaps pass a ReLU, the fields don't
    heatmaps, fields = openpose.predict(model, np.zeros((64, 96, 3), np.uint8))
    assert heatmaps.shape == (64, 96, 19) and fields.shape == (64, 96, 38)


class Recorder(torch.nn.Module):
    """Stands in for the network: keeps its input, returns zeros of the network's output shapes."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.seen: torch.Tensor | None = None

    def forward(self, x):
        self.seen = x
        height, width = x.shape[2] // openpose.STRIDE, x.shape[3] // openpose.STRIDE
        return torch.zeros(1, 38, height, width), torch.zeros(1, 19, height, width)


def test_the_network_sees_bgr_at_half_the_box_size_padded_with_grey():
    """A blue 60 x 90 image at resolution 64 is 64 x 96 (edge-padded to 64 x 128), then 184 x 368; a 64 x 100 one
    184 x 287 (287.5, cut), padded to 288 with grey."""
    recorder = Recorder()
    detected = openpose.detect(recorder, Image.new("RGB", (90, 60), (0, 0, 255)), 64, 0.5, 0.5)
    assert detected.size == (96, 64) and not np.asarray(detected).any()
    seen = recorder.seen[0]
    assert seen.shape == (3, 184, 368)
    assert torch.allclose(seen[0], torch.tensor(255 / 256 - 0.5)) and (seen[1:] == -0.5).all()  # blue first
    openpose.predict(recorder, np.zeros((64, 100, 3), np.uint8))
    seen = recorder.seen[0]
    assert seen.shape == (3, 184, 288) and (seen[:, :, :287] == -0.5).all()
    assert (seen[:, :, 287:] == 0).all()  # grey 128: 128 / 256 - 0.5


# ---------------------------------------------------------------- post-processing on hand-made maps

def blank_maps() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((HEIGHT, WIDTH, 19)), np.zeros((HEIGHT, WIDTH, 38))


def add_keypoint(heatmaps: np.ndarray, part: int, point: tuple[int, int]) -> None:
    ys, xs = np.mgrid[:HEIGHT, :WIDTH]
    heatmaps[..., part] += np.exp(-((xs - point[0]) ** 2 + (ys - point[1]) ** 2) / (2 * 2.0 ** 2))


def add_limb(fields: np.ndarray, a: tuple[int, int], b: tuple[int, int], part_a: int, part_b: int,
             sign: float = 1.0) -> None:
    """The limb's unit vector a -> b (times sign) within 3 pixels of the segment, in its two channels."""
    channels = openpose.LIMB_FIELDS[openpose.LIMBS.index((part_a, part_b))]
    ys, xs = np.mgrid[:HEIGHT, :WIDTH]
    direction = np.subtract(b, a) / np.hypot(*np.subtract(b, a))
    t = ((xs - a[0]) * direction[0] + (ys - a[1]) * direction[1]).clip(0, np.hypot(*np.subtract(b, a)))
    near = np.hypot(xs - a[0] - t * direction[0], ys - a[1] - t * direction[1]) <= 3
    for channel, component in zip(channels, direction):
        fields[..., channel][near] = sign * component


ARM = {NECK: (30, 20), R_SHOULDER: (30, 50), R_ELBOW: (60, 50), R_WRIST: (90, 50)}
ARM_LIMBS = ((NECK, R_SHOULDER), (R_SHOULDER, R_ELBOW), (R_ELBOW, R_WRIST))


def arm(reversed_limb: tuple[int, int] | None = None, limbs=ARM_LIMBS) -> tuple[np.ndarray, np.ndarray]:
    heatmaps, fields = blank_maps()
    for part, point in ARM.items():
        add_keypoint(heatmaps, part, point)
    for part_a, part_b in limbs:
        add_limb(fields, ARM[part_a], ARM[part_b], part_a, part_b, -1.0 if (part_a, part_b) == reversed_limb else 1.0)
    return heatmaps, fields


def limb_color(part_a: int, part_b: int) -> list[int]:
    return [int(c * 0.6) for c in openpose.COLORS[openpose.LIMBS.index((part_a, part_b))]]


def test_keypoints_joined_by_vector_fields_draw_the_limbs_in_their_colours():
    heatmaps, fields = arm()
    peaks = openpose.find_peaks(heatmaps)
    assert [len(p) for p in peaks] == [0, 1, 1, 1, 1] + [0] * 13
    assert peaks[R_ELBOW].tolist() == [[60, 50, pytest.approx(1.0), 2]]  # x, y, score, id
    people = openpose.assemble_people(peaks, openpose.connect_limbs(peaks, fields))
    assert people == [[-1, 0, 1, 2, 3] + [-1] * 13]
    drawn = openpose.pose_map(heatmaps, fields)
    assert drawn.shape == (HEIGHT, WIDTH, 3) and drawn.dtype == np.uint8
    assert drawn[35, 30].tolist() == limb_color(NECK, R_SHOULDER) == [153, 0, 0]  # the limb between its ends
    assert drawn[50, 45].tolist() == limb_color(R_SHOULDER, R_ELBOW)
    assert drawn[50, 75].tolist() == limb_color(R_ELBOW, R_WRIST)
    for part, (x, y) in ARM.items():
        assert drawn[y, x].tolist() == list(openpose.COLORS[part])  # a disc on each keypoint
    assert drawn[y, x + 4].any() and not drawn[y, x + 6].any()  # radius 4 at the wrist, nothing beyond
    assert not drawn[:12].any() and not drawn[60:].any()  # black away from the skeleton


def test_two_joined_keypoints_alone_are_not_a_person():
    heatmaps, fields = blank_maps()
    add_keypoint(heatmaps, NECK, ARM[NECK])
    add_keypoint(heatmaps, R_SHOULDER, ARM[R_SHOULDER])
    add_limb(fields, ARM[NECK], ARM[R_SHOULDER], NECK, R_SHOULDER)
    peaks = openpose.find_peaks(heatmaps)
    assert openpose.connect_limbs(peaks, fields)[0] == [(0, 1, pytest.approx(1.0))]
    assert not openpose.pose_map(heatmaps, fields).any()  # people need 4 keypoints


@pytest.mark.parametrize("change", ["no fields", "reversed", "weak keypoints"])
def test_limbs_need_a_field_along_them_and_keypoints_over_the_threshold(change):
    heatmaps, fields = arm(reversed_limb=(R_ELBOW, R_WRIST) if change == "reversed" else None,
                           limbs=() if change == "no fields" else ARM_LIMBS)
    if change == "weak keypoints":
        heatmaps *= 0.2  # smoothed, its peaks fall under 0.1
    assert not openpose.pose_map(heatmaps, fields).any()
    if change == "reversed":  # the other two limbs still connect
        peaks = openpose.find_peaks(heatmaps)
        assert [len(c or []) for c in openpose.connect_limbs(peaks, fields)[:4]] == [1, 0, 1, 0]


def test_two_people_are_drawn_apart():
    heatmaps, fields = arm()
    shifted = {part: (x, y + 40) for part, (x, y) in ARM.items()}
    for part, point in shifted.items():
        add_keypoint(heatmaps, part, point)
    for part_a, part_b in ARM_LIMBS:
        add_limb(fields, shifted[part_a], shifted[part_b], part_a, part_b)
    peaks = openpose.find_peaks(heatmaps)
    people = openpose.assemble_people(peaks, openpose.connect_limbs(peaks, fields))
    assert len(people) == 2 and {person[NECK] for person in people} == {0, 1}
    drawn = openpose.pose_map(heatmaps, fields)
    assert drawn[50, 75].tolist() == drawn[90, 75].tolist() == limb_color(R_ELBOW, R_WRIST)


# ---------------------------------------------------------------- errors

def test_a_missing_file_is_named_with_its_source(tmp_path):
    with pytest.raises(AnnotatorMissing) as error:
        Annotators(tmp_path, torch.device("cpu")).detector(find_preprocessor("openpose"), field="controlnet_module")
    assert error.value.field == "controlnet_module"
    message = str(error.value)
    assert f"{ANNOTATORS_SUBDIR}/openpose/body_pose_model.pth" in message and str(tmp_path) in message
    assert "hf://lllyasviel/Annotators/body_pose_model.pth" in message


def test_a_file_of_other_weights_is_refused(tmp_path):
    path = tmp_path / ANNOTATORS_SUBDIR / "openpose" / "body_pose_model.pth"
    path.parent.mkdir(parents=True)
    torch.save({"conv1_1.weight": torch.zeros(4, 3, 3, 3)}, path)
    with pytest.raises(RequestError, match="can't be loaded: .*not a body pose model: it has no conv1_2.weight"):
        Annotators(tmp_path, torch.device("cpu")).detector(find_preprocessor("openpose"))


def test_the_tiny_file_is_the_same_bytes_every_time(models_dir, tmp_path):
    ours = models_dir / ANNOTATORS_SUBDIR / "openpose" / "body_pose_model.pth"
    assert write_tiny_openpose(tmp_path).read_bytes() == ours.read_bytes()
