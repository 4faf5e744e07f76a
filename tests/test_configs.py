"""The shipped configs (engine/configs): each folder lists what its model_index.json names, the real SDXL
configs build modules of the published sizes (on the meta device: nothing is allocated), and every SDXL
UNet fits its text encoders."""

from __future__ import annotations

import json

import pytest
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from engine.configs import CLIP_TOKENIZER_DIR, CONFIGS_DIR, architecture_dir

ARCHITECTURES = sorted(p.parent.name for p in CONFIGS_DIR.glob("*/model_index.json"))
SDXL_ARCHITECTURES = [a for a in ARCHITECTURES if "sdxl" in a]
TOKENIZERS = {"tokenizer", "tokenizer_2"}  # shipped once, in engine/configs/clip-tokenizer
# pooled OpenCLIP embedding + one addition_time_embed_dim embedding per time id: original size, crop and
# target size (2 each) for the base; the refiner has an aesthetic score instead of the target size
TIME_IDS = {"sdxl": 6, "sdxl-inpainting": 6, "sdxl-refiner": 5}
# published parameter counts; the inpainting UNet's conv_in has 5 more input channels: 5 * 320 * 3 * 3 more
UNET_PARAMETERS = {"sdxl": 2_567_463_684, "sdxl-inpainting": 2_567_463_684 + 14_400, "sdxl-refiner": 2_259_526_660}
VAE_PARAMETERS = 83_653_863  # SD's VAE
CLIP_L_PARAMETERS = 123_060_480  # CLIP ViT-L/14's text model, as in SD 1.5
OPEN_CLIP_BIG_G_PARAMETERS = 694_659_840  # OpenCLIP ViT-bigG/14's text model with its 1280x1280 projection


def read(architecture: str, component: str) -> dict:
    folder = architecture_dir(architecture) / component
    return json.loads(next(folder.glob("*config.json")).read_text())


def components(architecture: str) -> dict[str, str]:
    """model_index.json's components that are present, by name: their classes."""
    index = json.loads((architecture_dir(architecture) / "model_index.json").read_text())
    return {name: value[1] for name, value in index.items() if isinstance(value, list) and value[0] is not None}


def parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_the_architectures_are_found():
    assert {"sd15", "sdxl", "sdxl-inpainting", "sdxl-refiner", "tiny-sdxl-inpainting"} <= set(ARCHITECTURES)
    assert CLIP_TOKENIZER_DIR.name not in ARCHITECTURES


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_each_folder_holds_the_components_its_model_index_names(architecture):
    named = {name: cls for name, cls in components(architecture).items() if name not in TOKENIZERS}
    folders = {p.name for p in architecture_dir(architecture).iterdir() if p.is_dir()}
    assert set(named) == folders
    for name, cls in named.items():
        config = read(architecture, name)
        assert config.get("_class_name", config.get("architectures", [None])[0]) == cls, name


@pytest.mark.parametrize("architecture", SDXL_ARCHITECTURES)
def test_sdxl_unet_fits_its_text_encoders(architecture):
    unet, open_clip = read(architecture, "unet"), read(architecture, "text_encoder_2")
    present = components(architecture)
    encoders = [read(architecture, name) for name in ("text_encoder", "text_encoder_2") if name in present]
    refiner = architecture.endswith("refiner")
    assert len(encoders) == (1 if refiner else 2)
    # the encoders' last hidden states are concatenated along the features for cross-attention
    assert unet["cross_attention_dim"] == sum(encoder["hidden_size"] for encoder in encoders)
    time_ids = TIME_IDS[architecture.removeprefix("tiny-")]
    assert unet["addition_embed_type"] == "text_time"
    assert unet["projection_class_embeddings_input_dim"] == (
        open_clip["projection_dim"] + time_ids * unet["addition_time_embed_dim"])
    assert json.loads((architecture_dir(architecture) / "model_index.json").read_text()).get(
        "requires_aesthetics_score", False) == refiner


@pytest.mark.parametrize("base", ["sdxl", "tiny-sdxl"])
def test_inpainting_is_the_base_with_a_9_channel_unet(base):
    inpainting = f"{base}-inpainting"
    for name in components(base).keys() - TOKENIZERS:
        expected = read(base, name) | ({"in_channels": 9} if name == "unet" else {})
        assert read(inpainting, name) == expected, name
    assert read(base, "unet")["in_channels"] == 4


def test_refiner_shares_the_base_vae_scheduler_and_open_clip():
    for name in ("vae", "scheduler", "text_encoder_2"):
        assert read("sdxl-refiner", name) == read("sdxl", name), name
    assert "text_encoder" not in components("sdxl-refiner")


@pytest.mark.parametrize("architecture", sorted(UNET_PARAMETERS))
def test_sdxl_configs_build_modules_of_the_published_sizes(architecture):
    config = architecture_dir(architecture)
    with init_empty_weights():  # parameters on the meta device: the test allocates no weights
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(config / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(config / "vae"))
        open_clip = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(config / "text_encoder_2"))
        clip_l = None if architecture == "sdxl-refiner" else CLIPTextModel(
            CLIPTextConfig.from_pretrained(config / "text_encoder"))
    assert next(unet.parameters()).device.type == "meta"
    assert parameters(unet) == UNET_PARAMETERS[architecture]
    assert parameters(vae) == VAE_PARAMETERS
    assert parameters(open_clip) == OPEN_CLIP_BIG_G_PARAMETERS
    assert clip_l is None or parameters(clip_l) == CLIP_L_PARAMETERS
    assert vae.config.scaling_factor == 0.13025 and vae.config.force_upcast
    assert open_clip.config.hidden_act == "gelu" and (clip_l is None or clip_l.config.hidden_act == "quick_gelu")
