"""Stand-in face-restoration files for tests and the demo: a YuNet-format face detector (ONNX) that finds a
"face" of known landmarks in every pure-red 32 x 32 cell of the image (or one face in any image), and GFPGAN and
CodeFormer networks with random weights, built from spandrel's own classes and written under A1111's file names.

    python -m engine.tiny.faces --models-dir DIR

writes what the demo needs for restore_faces: DIR/FaceDetection/face_detection_yunet_2023mar.onnx (the detector
that finds one face in any image, so that restoration visibly runs) and DIR/Codeformer/codeformer-v0.1.0.pth. The
networks are only as small as spandrel recognises them: CodeFormer keeps its full-size image encoder and decoder
(138 MB in float16) around a small transformer, GFPGAN has its full size (167 MB). Writing the detector needs the
onnx package (the dev extra).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from ..postprocess.face_restoration import DETECTOR_FILE, RESTORERS

CELL = 32  # the detector's stride that fires; the others never do
# a detected face, relative to its cell's top-left corner, in cells: box (centre x, centre y, log w, log h) and
# the landmarks as YuNet orders them (right eye, left eye, nose, right and left mouth corners: the subject's)
FACE_BOX = (0.5, 0.5, 0.0, 0.0)
EVERY_CELL_BOX = (0.5, 0.5, 2.0, 2.0)  # boxes of 7 cells, which overlap so much that one face is left
FACE_LANDMARKS = ((0.75, 0.35), (0.25, 0.35), (0.5, 0.6), (0.7, 0.85), (0.3, 0.85))


def write_detector(path: Path, every_cell: bool = False) -> Path:
    """The detector: a cell's score is its mean red / 255 (pure red: 1); with `every_cell`, 1 everywhere, with
    boxes so large that non-maximum suppression leaves one face."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    constants = {
        "score_scale": np.float32(0 if every_cell else 1 / 255), "score_offset": np.float32(1 if every_cell else 0),
        "zero": np.float32(0), "red_start": np.array([2], np.int64), "red_end": np.array([3], np.int64),
        "channel_axis": np.array([1], np.int64), "per_cell": np.array([1, -1, 1], np.int64),
        "box": np.array(EVERY_CELL_BOX if every_cell else FACE_BOX, np.float32).reshape(1, 1, 4),
        "landmarks": np.array(FACE_LANDMARKS, np.float32).reshape(1, 1, 10),
    }
    node = helper.make_node
    nodes = [node("Slice", ["input", "red_start", "red_end", "channel_axis"], ["red"])]  # the input is BGR
    for stride in (8, 16, 32):
        scale, offset = ("score_scale", "score_offset") if stride == CELL else ("zero", "zero")
        nodes += [
            node("AveragePool", ["red"], [f"mean_{stride}"], kernel_shape=[stride, stride], strides=[stride, stride]),
            node("Reshape", [f"mean_{stride}", "per_cell"], [f"cells_{stride}"]),
            node("Mul", [f"cells_{stride}", scale], [f"scaled_{stride}"]),
            node("Add", [f"scaled_{stride}", offset], [f"cls_{stride}"]),
            node("Identity", [f"cls_{stride}"], [f"obj_{stride}"]),
            node("Mul", [f"cells_{stride}", "zero"], [f"zeros_{stride}"]),
            node("Add", [f"zeros_{stride}", "box"], [f"bbox_{stride}"]),
            node("Add", [f"zeros_{stride}", "landmarks"], [f"kps_{stride}"]),
        ]
    outputs = [f"{kind}_{stride}" for kind in ("cls", "obj", "bbox", "kps") for stride in (8, 16, 32)]
    graph = helper.make_graph(
        nodes, "tiny-yunet", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, "h", "w"])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, None, None]) for name in outputs],
        [numpy_helper.from_array(np.asarray(value), name) for name, value in constants.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


def face_landmarks(row: int, column: int) -> np.ndarray:
    """The landmarks the detector reports for the cell (row, column), left to right in the image."""
    points = np.array(FACE_LANDMARKS, np.float32)[[1, 0, 2, 4, 3]]
    return (points + (column, row)) * CELL


def _gfpgan() -> torch.nn.Module:
    from spandrel.architectures.GFPGAN import GFPGAN

    return GFPGAN(out_size=512, num_style_feat=512, channel_multiplier=2, decoder_load_path=None, fix_decoder=False,
                  num_mlp=8, input_is_latent=True, different_w=True, narrow=1, sft_half=True)


def _codeformer() -> torch.nn.Module:
    from spandrel_extra_arches.architectures.CodeFormer import CodeFormer

    return CodeFormer(dim_embd=64, n_head=8, n_layers=1, codebook_size=64, latent_size=256, connect_list=["32", "64"])


NETWORKS = {"GFPGAN": (_gfpgan, 0), "CodeFormer": (_codeformer, 1)}  # restorer -> (its network, the seed)


def write_restorer(models_dir: Path, name: str) -> Path:
    """The restorer `name` (a RESTORERS key) in its A1111 folder under its A1111 file name, with random weights
    (seeded, in float16 to halve the file), in the checkpoints' {"params_ema": state dict} layout."""
    from ..postprocess.upscalers import _import_spandrel

    _import_spandrel()
    build, seed = NETWORKS[name]
    torch.manual_seed(seed)
    state = {key: value.half() if value.is_floating_point() else value for key, value in build().state_dict().items()}
    path = Path(models_dir) / RESTORERS[name].folder / RESTORERS[name].file
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"params_ema": state}, path)
    return path


def write_restorers(models_dir: Path) -> None:
    """Every restorer, GFPGAN and CodeFormer."""
    for name in NETWORKS:
        write_restorer(models_dir, name)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    print(write_detector(args.models_dir / DETECTOR_FILE, every_cell=True))
    print(write_restorer(args.models_dir, "CodeFormer"))


if __name__ == "__main__":
    main()
