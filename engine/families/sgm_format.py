"""Write diffusers SDXL weights in the original (SGM / A1111) single-file layout of sd_xl_base_1.0.

The UNet and VAE keep SD 1.x's LDM names (engine/families/ldm_format.py; the UNet adds `label_emb.`, its
text_time embedding). The text encoders sit under `conditioner.embedders.N.`: CLIP ViT-L in the
transformers layout (`...transformer.text_model.*`), OpenCLIP ViT-bigG in OpenCLIP's own
(`...model.transformer.resblocks.N.attn.in_proj_weight`, q, k and v stacked; `text_projection` stored
as the transpose of transformers' Linear weight). The refiner has only the OpenCLIP encoder, as
embedder 0. This is the inverse of diffusers' single-file loading (`convert_open_clip_checkpoint`,
`convert_ldm_unet_checkpoint`); a test round-trips it through `from_single_file`.
"""

from __future__ import annotations

import torch

from .ldm_format import UNET_PREFIX, VAE_PREFIX, clip_to_ldm, unet_to_ldm, vae_to_ldm

CLIP_L_PREFIX = "conditioner.embedders.0.transformer."
OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."
REFINER_OPEN_CLIP_PREFIX = "conditioner.embedders.0.model."

_OPEN_CLIP_FIXED = {
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "final_layer_norm.weight": "ln_final.weight",
    "final_layer_norm.bias": "ln_final.bias",
}
_OPEN_CLIP_LAYER = {"self_attn.out_proj": "attn.out_proj", "layer_norm1": "ln_1", "layer_norm2": "ln_2",
                    "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}


def open_clip_to_sgm(text_encoder) -> dict[str, torch.Tensor]:
    """A transformers CLIPTextModelWithProjection's weights in OpenCLIP's layout."""
    weights = {k.removeprefix("text_model."): v.detach() for k, v in text_encoder.state_dict().items()}
    state = {"text_projection": weights.pop("text_projection.weight").T}
    for key in [k for k in weights if k.endswith(("q_proj.weight", "q_proj.bias"))]:
        layer, _, kind = key.rpartition(".q_proj.")  # "encoder.layers.N.self_attn", "weight" | "bias"
        stacked = torch.cat([weights.pop(f"{layer}.{p}_proj.{kind}") for p in "qkv"])
        state[_resblock(layer.removesuffix(".self_attn")) + f".attn.in_proj_{kind}"] = stacked
    for key, value in weights.items():
        if key in _OPEN_CLIP_FIXED:
            state[_OPEN_CLIP_FIXED[key]] = value
            continue
        layer, _, rest = key.partition(".layers.")  # "encoder", "N.layer_norm1.weight"
        if layer != "encoder":
            raise KeyError(f"no OpenCLIP name for text encoder key {key!r}")
        index, _, tail = rest.partition(".")
        module, _, param = tail.rpartition(".")
        state[f"{_resblock('encoder.layers.' + index)}.{_OPEN_CLIP_LAYER[module]}.{param}"] = value
    return {k: v.contiguous() for k, v in state.items()}


def _resblock(layer: str) -> str:
    """"encoder.layers.N" -> "transformer.resblocks.N"."""
    return "transformer.resblocks." + layer.rpartition(".")[2]


def to_sdxl_single_file(unet, vae, text_encoder, text_encoder_2) -> dict[str, torch.Tensor]:
    """One state dict in sd_xl_base_1.0's layout from diffusers/transformers modules."""
    state = _unet_and_vae(unet, vae)
    state.update({CLIP_L_PREFIX + k: v for k, v in clip_to_ldm(text_encoder).items()})
    state.update({OPEN_CLIP_PREFIX + k: v for k, v in open_clip_to_sgm(text_encoder_2).items()})
    return state


def to_sdxl_refiner_single_file(unet, vae, text_encoder_2) -> dict[str, torch.Tensor]:
    """One state dict in sd_xl_refiner_1.0's layout: the OpenCLIP encoder is its only embedder."""
    state = _unet_and_vae(unet, vae)
    state.update({REFINER_OPEN_CLIP_PREFIX + k: v for k, v in open_clip_to_sgm(text_encoder_2).items()})
    return state


def _unet_and_vae(unet, vae) -> dict[str, torch.Tensor]:
    state = {UNET_PREFIX + k: v for k, v in unet_to_ldm(unet).items()}
    state.update({VAE_PREFIX + k: v for k, v in vae_to_ldm(vae).items()})
    return state
