"""A tiny random openpose body network: the real file's layer names, kernels and output channels (38 vector-field
and 19 heatmap channels), narrow widths, from a fixed seed (the same bytes on every run). Its last heatmap layer is
scaled down so that its heatmaps (near-constant at random) stay under the keypoint threshold: its map is black."""

from __future__ import annotations

from pathlib import Path

import torch

from ..controlnet.annotators import ANNOTATORS_SUBDIR
from ..controlnet.openpose import BACKBONE, FOLDER, HEATMAP_BRANCH, PAF_BRANCH, STAGES, WEIGHTS, BodyPoseNet

SEED = 4321
FEATURES, STAGE_WIDTH = 8, 8  # the real network: 128 and 128 (the backbone up to 512)
BACKBONE_WIDTHS = {"conv1": 4, "conv2": 4, "conv3": 8, "conv4": 8}
OUTPUTS = {PAF_BRANCH: 38, HEATMAP_BRANCH: 19}
HEATMAP_DAMPING = 0.1  # random heatmaps reach ~0.34: this keeps them under 0.1


def tiny_shapes() -> dict[str, torch.Size]:
    """The weights' shapes, chaining each convolution's input channels from the one before."""
    shapes, channels = {}, 3
    for name in (n for n in BACKBONE if n is not None):
        width = FEATURES if name == "conv4_4_CPM" else BACKBONE_WIDTHS[name[:5]]
        shapes[f"{name}.weight"], channels = torch.Size([width, channels, 3, 3]), width
    stage_input = FEATURES
    for stage in range(1, STAGES + 1):
        for branch, outputs in OUTPUTS.items():
            kernels = [3, 3, 3, 1, 1] if stage == 1 else [7, 7, 7, 7, 7, 1, 1]
            channels = stage_input
            for index, kernel in enumerate(kernels, start=1):
                width = outputs if index == len(kernels) else STAGE_WIDTH
                name = f"conv5_{index}_CPM_L{branch}" if stage == 1 else f"Mconv{index}_stage{stage}_L{branch}"
                shapes[f"{name}.weight"], channels = torch.Size([width, channels, kernel, kernel]), width
        stage_input = sum(OUTPUTS.values()) + FEATURES
    return shapes


def write_tiny_openpose(models_dir: Path) -> Path:
    """models_dir/ControlNetAnnotators/openpose/body_pose_model.pth; its path."""
    torch.manual_seed(SEED)
    state = BodyPoseNet(tiny_shapes()).state_dict()
    last = f"Mconv7_stage{STAGES}_L{HEATMAP_BRANCH}"
    for key in (f"{last}.weight", f"{last}.bias"):
        state[key] = state[key] * HEATMAP_DAMPING
    path = Path(models_dir) / ANNOTATORS_SUBDIR / FOLDER / WEIGHTS
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path
