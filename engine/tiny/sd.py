"""Write the tiny demo / test checkpoint: SD 1.x's architecture at tiny widths, random weights.

    python -m engine.tiny --models-dir DIR [--family sd15|sd2|sdxl|sdxl-refiner]
        [--inpainting | --v-pred | --controlnet]

writes DIR/Stable-diffusion/tiny-sd15.safetensors (with --inpainting, tiny-sd15-inpainting, a
9-channel UNet; with --family sdxl, tiny-sdxl: SDXL base's architecture, two text encoders and the
text_time UNet, and with --inpainting too, tiny-sdxl-inpainting; sdxl-refiner, tiny-sdxl-refiner) in
the A1111 single-file layout, so it loads through the same path as real checkpoints. --family sd2
writes tiny-sd2 (SD 2.x 512-base: OpenCLIP's whole text tower in its own layout), with --inpainting
tiny-sd2-inpainting. --v-pred makes a v-prediction checkpoint as the real ones are recognised:
tiny-sd2-768, whose UNet A1111's test finds v-parameterized (its output bias lowered), and
tiny-sdxl-vpred, tiny-sdxl's weights with the `v_pred` and `ztsnr` marker tensors NoobAI-XL v-pred files
carry. Weights come from a fixed seed: the file is the same on every run. --controlnet writes
the family's tiny ControlNet instead (engine/tiny/controlnet.py).
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
from ..families.prediction import V_PRED_KEY, ZTSNR_KEY
from ..families.sd2 import to_sd2_single_file
from ..families.sgm_format import to_sdxl_refiner_single_file, to_sdxl_single_file
from .controlnet import CONTROLNETS, write_tiny_controlnet

ARCHITECTURE = "tiny-sd15"
INPAINTING = "tiny-sd15-inpainting"  # the same with a 9-channel UNet, as SD 1.5 inpainting checkpoints
SDXL = "tiny-sdxl"
SDXL_INPAINTING = "tiny-sdxl-inpainting"  # with a 9-channel UNet, as SD-XL Inpainting 0.1
SDXL_REFINER = "tiny-sdxl-refiner"  # OpenCLIP only, aesthetic-score time ids
SD2 = "tiny-sd2"
SD2_INPAINTING = "tiny-sd2-inpainting"
SD2_V = "tiny-sd2-768"  # SD 2.x 768-v: v-prediction
FAMILIES = {"sd15": ARCHITECTURE, "sd2": SD2, "sdxl": SDXL, "sdxl-refiner": SDXL_REFINER}
INPAINTING_FAMILIES = {"sd15": INPAINTING, "sd2": SD2_INPAINTING, "sdxl": SDXL_INPAINTING}
V_PRED_FAMILIES = {"sd2": SD2_V, "sdxl": SDXL}
SDXL_V_PRED_NAME = "tiny-sdxl-vpred"
V_OUTPUT_SHIFT = -2.0  # added to a v UNet's output bias: A1111's test (mean output - input < -1) finds it v
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


def build_tiny_sd2_modules(architecture: str = SD2) -> tuple[UNet2DConditionModel, AutoencoderKL,
                                                              CLIPTextModelWithProjection]:
    """UNet, VAE and the whole OpenCLIP text tower (projection and one layer more than the text_encoder config:
    the layer diffusers' loader drops) of a tiny SD 2.x; the same weights for 512-base and 768-v but the v UNet's
    output bias."""
    config = architecture_dir(architecture)
    torch.manual_seed(SEED)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(config / "unet"))
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(config / "vae"))
    tower = CLIPTextConfig.from_pretrained(config / "text_encoder")
    tower.num_hidden_layers += 1
    open_clip = CLIPTextModelWithProjection(tower)
    if architecture == SD2_V:
        with torch.no_grad():
            unet.conv_out.bias += V_OUTPUT_SHIFT
    return unet, vae, open_clip


def tiny_state_dict(architecture: str, v_pred_markers: bool = False) -> dict[str, torch.Tensor]:
    """The tiny checkpoint's weights in the A1111 single-file layout of its architecture, with `v_pred_markers`
    the empty `v_pred` and `ztsnr` tensors too."""
    markers = {key: torch.tensor([]) for key in (V_PRED_KEY, ZTSNR_KEY)} if v_pred_markers else {}
    if architecture in (SDXL, SDXL_INPAINTING):
        return to_sdxl_single_file(**build_tiny_sdxl_modules(architecture)) | markers
    if architecture in (SD2, SD2_INPAINTING, SD2_V):
        return to_sd2_single_file(*build_tiny_sd2_modules(architecture)) | markers
    if architecture == SDXL_REFINER:
        return to_sdxl_refiner_single_file(**build_tiny_sdxl_modules(architecture)) | markers
    return to_single_file(*build_tiny_modules(architecture)) | markers


def write_tiny_checkpoint(models_dir: Path, name: str | None = None, architecture: str = ARCHITECTURE,
                          v_pred_markers: bool = False) -> Path:
    path = Path(models_dir) / CHECKPOINTS_SUBDIR / f"{name or architecture}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tiny_state_dict(architecture, v_pred_markers), path, metadata={"format": "pt"})
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", type=Path, required=True)
    parser.add_argument("--family", choices=FAMILIES, default="sd15", help="model family (default: sd15)")
    variant = parser.add_mutually_exclusive_group()
    variant.add_argument("--inpainting", action="store_true", help="a 9-channel inpainting UNet (sd15, sd2, sdxl)")
    variant.add_argument("--v-pred", action="store_true", help="v-prediction: SD 2.x 768-v, or SDXL with the "
                         "v_pred and ztsnr markers (sd2, sdxl)")
    variant.add_argument("--controlnet", action="store_true", help="the family's tiny ControlNet (sd15 and sdxl)")
    parser.add_argument("--name", help="checkpoint file name, without extension (default: the architecture; "
                        f"{SDXL_V_PRED_NAME} for sdxl --v-pred)")
    args = parser.parse_args(argv)
    if args.controlnet:
        if args.family not in CONTROLNETS:
            parser.error(f"--controlnet is offered for --family {' and '.join(CONTROLNETS)} only")
        print(write_tiny_controlnet(args.models_dir, args.family, args.name))
        return
    flag, table = ("--inpainting", INPAINTING_FAMILIES) if args.inpainting else \
        ("--v-pred", V_PRED_FAMILIES) if args.v_pred else ("--family", FAMILIES)
    if args.family not in table:
        parser.error(f"{flag} is offered for --family {', '.join(table)} only")
    architecture = table[args.family]
    markers = args.v_pred and args.family == "sdxl"
    name = args.name or (SDXL_V_PRED_NAME if markers else None)
    print(write_tiny_checkpoint(args.models_dir, name, architecture, v_pred_markers=markers))


if __name__ == "__main__":
    main()
