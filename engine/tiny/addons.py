"""Tiny textual-inversion embeddings and VAEs for the tiny checkpoints (engine/tiny/sd.py), in the file
layouts real ones come in, so that tests and demos load them through the same paths.

    write_tiny_embedding(models_dir, "EasyNegative")               # embeddings/EasyNegative.safetensors
    write_tiny_sdxl_embedding(models_dir, "negativeXL", vectors=2) # {"clip_l": ..., "clip_g": ...}
    write_tiny_vae(models_dir, "tiny-other.safetensors", seed=7)   # VAE/tiny-other.safetensors
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from safetensors.torch import save_file

from ..configs import architecture_dir
from ..prompts.embeddings import EMBEDDINGS_SUBDIR
from ..families.ldm_format import VAE_PREFIX, vae_to_ldm
from .sd import ARCHITECTURE, SDXL
from ..store.vae import VAE_SUBDIR


def text_width(architecture: str = ARCHITECTURE, encoder: str = "text_encoder") -> int:
    """The width of an architecture's text-encoder token embeddings (what an embedding's vectors need)."""
    return json.loads((architecture_dir(architecture) / encoder / "config.json").read_text())["hidden_size"]


def write_tiny_embedding(models_dir: Path, name: str, vectors: torch.Tensor | int = 1, suffix: str = ".safetensors",
                         width: int | None = None, seed: int = 0) -> Path:
    """embeddings/<name><suffix> holding `vectors` (a (n, width) tensor, or n random vectors):
    .safetensors as {"emb_params": ...}; .pt as A1111's training output (string_to_param, step,
    sd_checkpoint, sd_checkpoint_name); .bin as a diffusers concept {"<name>": ...} (one vector)."""
    if isinstance(vectors, int):
        generator = torch.Generator().manual_seed(seed)
        vectors = torch.randn(vectors, width or text_width(), generator=generator)
    vectors = vectors.detach().to(torch.float32).contiguous()
    path = Path(models_dir) / EMBEDDINGS_SUBDIR / f"{name}{suffix}"
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".safetensors":
        save_file({"emb_params": vectors}, path)
    elif suffix == ".pt":
        torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vectors}, "name": name, "step": 1500,
                    "sd_checkpoint": "0123456789", "sd_checkpoint_name": ARCHITECTURE}, path)
    elif suffix == ".bin":
        torch.save({f"<{name}>": vectors[0]}, path)
    else:
        raise ValueError(f"no embedding layout for {suffix!r}")
    return path


def write_tiny_sdxl_embedding(models_dir: Path, name: str, vectors: int = 1, seed: int = 0) -> Path:
    """embeddings/<name>.safetensors for the tiny SDXL checkpoint as SDXL embeddings are stored: `vectors`
    random vectors per text encoder, {"clip_l": (n, CLIP-L width), "clip_g": (n, OpenCLIP width)}."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {key: torch.randn(vectors, text_width(SDXL, encoder), generator=generator)
               for key, encoder in (("clip_l", "text_encoder"), ("clip_g", "text_encoder_2"))}
    path = Path(models_dir) / EMBEDDINGS_SUBDIR / f"{name}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, path)
    return path


def write_tiny_vae(models_dir: Path, file_name: str, seed: int, prefixed: bool = False,
                   architecture: str = ARCHITECTURE, folder: str = VAE_SUBDIR) -> Path:
    """A random VAE of the architecture (the same for the same seed) as a single file under
    models_dir/folder: .safetensors with the bare LDM keys (encoder., decoder., ...), or .pt/.ckpt as
    {"state_dict": ...}; `prefixed` puts the keys under first_stage_model., as checkpoints hold them."""
    torch.manual_seed(seed)
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(architecture_dir(architecture) / "vae"))
    state = {(VAE_PREFIX if prefixed else "") + key: value for key, value in vae_to_ldm(vae).items()}
    path = Path(models_dir) / folder / file_name
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file(state, path)
    else:
        torch.save({"state_dict": state}, path)
    return path
