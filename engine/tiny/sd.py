"""Write the tiny demo / test checkpoint: SD 1.x's architecture at tiny widths, random weights.

    python -m engine.tiny --models-dir DIR [--family sd15|sdxl|sdxl-refiner] [--inpainting | --controlnet]

writes DIR/Stable-diffusion/tiny-sd15.safetensors (with --inpainting, tiny-sd15-inpainting, a
9-channel UNet; with --family sdxl, tiny-sdxl: SDXL base's architecture, two text encoders and the
text_time UNet, and with --inpainting too, tiny-sdxl-inpainting; sdxl-refiner, tiny-sdxl-refiner) in
the A1111 single-file layout, so it loads through the same path as real checkpoints. Weights come
from a fixed seed: the file is the same on every run. --controlnet writes the family's tiny ControlNet
instead (engine/tiny/controlnet.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from ..configs import architecture_dir
from ..families.ldm_format import to_single_file
from ..store.models_dir import CHECKPOINTS_SUBDIR
from ..families.sgm_format import to_sdxl_refiner_single_file, to_sdxl_single_file
from .controlnet import CONTROLNETS, write_tiny_controlnet

ARCHITECTURE = "tiny-sd15"
INPAINTING = "tiny-sd15-inpainting"  # the same with a 9-channel UNet, as SD 1.5 inpainting checkpoints
SDXL = "tiny-sdxl"
SDXL_INPAINTING = "tiny-sdxl-inpainting"  # with a 9-channel UNet, as SD-XL Inpainting 0.1
SDXL_REFINER = "tiny-sdxl-refiner"  # OpenCLIP only, aesthetic-score time ids
FAMILIES = {"sd15": ARCHITECTURE, "sdxl": SDXL, "sdxl-refiner": SDXL_REFINER}
INPAINTING_FAMILIES = {"sd15": INPAINTING, "sdxl": SDXL_INPAINTING}
SEED = 1234


def build_tiny_modules(architecture: str = ARCHITECTURE) -> tuple[UNet2DConditionModel, AutoencoderKL, CLIPTextModel]:
    config = architecture_dir(architecture)
    torch.manual_seed(SEED)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(config / "unet"))
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(config / "vae"))
    text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(config / "text_encoder"))
    return unet, vae, text_encoder


def build_tiny_sdxl_modules(architecture: str = SDXL) -> dict[str, torch.nn.Module]:
    """The modules of a tiny SDXL base, inpainting or refiner, by pipeline component name (the refiner
    has no `text_encoder`, only the OpenCLIP `text_encoder_2`)."""
    config = architecture_dir(architecture)
    torch.manual_seed(SEED)
    modules = {
        "unet": UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(config / "unet")),
        "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(config / "vae")),
    }
    if (config / "text_encoder").is_dir():
        modules["text_encoder"] = CLIPTextModel(CLIPTextConfig.from_pretrained(config / "text_encoder"))
    modules["text_encoder_2"] = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(config / "text_encoder_2"))
    return modules


def tiny_state_dict(architecture: str) -> dict[str, torch.Tensor]:
    """The tiny checkpoint's weights in the A1111 single-file layout of its architecture."""
    if architecture in (SDXL, SDXL_INPAINTING):
        return to_sdxl_single_file(**build_tiny_sdxl_modules(architecture))
    if architecture == SDXL_REFINER:
        return to_sdxl_refiner_single_file(**build_tiny_sdxl_modules(architecture))
    return to_single_file(*build_tiny_modules(architecture))


def write_tiny_checkpoint(models_dir: Path, name: str | None = None, architecture: str = ARCHITECTURE) -> Path:
    path = Path(models_dir) / CHECKPOINTS_SUBDIR / f"{name or architecture}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tiny_state_dict(architecture), path, metadata={"format": "pt"})
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", type=Path, required=True)
    parser.add_argument("--family", choices=FAMILIES, default="sd15", help="model family (default: sd15)")
    parser.add_argument("--inpainting", action="store_true", help="a 9-channel inpainting UNet (sd15 and sdxl)")
    parser.add_argument("--controlnet", action="store_true", help="the family's tiny ControlNet (sd15 and sdxl)")
    parser.add_argument("--name", help="checkpoint file name, without extension (default: the architecture)")
    args = parser.parse_args(argv)
    if args.controlnet:
        if args.inpainting or args.family not in CONTROLNETS:
            parser.error(f"--controlnet is offered for --family {' and '.join(CONTROLNETS)}, without --inpainting")
        print(write_tiny_controlnet(args.models_dir, args.family, args.name))
        return
    if args.inpainting and args.family not in INPAINTING_FAMILIES:
        parser.error(f"--inpainting is offered for --family {' and '.join(INPAINTING_FAMILIES)} only")
    architecture = (INPAINTING_FAMILIES if args.inpainting else FAMILIES)[args.family]
    print(write_tiny_checkpoint(args.models_dir, args.name, architecture))


if __name__ == "__main__":
    main()
