"""A loaded checkpoint: its diffusers pipeline, family, prompt encoder, LoRAs and the facts generation needs."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from ..families import ModelFamily
from ..prompts.conditioning import PromptEncoder
from ..prompts.embeddings import Embeddings
from ..prompts.lora import LoraAdapters, LoraLibrary
from .loading import Architecture
from .models_dir import Checkpoint

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, DiffusionPipeline

    from .vae import VaeFile


@dataclass
class LoadedModel:
    checkpoint: Checkpoint
    architecture: Architecture
    pipe: DiffusionPipeline
    lora_library: InitVar[LoraLibrary]  # the LoRA files its prompts may name
    embeddings: Embeddings = field(default_factory=Embeddings)  # textual inversions its prompts may use
    scheduler_config: dict = field(init=False)  # the checkpoint's own noise schedule
    encoder: PromptEncoder = field(init=False)
    loras: LoraAdapters = field(init=False)
    own_vae: AutoencoderKL = field(init=False)  # the checkpoint's VAE, used while vae_file is None
    vae_file: VaeFile | None = field(init=False, default=None)  # the VAE file in use (engine/store/vae.py)

    def __post_init__(self, lora_library: LoraLibrary):
        self.scheduler_config = dict(self.pipe.scheduler.config)
        family, pipe = self.family, self.pipe
        self.encoder = PromptEncoder(
            pipe.tokenizer_2 if getattr(pipe, "tokenizer", None) is None else pipe.tokenizer,
            [(spec, getattr(pipe, spec.component)) for spec in family.text_encoders(pipe)], self.embeddings,
            lambda pooled, params, negative: family.denoiser_inputs(pipe.unet, pooled, params, negative),
            family.zero_empty_negative)
        self.loras = LoraAdapters(pipe, self.encoder, lora_library, family.name)
        self.own_vae = pipe.vae

    @property
    def family(self) -> ModelFamily:
        return self.architecture.family

    @property
    def config_dir(self) -> Path:
        """Its components' configs (vae/config.json, ...)."""
        return self.architecture.config_dir

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
        pixels = torch.stack([_to_tensor(image) for image in images]).to(self.device)
        with self._vae_precision(upcast=self._upcasts) as vae:
            latents = vae.encode(pixels.to(vae.dtype)).latent_dist.mode().float()
        return (latents - self._shift) * self.vae.config.scaling_factor

    @torch.inference_mode()
    def decode_latents(self, latents: torch.Tensor) -> list[Image.Image]:
        """Images from latents. A VAE that overflows in half precision (diffusers' `force_upcast`: SDXL's) decodes
        in float32; the checkpoint's own always, a VAE file when its half-precision output is not finite (an
        fp16-fixed VAE stays in half precision)."""
        latents = latents / self.vae.config.scaling_factor + self._shift
        with self._vae_precision(upcast=self._upcasts and self.vae_file is None) as vae:
            pixels = vae.decode(latents.to(vae.dtype)).sample.float()
        if not torch.isfinite(pixels).all() and self._upcasts:
            with self._vae_precision(upcast=True) as vae:
                pixels = vae.decode(latents.to(vae.dtype)).sample.float()
        array = ((pixels.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return [Image.fromarray(a) for a in array.permute(0, 2, 3, 1).cpu().numpy()]

    @property
    def _upcasts(self) -> bool:
        """Whether the VAE overflows in half precision: as diffusers' SDXL pipelines decide (its SD 1.x pipelines
        never upcast, whatever the config's force_upcast, which diffusers defaults to true)."""
        return self.vae.dtype == torch.float16 and self.family.vae_upcasts and bool(self.vae.config.force_upcast)

    @property
    def _shift(self) -> float:
        return self.vae.config.get("shift_factor") or 0.0

    @contextmanager
    def _vae_precision(self, upcast: bool):
        """The VAE, in float32 for the duration when `upcast`."""
        vae = self.vae
        if not upcast:
            yield vae
            return
        dtype = vae.dtype
        vae.to(torch.float32)
        try:
            yield vae
        finally:
            vae.to(dtype)


def _to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB image -> (3, H, W) in [-1, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1
    return torch.from_numpy(array).permute(2, 0, 1)
