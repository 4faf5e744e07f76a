"""Write tiny random ControlNet annotators (the preprocessors' networks), for tests and the demo.

    python -m engine.tiny.annotators --models-dir DIR

writes DIR/ControlNetAnnotators/{midas,depth_anything,depth_anything_v2}/ in the layout the bake writes from the
real repositories (engine/controlnet/annotators.py): a DPT-Hybrid (BiT backbone) and Depth Anything models (DINOv2
backbone) at tiny widths, saved with save_pretrained, and their preprocessor_config.json; and hed/ControlNetHED.pth,
lineart/sk_model.pth and lineart/sk_model2.pth, the line networks (engine/controlnet/line_networks.py) at tiny
widths, as the real files' PyTorch state dicts. Weights come from fixed seeds: the files are the same on every run.
Their maps are random patterns that follow the image.
It writes the tiny openpose body network too (engine/tiny/openpose.py).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, DPTConfig, DPTForDepthEstimation

from ..controlnet.annotators import ANNOTATORS_SUBDIR, PROCESSOR_CONFIG, WEIGHTS_FILES
from ..controlnet.line_networks import HED, LineartGenerator
from ..controlnet.preprocessors import find_preprocessor
from .openpose import write_tiny_openpose

SEED = 1234
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
MIDAS_SIZE = 64  # the tiny DPT-Hybrid's square input (the real one: 384)
DEPTH_ANYTHING_SIZE = 56  # the tiny Depth Anything processor's short side (the real one: 518)
_LAYERS = {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2, "intermediate_size": 64}
TINY_HED_BLOCKS = [(4, 2), (8, 2), (8, 3), (8, 3), (8, 3)]  # (width, convolutions); the real one's: 64 ... 512


def tiny_midas_config() -> DPTConfig:
    """DPT-Hybrid as Intel/dpt-hybrid-midas is built (three BiT stages, the first two feeding the neck as they
    are, ViT layers, project readout), tiny."""
    grid = MIDAS_SIZE // 16
    backbone = {"model_type": "bit", "layer_type": "bottleneck", "global_padding": "same", "num_groups": 4,
                "embedding_dynamic_padding": True, "embedding_size": 16, "depths": [1, 1, 1],
                "hidden_sizes": [16, 32, 64], "out_features": ["stage1", "stage2", "stage3"]}
    return DPTConfig(is_hybrid=True, image_size=MIDAS_SIZE, patch_size=16, backbone_config=backbone,
                     backbone_featmap_shape=[1, 64, grid, grid], backbone_out_indices=[0, 1, 2, 3],
                     readout_type="project", reassemble_factors=[1, 1, 1, 0.5], neck_hidden_sizes=[16, 32, 32, 32],
                     fusion_hidden_size=16, head_hidden_size=8, **_LAYERS)


def tiny_depth_anything_config() -> DepthAnythingConfig:
    """Depth Anything (a DINOv2 backbone, patch 14, DPT neck and head), tiny."""
    backbone = {"model_type": "dinov2", "image_size": DEPTH_ANYTHING_SIZE, "patch_size": 14,
                "out_indices": [1, 2, 3, 4], "reshape_hidden_states": False, **_LAYERS}
    return DepthAnythingConfig(backbone_config=backbone, patch_size=14, reassemble_hidden_size=32,
                               neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16, head_hidden_size=8)


def _processor_config(size: int, multiple: int, mean: list[float], std: list[float]) -> dict:
    """The keys of the real repositories' preprocessor_config.json (transformers' DPTImageProcessor)."""
    return {"image_processor_type": "DPTImageProcessor", "do_resize": True, "size": {"height": size, "width": size},
            "keep_aspect_ratio": multiple > 1, "ensure_multiple_of": multiple, "resample": 3, "do_rescale": True,
            "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": mean, "image_std": std, "do_pad": False}


def write_tiny_annotators(models_dir: Path) -> list[Path]:
    """models_dir/ControlNetAnnotators/<name>/ for each depth network, and the line networks' files; the depth
    folders and the files written."""
    networks = {
        "midas": (DPTForDepthEstimation, tiny_midas_config(), _processor_config(MIDAS_SIZE, 1, [0.5] * 3, [0.5] * 3)),
        "depth_anything": (DepthAnythingForDepthEstimation, tiny_depth_anything_config(),
                           _processor_config(DEPTH_ANYTHING_SIZE, 14, IMAGENET_MEAN, IMAGENET_STD)),
        "depth_anything_v2": (DepthAnythingForDepthEstimation, tiny_depth_anything_config(),
                              _processor_config(DEPTH_ANYTHING_SIZE, 14, IMAGENET_MEAN, IMAGENET_STD)),
    }
    folders = []
    for index, (name, (model_class, config, processor)) in enumerate(networks.items()):
        folder = Path(models_dir) / ANNOTATORS_SUBDIR / name
        folder.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(SEED + index)
        model_class(config).eval().save_pretrained(folder)
        (folder / PROCESSOR_CONFIG).write_text(json.dumps(processor, indent=2) + "\n")
        folders.append(folder)
    return folders + write_tiny_line_networks(models_dir) + [write_tiny_openpose(models_dir).parent]


def tiny_hed() -> HED:
    """HED at tiny widths, its input offset a mid grey."""
    model = HED(TINY_HED_BLOCKS)
    with torch.no_grad():
        model.norm.fill_(127.0)
    return model


def tiny_lineart() -> LineartGenerator:
    return LineartGenerator(4, [8, 16], 3, [8, 4], 1)  # the real one's: 64, [128, 256], 3, [128, 64], 1


def write_tiny_line_networks(models_dir: Path) -> list[Path]:
    """The line networks' files, in models_dir/ControlNetAnnotators/<module's folder>/: the files written."""
    files = []
    for index, (module, build) in enumerate({"hed": tiny_hed, "lineart": tiny_lineart,
                                             "lineart_coarse": tiny_lineart}.items()):
        path = Path(models_dir) / ANNOTATORS_SUBDIR / find_preprocessor(module).annotator / WEIGHTS_FILES[module].file
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(SEED + 10 + index)
        torch.save(build().state_dict(), path)
        files.append(path)
    return files


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    for folder in write_tiny_annotators(args.models_dir):
        print(folder)


if __name__ == "__main__":
    main()
