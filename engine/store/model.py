"""A loaded checkpoint: its diffusers pipeline, prompt encoder, LoRAs and the facts generation needs."""

from __future__ import annotations

from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image

from ..prompts.conditioning import PromptEncoder
from ..prompts.embeddings import Embeddings
from .loading import components_config_dir
from ..prompts.lora import LoraAdapters, LoraLibrary
from .models_dir import Checkpoint

if TYPE_CHECKING:
    from diffusers import AutoencoderKL

    from .vae import VaeFile


@dataclass
class LoadedModel:
    checkpoint: Checkpoint
    pipe: StableDiffusionPipeline
    lora_library: InitVar[LoraLibrary]  # the LoRA files its prompts may name
    embeddings: Embeddings = field(default_factory=Embeddings)  # textual inversions its prompts may use
    scheduler_config: dict = field(init=False)  # the checkpoint's own noise schedule
    config_dir: Path = field(init=False)  # its components' configs (vae/config.json, ...), read once
    encoder: PromptEncoder = field(init=False)
    loras: LoraAdapters = field(init=False)
    own_vae: AutoencoderKL = field(init=False)  # the checkpoint's VAE, used while vae_file is None
    vae_file: VaeFile | None = field(init=False, default=None)  # the VAE file in use (engine/store/vae.py)

    def __post_init__(self, lora_library: LoraLibrary):
        self.scheduler_config = dict(self.pipe.scheduler.config)
        self.config_dir = components_config_dir(self.checkpoint)
        self.encoder = PromptEncoder(self.pipe.tokenizer, self.pipe.text_encoder, self.embeddings)
        self.loras = LoraAdapters(self.pipe, self.encoder, lora_library)
        self.own_vae = self.pipe.vae

    def use_vae(self, file: VaeFile | None, vae: AutoencoderKL | None) -> None:
        """Decode and encode with `vae` (loaded from `file`), or with the checkpoint's own for None."""
        self.vae_file = file
        self.pipe.vae = vae if file else self.own_vae

    @property
    def unet(self):
        return self.pipe.unet

    @property
    def vae(self):
        return self.pipe.vae

    @property
    def device(self) -> torch.device:
        return self.pipe.unet.device

    @property
    def scale_factor(self) -> int:
        return self.pipe.vae_scale_factor

    @property
    def is_inpainting(self) -> bool:
        """A 9-channel UNet (latents + mask + masked-image latents): an inpainting checkpoint."""
        return self.unet.config.in_channels == 9

    @torch.inference_mode()
    def encode_images(self, images: list[Image.Image]) -> torch.Tensor:
        """VAE latents (the distribution's mode, so encoding is deterministic), scaled for the UNet."""
        pixels = torch.stack([_to_tensor(image) for image in images]).to(self.device, self.vae.dtype)
        latents = self.vae.encode(pixels).latent_dist.mode()
        return latents.float() * self.vae.config.scaling_factor

    @torch.inference_mode()
    def decode_latents(self, latents: torch.Tensor) -> list[Image.Image]:
        pixels = self.vae.decode((latents / self.vae.config.scaling_factor).to(self.vae.dtype)).sample
        array = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return [Image.fromarray(a) for a in array.permute(0, 2, 3, 1).cpu().numpy()]


def _to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB image -> (3, H, W) in [-1, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1
    return torch.from_numpy(array).permute(2, 0, 1)
