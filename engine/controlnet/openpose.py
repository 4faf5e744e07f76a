"""The openpose module (body only): CMU's body pose network from lllyasviel's body_pose_model.pth, its keypoints
joined into people, drawn as sd-webui-controlnet draws them.

The network (18 COCO keypoints and a background channel, 19 limb vector fields as x/y pairs): a VGG-style backbone
(conv1_1 .. conv4_2, 2 x 2 max pools after conv1_2, conv2_2 and conv3_4, then conv4_3_CPM and conv4_4_CPM) and six
stages of two branches, part affinity fields (L1, 38 channels) and heatmaps (L2, 19), each stage after the first
seeing the previous one's outputs beside the backbone's features. Every convolution but a branch's last is followed
by a ReLU; as in the extension's model, stage 6's heatmap branch ends with one too. The layers are built from the
weights' names and shapes (the file's own names, "conv1_1.weight", "Mconv7_stage6_L2.bias"), so a file of other
widths or kernel sizes loads through the same code.

As the extension runs it: the image is scaled and padded as the other modules (detectors.resize_with_pad), its
channels reversed to BGR, scaled so that its height is half the box size 368 (its only search scale; area when
shrinking, Lanczos otherwise), padded right and down to multiples of 8 with grey 128, fed as x / 256 - 0.5; the
outputs are scaled up by the stride 8, cropped and scaled to the padded image. Keypoints are the local maxima of
each heatmap smoothed by a Gaussian (sigma 3) above 0.1; limbs are scored along 10 points of the vector field
between two candidates, joined greedily by score; people are assembled from the limbs and kept with at least 4
keypoints and a mean score of at least 0.4. The skeleton is drawn on black at the padded size (17 limbs as ellipses
in 60% of their colour, then a disc of radius 4 per keypoint) and cropped.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..imaging.image_ops import opencv
from .detectors import resize_with_pad, to_image

FOLDER = "openpose"  # under ControlNetAnnotators/, as the extension's annotator/downloads/openpose/
WEIGHTS = "body_pose_model.pth"

BOX_SIZE, SCALE, STRIDE, PAD_VALUE = 368, 0.5, 8, 128
PEAK_THRESHOLD, PAF_THRESHOLD, PAF_SAMPLES = 0.1, 0.05, 10
PEAK_SIGMA = 3.0
MIN_PARTS, MIN_MEAN_SCORE = 4, 0.4
KEYPOINTS = 18
STICK_WIDTH, POINT_RADIUS = 4, 4

# the backbone's convolutions in order; None is a 2 x 2 max pool
BACKBONE = ("conv1_1", "conv1_2", None, "conv2_1", "conv2_2", None, "conv3_1", "conv3_2", "conv3_3", "conv3_4", None,
            "conv4_1", "conv4_2", "conv4_3_CPM", "conv4_4_CPM")
STAGES = 6
PAF_BRANCH, HEATMAP_BRANCH = 1, 2

# (keypoint a, keypoint b) of each limb (COCO order: nose, neck, right shoulder, elbow, wrist, left shoulder, elbow,
# wrist, right hip, knee, ankle, left hip, knee, ankle, right eye, left eye, right ear, left ear), and the channels
# of its vector field (x, y) in the 38 PAF outputs; the last two (ear to shoulder) join people but are not drawn
LIMBS = ((1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),
         (1, 0), (0, 14), (14, 16), (0, 15), (15, 17), (2, 16), (5, 17))
LIMB_FIELDS = ((12, 13), (20, 21), (14, 15), (16, 17), (22, 23), (24, 25), (0, 1), (2, 3), (4, 5), (6, 7), (8, 9),
               (10, 11), (28, 29), (30, 31), (34, 35), (32, 33), (36, 37), (18, 19), (26, 27))
DRAWN_LIMBS = 17
NEW_PERSON_LIMBS = 17  # a limb whose keypoints belong to no one starts a person only among the first 17
# RGB, one per keypoint; limb i is drawn in colour i
COLORS = ((255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
          (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
          (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85))


def _stage_layers(stage: int, branch: int) -> list[str]:
    if stage == 1:
        return [f"conv5_{i}_CPM_L{branch}" for i in range(1, 6)]
    return [f"Mconv{i}_stage{stage}_L{branch}" for i in range(1, 8)]


class BodyPoseNet(nn.Module):
    """The two-branch body pose network; its parameters carry the file's names."""

    def __init__(self, shapes: dict[str, torch.Size]):
        super().__init__()
        names = [name for name in BACKBONE if name is not None]
        names += [name for stage in range(1, STAGES + 1) for branch in (PAF_BRANCH, HEATMAP_BRANCH)
                  for name in _stage_layers(stage, branch)]
        for name in names:
            if f"{name}.weight" not in shapes:
                raise ValueError(f"not a body pose model: it has no {name}.weight")
            out_channels, in_channels, kernel, _ = shapes[f"{name}.weight"]
            self.add_module(name, nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2))

    def _branch(self, x: torch.Tensor, stage: int, branch: int) -> torch.Tensor:
        layers = _stage_layers(stage, branch)
        for index, name in enumerate(layers):
            x = getattr(self, name)(x)
            if index < len(layers) - 1 or (stage, branch) == (STAGES, HEATMAP_BRANCH):
                x = torch.relu(x)
        return x

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(part affinity fields, heatmaps) of a BGR batch in -0.5..0.5, at 1/8 of its size."""
        for name in BACKBONE:
            x = torch.max_pool2d(x, 2, 2) if name is None else torch.relu(getattr(self, name)(x))
        features, stage_input = x, x
        for stage in range(1, STAGES + 1):
            fields = self._branch(stage_input, stage, PAF_BRANCH)
            heatmaps = self._branch(stage_input, stage, HEATMAP_BRANCH)
            stage_input = torch.cat([fields, heatmaps, features], dim=1)
        return fields, heatmaps


def body_model(state: dict[str, torch.Tensor]) -> BodyPoseNet:
    """The network of a body_pose_model.pth's state dict, built to its shapes."""
    if not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise ValueError("not a state dict of tensors")
    with torch.device("meta"):
        model = BodyPoseNet({name: value.shape for name, value in state.items()})
    model.load_state_dict(state, assign=True)
    return model


def _resize(x: np.ndarray, height: float, width: float) -> np.ndarray:
    """x scaled to int(height) x int(width) as the extension scales: area when the sides' sum shrinks, Lanczos
    otherwise; channel by channel (OpenCV's area scaling takes at most 4)."""
    cv2 = opencv()
    interpolation = cv2.INTER_AREA if height + width < x.shape[0] + x.shape[1] else cv2.INTER_LANCZOS4
    size = (int(width), int(height))
    if x.ndim == 2 or x.shape[2] <= 4:
        return cv2.resize(x, size, interpolation=interpolation)
    return np.stack([cv2.resize(x[..., c], size, interpolation=interpolation) for c in range(x.shape[2])], axis=2)


def predict(model: BodyPoseNet, bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(heatmaps H x W x 19, part affinity fields H x W x 38), float64, at the size of the H x W x 3 uint8 image."""
    height, width = bgr.shape[:2]
    scale = SCALE * BOX_SIZE / height
    scaled = _resize(bgr, height * scale, width * scale)
    scaled_height, scaled_width = scaled.shape[:2]
    padded = np.pad(scaled, ((0, -scaled_height % STRIDE), (0, -scaled_width % STRIDE), (0, 0)),
                    constant_values=PAD_VALUE)
    batch = torch.from_numpy(padded.transpose(2, 0, 1)[None].astype(np.float32) / 256 - 0.5)
    param = next(model.parameters())
    with torch.inference_mode():
        fields, heatmaps = model(batch.to(param.device, param.dtype))

    def to_image_size(output: torch.Tensor) -> np.ndarray:
        maps = output[0].float().cpu().numpy().transpose(1, 2, 0)
        maps = _resize(maps, maps.shape[0] * STRIDE, maps.shape[1] * STRIDE)[:scaled_height, :scaled_width]
        return _resize(maps, height, width).astype(np.float64)

    return to_image_size(heatmaps), to_image_size(fields)


def find_peaks(heatmaps: np.ndarray) -> list[np.ndarray]:
    """Per keypoint, its candidates as rows (x, y, score, id): local maxima (not below any of the 4 neighbours) of
    the smoothed heatmap over the threshold, scored by the heatmap itself; ids count up over all keypoints."""
    from scipy.ndimage import gaussian_filter

    peaks, next_id = [], 0
    for part in range(KEYPOINTS):
        heatmap = heatmaps[..., part]
        smooth = gaussian_filter(heatmap, sigma=PEAK_SIGMA)
        padded = np.pad(smooth, 1)  # zero outside: a border point compares with 0
        is_peak = ((smooth >= padded[:-2, 1:-1]) & (smooth >= padded[2:, 1:-1]) & (smooth >= padded[1:-1, :-2])
                   & (smooth >= padded[1:-1, 2:]) & (smooth > PEAK_THRESHOLD))
        ys, xs = np.nonzero(is_peak)
        ids = np.arange(next_id, next_id + len(xs))
        peaks.append(np.stack([xs, ys, heatmap[ys, xs], ids], axis=1).astype(np.float64).reshape(-1, 4))
        next_id += len(xs)
    return peaks


def _limb_score(field: np.ndarray, a: np.ndarray, b: np.ndarray, image_height: int) -> float | None:
    """The mean of the field along a -> b projected on its direction, less a penalty for limbs over half the image's
    height; None unless over 80% of the samples pass the threshold and the score is positive."""
    vector = b[:2] - a[:2]
    norm = max(0.001, math.hypot(*vector))
    direction = vector / norm
    xs = np.rint(np.linspace(a[0], b[0], PAF_SAMPLES)).astype(int)
    ys = np.rint(np.linspace(a[1], b[1], PAF_SAMPLES)).astype(int)
    along = field[ys, xs] @ direction
    score = along.mean() + min(0.5 * image_height / norm - 1, 0)
    if (along > PAF_THRESHOLD).sum() > 0.8 * PAF_SAMPLES and score > 0:
        return float(score)
    return None


def connect_limbs(peaks: list[np.ndarray], fields: np.ndarray) -> list[list[tuple[int, int, float]] | None]:
    """Per limb, its connections (id of keypoint a, id of keypoint b, score), best first, each candidate used once
    and at most as many as the fewer candidates; None where either keypoint has no candidate."""
    limbs = []
    for (part_a, part_b), channels in zip(LIMBS, LIMB_FIELDS):
        candidates_a, candidates_b = peaks[part_a], peaks[part_b]
        if not len(candidates_a) or not len(candidates_b):
            limbs.append(None)
            continue
        field = fields[..., list(channels)]
        scored = [(i, j, score) for i, a in enumerate(candidates_a) for j, b in enumerate(candidates_b)
                  if (score := _limb_score(field, a, b, fields.shape[0])) is not None]
        used_a, used_b, connections = set(), set(), []
        for i, j, score in sorted(scored, key=lambda candidate: candidate[2], reverse=True):
            if i in used_a or j in used_b:
                continue
            used_a.add(i)
            used_b.add(j)
            connections.append((int(candidates_a[i, 3]), int(candidates_b[j, 3]), score))
            if len(connections) >= min(len(candidates_a), len(candidates_b)):
                break
        limbs.append(connections)
    return limbs


def assemble_people(peaks: list[np.ndarray], limbs: list[list[tuple[int, int, float]] | None]) -> list[list[int]]:
    """People as the candidate id of each of the 18 keypoints (-1: none), grown limb by limb: a connection extends
    the person holding either end, merges two people who share no keypoint, or (among the first 17 limbs) starts a
    new person. People with fewer than 4 keypoints or a mean score under 0.4 are dropped."""
    scores = np.concatenate([p[:, 2] for p in peaks]) if peaks else np.zeros(0)
    people: list[np.ndarray] = []  # rows: 18 ids, total score, keypoint count
    for k, connections in enumerate(limbs):
        if connections is None:
            continue
        part_a, part_b = LIMBS[k]
        for id_a, id_b, score in connections:
            holding = [n for n, person in enumerate(people) if person[part_a] == id_a or person[part_b] == id_b][:2]
            if len(holding) == 1 or (len(holding) == 2 and ((people[holding[0]][:KEYPOINTS] >= 0)
                                                            & (people[holding[1]][:KEYPOINTS] >= 0)).any()):
                person = people[holding[0]]
                if len(holding) == 2 or person[part_b] != id_b:
                    person[part_b] = id_b
                    person[-1] += 1
                    person[-2] += scores[id_b] + score
            elif len(holding) == 2:  # disjoint: one person
                first, second = people[holding[0]], people.pop(holding[1])
                first[:KEYPOINTS] = np.maximum(first[:KEYPOINTS], second[:KEYPOINTS])
                first[-2:] += second[-2:]
                first[-2] += score
            elif k < NEW_PERSON_LIMBS:
                person = np.full(KEYPOINTS + 2, -1.0)
                person[part_a], person[part_b] = id_a, id_b
                person[-1], person[-2] = 2, scores[id_a] + scores[id_b] + score
                people.append(person)
    return [[int(i) for i in person[:KEYPOINTS]] for person in people
            if person[-1] >= MIN_PARTS and person[-2] / person[-1] >= MIN_MEAN_SCORE]


def draw_people(people: list[list[int]], candidates: np.ndarray, height: int, width: int) -> np.ndarray:
    """The skeletons on a black height x width RGB canvas."""
    cv2 = opencv()
    canvas = np.zeros((height, width, 3), np.uint8)
    for person in people:
        # positions normalised to the canvas and scaled back, as the extension's keypoints are (a pixel may move)
        points = [None if i < 0 else (candidates[i, 0] / width * width, candidates[i, 1] / height * height)
                  for i in person]
        for (a, b), color in zip(LIMBS[:DRAWN_LIMBS], COLORS):
            if points[a] is None or points[b] is None:
                continue
            (xa, ya), (xb, yb) = points[a], points[b]
            length = ((xa - xb) ** 2 + (ya - yb) ** 2) ** 0.5
            angle = math.degrees(math.atan2(ya - yb, xa - xb))
            polygon = cv2.ellipse2Poly((int((xa + xb) / 2), int((ya + yb) / 2)), (int(length / 2), STICK_WIDTH),
                                       int(angle), 0, 360, 1)
            cv2.fillConvexPoly(canvas, polygon, [int(c * 0.6) for c in color])
        for point, color in zip(points, COLORS):
            if point is not None:
                cv2.circle(canvas, (int(point[0]), int(point[1])), POINT_RADIUS, color, thickness=-1)
    return canvas


def pose_map(heatmaps: np.ndarray, fields: np.ndarray) -> np.ndarray:
    """The drawn skeletons of the people in the network's outputs (at the image's size), H x W x 3 uint8."""
    peaks = find_peaks(heatmaps)
    people = assemble_people(peaks, connect_limbs(peaks, fields))
    return draw_people(people, np.concatenate(peaks), *heatmaps.shape[:2])


def detect(model: BodyPoseNet, image: Image.Image, resolution: float, threshold_a: float,
           threshold_b: float) -> Image.Image:
    """The openpose module's map: the people's skeletons on black, at the scaled size."""
    pixels, size = resize_with_pad(image, resolution)
    heatmaps, fields = predict(model, np.ascontiguousarray(pixels[..., ::-1]))
    return to_image(pose_map(heatmaps, fields)[:size[0], :size[1]])
