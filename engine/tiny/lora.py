"""Write tiny random LoRAs for the tiny checkpoint (engine/tiny/sd.py), for tests and the demo.

    python -m engine.tiny.lora --models-dir DIR [--name tiny-lora] [--format kohya|diffusers]

writes DIR/Lora/<name>.safetensors with low-rank updates of the attention projections of the tiny
UNet and text encoder. The same seed gives the same update in either key format: kohya/A1111
(`lora_unet_*` / `lora_te_*` with `.lora_down` / `.lora_up` / `.alpha`) or diffusers/PEFT
(`unet.*` / `text_encoder.*` with `.lora_A` / `.lora_B`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..prompts.lora import LORA_SUBDIR, LORA_SUFFIX
from .sd import ARCHITECTURE, build_tiny_modules

FORMATS = ("kohya", "diffusers")
COMPONENTS = ("unet", "text_encoder")  # what a tiny SD 1.5 LoRA changes
_TARGETS = {"unet": ("to_q", "to_k", "to_v", "to_out.0"), "text_encoder": ("q_proj", "k_proj", "v_proj", "out_proj")}
_TEXT_MODEL = "text_model."  # real text-encoder LoRAs name CLIP's modules under text_model.


def tiny_lora_updates(seed: int, rank: int = 4, components: tuple[str, ...] = COMPONENTS,
                      architecture: str = ARCHITECTURE) -> dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]]:
    """{(component, module path): (down (rank x in), up (out x rank))}, random from `seed`, big enough to
    change an image visibly."""
    unet, _, text_encoder = build_tiny_modules(architecture)
    models = {"unet": unet, "text_encoder": text_encoder}
    generator = torch.Generator().manual_seed(seed)
    updates = {}
    for component in components:
        for path, module in models[component].named_modules():
            if isinstance(module, torch.nn.Linear) and path.endswith(_TARGETS[component]):
                if component == "text_encoder":
                    path = _TEXT_MODEL + path.removeprefix(_TEXT_MODEL)
                down = torch.randn(rank, module.in_features, generator=generator) / module.in_features ** 0.5
                up = torch.randn(module.out_features, rank, generator=generator)
                updates[component, path] = down, up
    return updates


def lora_state_dict(updates: dict, fmt: str, alpha_ratio: float = 0.5) -> dict[str, torch.Tensor]:
    """The updates as a LoRA file's tensors. kohya files scale by alpha / rank (here `alpha_ratio`), so
    their up matrices are stored divided by it: both formats hold the same update."""
    tensors = {}
    for (component, path), (down, up) in updates.items():
        if fmt == "kohya":
            key = f"lora_{'unet' if component == 'unet' else 'te'}_{path.replace('.', '_')}"
            rank = down.shape[0]
            tensors |= {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up / alpha_ratio,
                        f"{key}.alpha": torch.tensor(rank * alpha_ratio)}
        elif fmt == "diffusers":
            tensors |= {f"{component}.{path}.lora_A.weight": down, f"{component}.{path}.lora_B.weight": up}
        else:
            raise ValueError(f"unknown LoRA format {fmt!r}; known: {', '.join(FORMATS)}")
    return {key: tensor.contiguous() for key, tensor in tensors.items()}


def write_tiny_lora(models_dir: Path, name: str = "tiny-lora", fmt: str = "kohya", seed: int = 0,
                    components: tuple[str, ...] = COMPONENTS, metadata: dict[str, str] | None = None) -> Path:
    """models_dir/Lora/<name>.safetensors (name may hold subfolders)."""
    path = Path(models_dir) / LORA_SUBDIR / f"{name}{LORA_SUFFIX}"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(lora_state_dict(tiny_lora_updates(seed, components=components), fmt), path, metadata=metadata)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", type=Path, required=True)
    parser.add_argument("--name", default="tiny-lora", help="file name without extension (default: tiny-lora)")
    parser.add_argument("--format", choices=FORMATS, default="kohya")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(write_tiny_lora(args.models_dir, args.name, args.format, args.seed))


if __name__ == "__main__":
    main()
