"""Write the tiny demo / test checkpoint: SD 1.x's architecture at tiny widths, random weights.

    python -m engine.tiny --models-dir DIR

writes DIR/Stable-diffusion/tiny-sd15.safetensors (with --inpainting, tiny-sd15-inpainting, a
9-channel UNet) in the A1111 single-file layout, so it loads through
the same path as real checkpoints. Weights come from a fixed seed: the file is the same on every run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel

from .configs import architecture_dir
from .ldm_format import to_single_file
from .models_dir import CHECKPOINTS_SUBDIR

ARCHITECTURE = "tiny-sd15"
INPAINTING = "tiny-sd15-inpainting"  # the same with a 9-channel UNet, as SD 1.5 inpainting checkpoints
SEED = 1234


def build_tiny_modules(architecture: str = ARCHITECTURE) -> tuple[UNet2DConditionModel, AutoencoderKL, CLIPTextModel]:
    config = architecture_dir(architecture)
    torch.manual_seed(SEED)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(config / "unet"))
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(config / "vae"))
    text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(config / "text_encoder"))
    return unet, vae, text_encoder


def write_tiny_checkpoint(models_dir: Path, name: str | None = None, architecture: str = ARCHITECTURE) -> Path:
    path = Path(models_dir) / CHECKPOINTS_SUBDIR / f"{name or architecture}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(to_single_file(*build_tiny_modules(architecture)), path, metadata={"format": "pt"})
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", type=Path, required=True)
    parser.add_argument("--inpainting", action="store_true", help="a 9-channel inpainting UNet")
    parser.add_argument("--name", help="checkpoint file name, without extension (default: the architecture)")
    args = parser.parse_args(argv)
    print(write_tiny_checkpoint(args.models_dir, args.name, INPAINTING if args.inpainting else ARCHITECTURE))


if __name__ == "__main__":
    main()
