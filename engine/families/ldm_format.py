"""Write diffusers Stable Diffusion 1.x weights in the original (LDM / A1111 / civitai) single-file layout.

diffusers reads this layout (`from_single_file`) but has no writer; the tiny demo model needs one so
that it is loaded through exactly the path real checkpoints take. This is the inverse of diffusers'
key mapping for SD 1.x UNets, VAEs and CLIP text encoders; a test round-trips it through
`from_single_file`.
"""

from __future__ import annotations

import re

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_ENCODER_PREFIX = "cond_stage_model.transformer."

_UNET_FIXED = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
    "add_embedding.linear_1": "label_emb.0.0",  # SDXL's text_time embedding (absent from SD 1.x)
    "add_embedding.linear_2": "label_emb.0.2",
}
_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _rename_head(rest: str, table: dict[str, str]) -> str:
    """Rename the leading module path of `rest` ("conv1.weight") by `table`."""
    for old, new in table.items():
        if rest.startswith(old + "."):
            return new + rest[len(old):]
    return rest


def unet_key(key: str, layers_per_block: int, up_blocks_with_attention: set[int]) -> str:
    span = layers_per_block + 1  # LDM numbers resnet/attention layers and the resampler in one sequence
    head = _rename_head(key, _UNET_FIXED)
    if head != key:
        return head
    if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        block, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
        index = 1 + block * span + layer
        return f"input_blocks.{index}.0.{_rename_head(rest, _UNET_RESNET)}" if kind == "resnets" \
            else f"input_blocks.{index}.1.{rest}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"input_blocks.{(int(m[1]) + 1) * span}.0.op.{m[2]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"middle_block.{2 * int(m[1])}.{_rename_head(m[2], _UNET_RESNET)}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
        return f"middle_block.1.{m[1]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        block, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
        index = block * span + layer
        return f"output_blocks.{index}.0.{_rename_head(rest, _UNET_RESNET)}" if kind == "resnets" \
            else f"output_blocks.{index}.1.{rest}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        block = int(m[1])
        position = 2 if block in up_blocks_with_attention else 1
        return f"output_blocks.{block * span + layers_per_block}.{position}.conv.{m[2]}"
    raise KeyError(f"no LDM name for UNet key {key!r}")


def vae_key(key: str, num_blocks: int) -> str:
    part, _, rest = key.partition(".")
    if part in ("quant_conv", "post_quant_conv"):
        return key
    rest = rest.replace("conv_norm_out.", "norm_out.")
    if m := re.fullmatch(r"(down|up)_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", rest):
        block = int(m[2]) if m[1] == "down" else num_blocks - 1 - int(m[2])
        tail = m[4].replace("conv_shortcut.", "nin_shortcut.")
        return f"{part}.{m[1]}.{block}.block.{m[3]}.{tail}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.(.+)", rest):
        return f"{part}.down.{m[1]}.downsample.{m[2]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.(.+)", rest):
        return f"{part}.up.{num_blocks - 1 - int(m[1])}.upsample.{m[2]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", rest):
        return f"{part}.mid.block_{int(m[1]) + 1}.{m[2].replace('conv_shortcut.', 'nin_shortcut.')}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", rest):
        return f"{part}.mid.attn_1.{_rename_head(m[1], _VAE_ATTENTION)}"
    return f"{part}.{rest}"


def text_encoder_key(key: str) -> str:
    """The original CLIP layout nests everything under text_model. (transformers >= 5.6 no longer does)."""
    return key if key.startswith("text_model.") else "text_model." + key


def to_single_file(unet, vae, text_encoder) -> dict[str, torch.Tensor]:
    """One state dict in the LDM layout from diffusers/transformers modules."""
    state = {UNET_PREFIX + k: v for k, v in unet_to_ldm(unet).items()}
    state.update({VAE_PREFIX + k: v for k, v in vae_to_ldm(vae).items()})
    state.update({TEXT_ENCODER_PREFIX + k: v for k, v in clip_to_ldm(text_encoder).items()})
    return state


def unet_to_ldm(unet) -> dict[str, torch.Tensor]:
    """A diffusers UNet2DConditionModel's weights in the LDM layout (input_blocks., label_emb., ...)."""
    layers = unet.config.layers_per_block
    with_attention = {i for i, t in enumerate(unet.config.up_block_types) if "CrossAttn" in t}
    return {unet_key(k, layers, with_attention): v.detach().contiguous() for k, v in unet.state_dict().items()}


def clip_to_ldm(text_encoder) -> dict[str, torch.Tensor]:
    """A transformers CLIPTextModel's weights as the original checkpoints nest them (text_model.*)."""
    return {text_encoder_key(k): v.detach().contiguous() for k, v in text_encoder.state_dict().items()}


def vae_to_ldm(vae) -> dict[str, torch.Tensor]:
    """A diffusers AutoencoderKL's weights in the LDM layout (encoder., decoder., quant_conv., ...), as
    standalone VAE files hold them."""
    state = {}
    for key, value in vae.state_dict().items():
        ldm = vae_key(key, len(vae.config.down_block_types))
        if ".mid.attn_1." in ldm and ldm.endswith(".weight") and value.ndim == 2:
            value = value[:, :, None, None]  # the LDM VAE's attention projections are 1x1 convolutions
        state[ldm] = value.detach().contiguous()
    return state
