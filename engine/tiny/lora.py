"""Write tiny random LoRAs for the tiny checkpoints (engine/tiny/sd.py), for tests and the demo.

    python -m engine.tiny.lora --models-dir DIR [--family sd15|sdxl] [--name NAME] [--format kohya|diffusers]

writes DIR/Lora/<name>.safetensors (default name tiny-lora, or tiny-sdxl-lora) with low-rank updates of
the attention projections of the tiny UNet and text encoder(s). The same seed gives the same update in
either key format: kohya/A1111 (`lora_unet_*` / `lora_te_*` with `.lora_down` / `.lora_up` / `.alpha`)
or diffusers/PEFT (`unet.*` / `text_encoder.*` with `.lora_A` / `.lora_B`). kohya's SDXL files name the
UNet's modules in the original SGM layout (`lora_unet_input_blocks_4_1_...`) and the two text encoders
`lora_te1_*` (CLIP-L) and `lora_te2_*` (OpenCLIP), and carry kohya's metadata.
"""

from __future__ import annotations

import argparse
from functools import cache
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file

from ..configs import architecture_dir
from ..families.ldm_format import unet_key
from ..prompts.lora import LORA_SUBDIR, LORA_SUFFIX
from .sd import ARCHITECTURE, SDXL, build_tiny_modules, build_tiny_sdxl_modules

FORMATS = ("kohya", "diffusers")
COMPONENTS = ("unet", "text_encoder")  # what a tiny SD 1.5 LoRA changes
FAMILIES = {"sd15": ARCHITECTURE, "sdxl": SDXL}
SDXL_COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
_UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
_TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
_TEXT_MODEL = "text_model."  # real text-encoder LoRAs name CLIP's modules under text_model.
_SDXL_KOHYA_PREFIXES = {"unet": "lora_unet", "text_encoder": "lora_te1", "text_encoder_2": "lora_te2"}


def _lora_targets(architecture: str) -> dict[str, torch.nn.Module]:
    """The tiny checkpoint's modules a LoRA can change, by pipeline component name."""
    if architecture == SDXL:
        return {name: module for name, module in build_tiny_sdxl_modules(SDXL).items() if name in SDXL_COMPONENTS}
    unet, _, text_encoder = build_tiny_modules(architecture)
    return {"unet": unet, "text_encoder": text_encoder}


def tiny_lora_updates(seed: int, rank: int = 4, components: tuple[str, ...] = COMPONENTS,
                      architecture: str = ARCHITECTURE) -> dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]]:
    """{(component, module path): (down (rank x in), up (out x rank))}, random from `seed`, big enough to
    change an image visibly."""
    models = _lora_targets(architecture)
    generator = torch.Generator().manual_seed(seed)
    updates = {}
    for component in components:
        targets = _UNET_TARGETS if component == "unet" else _TEXT_TARGETS
        for path, module in models[component].named_modules():
            if isinstance(module, torch.nn.Linear) and path.endswith(targets):
                if component != "unet":
                    path = _TEXT_MODEL + path.removeprefix(_TEXT_MODEL)
                down = torch.randn(rank, module.in_features, generator=generator) / module.in_features ** 0.5
                up = torch.randn(module.out_features, rank, generator=generator)
                updates[component, path] = down, up
    return updates


def kohya_module_name(component: str, path: str, architecture: str = ARCHITECTURE) -> str:
    """kohya's name for a module: SD 1.x LoRAs use diffusers' module paths (kohya trains them on diffusers'
    UNet), SDXL ones the UNet's original SGM paths and a prefix per text encoder."""
    if architecture != SDXL:
        return f"lora_{'unet' if component == 'unet' else 'te'}_{path.replace('.', '_')}"
    if component == "unet":
        path = _sgm_unet_path(path)
    return f"{_SDXL_KOHYA_PREFIXES[component]}_{path.replace('.', '_')}"


def _sgm_unet_path(path: str) -> str:
    """"down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q" -> "input_blocks.4.1.transformer_blocks...."."""
    layers_per_block, up_blocks_with_attention = _sdxl_unet_layout()
    return unet_key(f"{path}.weight", layers_per_block, up_blocks_with_attention).removesuffix(".weight")


@cache
def _sdxl_unet_layout() -> tuple[int, frozenset[int]]:
    config = UNet2DConditionModel.load_config(architecture_dir(SDXL) / "unet")
    up_blocks = config["up_block_types"]
    return config["layers_per_block"], frozenset(i for i, kind in enumerate(up_blocks) if "CrossAttn" in kind)


def lora_state_dict(updates: dict, fmt: str, alpha_ratio: float = 0.5,
                    architecture: str = ARCHITECTURE) -> dict[str, torch.Tensor]:
    """The updates as a LoRA file's tensors. kohya files scale by alpha / rank (here `alpha_ratio`), so
    their up matrices are stored divided by it: both formats hold the same update."""
    tensors = {}
    for (component, path), (down, up) in updates.items():
        if fmt == "kohya":
            key = kohya_module_name(component, path, architecture)
            rank = down.shape[0]
            tensors |= {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up / alpha_ratio,
                        f"{key}.alpha": torch.tensor(rank * alpha_ratio)}
        elif fmt == "diffusers":
            tensors |= {f"{component}.{path}.lora_A.weight": down, f"{component}.{path}.lora_B.weight": up}
        else:
            raise ValueError(f"unknown LoRA format {fmt!r}; known: {', '.join(FORMATS)}")
    return {key: tensor.contiguous() for key, tensor in tensors.items()}


def write_tiny_lora(models_dir: Path, name: str = "tiny-lora", fmt: str = "kohya", seed: int = 0,
                    components: tuple[str, ...] = COMPONENTS, metadata: dict[str, str] | None = None,
                    architecture: str = ARCHITECTURE) -> Path:
    """models_dir/Lora/<name>.safetensors (name may hold subfolders)."""
    path = Path(models_dir) / LORA_SUBDIR / f"{name}{LORA_SUFFIX}"
    path.parent.mkdir(parents=True, exist_ok=True)
    updates = tiny_lora_updates(seed, components=components, architecture=architecture)
    save_file(lora_state_dict(updates, fmt, architecture=architecture), path, metadata=metadata)
    return path


def write_tiny_sdxl_lora(models_dir: Path, name: str = "tiny-sdxl-lora", fmt: str = "kohya", seed: int = 0,
                         components: tuple[str, ...] = SDXL_COMPONENTS) -> Path:
    """A LoRA for the tiny SDXL base checkpoint; a kohya one carries the metadata kohya's SDXL trainer writes
    (base model version, network module, output name: the alias A1111 lists)."""
    metadata = {"ss_base_model_version": "sdxl_base_v1-0", "ss_network_module": "networks.lora",
                "ss_output_name": Path(name).name} if fmt == "kohya" else None
    return write_tiny_lora(models_dir, name, fmt, seed, components, metadata, architecture=SDXL)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", type=Path, required=True)
    parser.add_argument("--family", choices=FAMILIES, default="sd15", help="the checkpoint it fits (default: sd15)")
    parser.add_argument("--name", help="file name without extension (default: tiny-lora, or tiny-sdxl-lora)")
    parser.add_argument("--format", choices=FORMATS, default="kohya")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.family == "sdxl":
        print(write_tiny_sdxl_lora(args.models_dir, args.name or "tiny-sdxl-lora", args.format, args.seed))
    else:
        print(write_tiny_lora(args.models_dir, args.name or "tiny-lora", args.format, args.seed))


if __name__ == "__main__":
    main()
