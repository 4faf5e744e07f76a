"""SD 2.x: one OpenCLIP ViT-H text encoder and a 1024-wide context; 512-base checkpoints predict the noise,
768-v ones v (found as A1111 finds it: by running the UNet, `v_parameterized`); inpainting ones have a 9-channel
UNet.

A1111 conditions on the penultimate of OpenCLIP-H's 24 layers through its final norm, pads after the end token
with 0, and ignores CLIP skip (its OpenCLIP embedder never reads CLIP_stop_at_last_layers). diffusers' SD 2.x
text encoder is that tower without its last layer (its loader drops `resblocks.23`; converted folders have 23
layers), so the encoder's own output is exactly that hidden state.

Single files keep the text tower in OpenCLIP's layout under `cond_stage_model.model.` (all 24 layers, the
text projection and logit scale, which diffusers doesn't use); UNet and VAE are in SD 1.x's LDM layout.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors import safe_open

from .base import ModelFamily, TextEncoderSpec, UnsupportedCheckpoint
from .ldm_format import UNET_PREFIX, VAE_PREFIX, unet_to_ldm, vae_to_ldm
from .sd1 import CONV_IN, PREVIEW_COEFFICIENTS, VARIANT_BY_CHANNELS
from .sgm_format import open_clip_to_sgm

OPEN_CLIP_PREFIX = "cond_stage_model.model."
IN_PROJ = OPEN_CLIP_PREFIX + "transformer.resblocks.0.attn.in_proj_weight"  # (3 * width, width)
# (UNet width, text width) -> the member whose configs we ship; its 768-v twin
_BY_WIDTHS = {(320, 1024): "sd2", (32, 48): "tiny-sd2"}
V_TWINS = {"sd2": "sd2-768", "tiny-sd2": "tiny-sd2-768"}
OPEN_CLIP_H = TextEncoderSpec("text_encoder", None, penultimate=False, pad_with_zero=True, clip_skip_option=None)
_V_TEST_INPUT = 0.5  # A1111's test: latents and context all 0.5, timestep 999; v if mean(output - latents) < -1
_V_TEST_TIMESTEP = 999
_V_TEST_THRESHOLD = -1.0


class SD2(ModelFamily):
    name = "SD 2.x"
    key = "sd2"
    preview_coefficients = PREVIEW_COEFFICIENTS  # SD 1.x's VAE

    def recognises(self, keys: set[str]) -> bool:
        return any(key.startswith(OPEN_CLIP_PREFIX) for key in keys)

    def architecture(self, shapes: dict[str, list[int]], name: str) -> str:
        """The 512-base (or inpainting) config; `v_parameterized` tells a 768-v checkpoint from a 512-base one."""
        width, channels = shapes[CONV_IN][:2]
        text_width = shapes[IN_PROJ][1] if IN_PROJ in shapes else None
        base = _BY_WIDTHS.get((width, text_width))
        if base is None or channels not in VARIANT_BY_CHANNELS:
            raise UnsupportedCheckpoint(f"{name}: unknown SD 2.x variant (UNet width {width}, text width "
                                        f"{text_width}, {channels} input channels)")
        return base + VARIANT_BY_CHANNELS[channels]

    def text_encoders(self, pipe) -> tuple[TextEncoderSpec, ...]:
        return (OPEN_CLIP_H,)


def uses_open_clip(folder: Path) -> bool:
    """Whether a diffusers folder's text encoder is OpenCLIP's (GELU; OpenAI's CLIP-L, SD 1.x's, uses quick GELU):
    an SD 2.x folder, though its pipeline class is SD 1.x's."""
    config = folder / "text_encoder" / "config.json"
    return config.is_file() and json.loads(config.read_text()).get("hidden_act") == "gelu"


@torch.inference_mode()
def v_parameterized(unet) -> bool:
    """A1111's test of an SD 2.x UNet (`is_using_v_parameterization_for_sd2`): given latents of 0.5 at timestep
    999 and a two-token context of 0.5, a v-prediction UNet's output lies well below its input (mean difference
    under -1). A1111 runs it in float32 on the CPU; so does this when `unet` is."""
    parameter = next(unet.parameters())
    latents = torch.full((1, unet.config.in_channels, 8, 8), _V_TEST_INPUT, dtype=parameter.dtype,
                         device=parameter.device)
    context = torch.full((1, 2, unet.config.cross_attention_dim), _V_TEST_INPUT, dtype=parameter.dtype,
                         device=parameter.device)
    output = unet(latents, torch.tensor([_V_TEST_TIMESTEP], device=parameter.device),
                  encoder_hidden_states=context).sample
    return (output.float() - latents.float()).mean().item() < _V_TEST_THRESHOLD


def file_v_parameterized(path: Path, config_dir: Path) -> bool:
    """`v_parameterized` for the UNet of a single file, built with the config in `config_dir`, in float32 on the CPU
    as A1111 builds it (only the UNet's tensors are read)."""
    from diffusers import UNet2DConditionModel  # a slow import, for this slow path only

    with safe_open(path, framework="pt") as weights:
        state = {key: weights.get_tensor(key) for key in weights.keys() if key.startswith(UNET_PREFIX)}
    unet = UNet2DConditionModel.from_single_file(state, config=str(config_dir), subfolder="unet",
                                                 dtype=torch.float32, local_files_only=True)
    return v_parameterized(unet)


def to_sd2_single_file(unet, vae, open_clip) -> dict[str, torch.Tensor]:
    """One state dict in the SD 2.x single-file layout, from a diffusers UNet and VAE and the whole OpenCLIP text
    tower as a transformers CLIPTextModelWithProjection (all its layers: diffusers' loader drops the last)."""
    state = {UNET_PREFIX + k: v for k, v in unet_to_ldm(unet).items()}
    state.update({VAE_PREFIX + k: v for k, v in vae_to_ldm(vae).items()})
    state.update({OPEN_CLIP_PREFIX + k: v for k, v in open_clip_to_sgm(open_clip).items()})
    state[OPEN_CLIP_PREFIX + "logit_scale"] = torch.tensor(math.log(1 / 0.07))  # CLIP's initial temperature
    return state
