"""What a model family is: everything that differs between architectures, in one object.

A family recognises its checkpoints (single-file keys, diffusers folders' pipeline class), names the
shipped configs they load with, and describes how a prompt becomes conditioning (its text encoders:
which hidden layer, padding, pooled output, textual-inversion vectors, LoRA components) and the
extra inputs its denoiser takes per step. The engine's generic code asks the family, never the
checkpoint's architecture.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from ..prompts.conditioning import ConditioningParams


class UnsupportedCheckpoint(ValueError):
    """The checkpoint is of an architecture this worker can't run (yet)."""


@dataclass(frozen=True)
class TextEncoderSpec:
    """How A1111 uses one of a family's text encoders."""

    component: str  # the pipeline's attribute: "text_encoder", "text_encoder_2"
    embedding_key: str | None  # an SDXL embedding's vectors for it ("clip_l", "clip_g"); None: a single tensor
    penultimate: bool  # the hidden state before the last layer, without the final norm (SDXL); else the output
    pad_with_zero: bool  # padding after the end token is token 0 (OpenCLIP), not the end token (CLIP)
    pooled: bool = False  # its projected pooled output conditions the denoiser (SDXL's clip_g)
    clip_skip_option: str | None = ""  # "": CLIP skip applies (with the final norm); an option name: only when
    # that option is true (SDXL's sdxl_clip_l_skip, without the norm); None: never


class ModelFamily(ABC):
    name: str  # as errors and listings name it: "SD 1.x", "SDXL"
    key: str  # what LoRAs, embeddings and VAEs are matched by: "sd1", "sdxl"
    zero_empty_negative: bool = False  # an empty negative prompt conditions as zeros (SDXL's conditioner does)
    vae_upcasts: bool = False  # its VAE decodes in float32 where its config says `force_upcast` (SDXL's overflows)
    # live previews: RGB in [-1, 1] as a linear map of the latent channels, one (R, G, B) row per channel (A1111's
    # "Approx cheap"); None: no previews
    preview_coefficients: tuple[tuple[float, float, float], ...] | None = None

    @abstractmethod
    def recognises(self, keys: set[str]) -> bool:
        """Whether a single file's tensor names are this family's."""

    @abstractmethod
    def architecture(self, shapes: dict[str, list[int]], name: str) -> str:
        """The shipped config (engine/configs/<name>) for a single file of this family, by its tensor shapes."""

    @abstractmethod
    def text_encoders(self, pipe) -> tuple[TextEncoderSpec, ...]:
        """The text encoders a loaded pipeline of this family has, in the order their outputs are concatenated."""

    def denoiser_inputs(self, unet, pooled: torch.Tensor | None, params: ConditioningParams,
                        negative: bool) -> dict[str, torch.Tensor]:
        """The per-prompt inputs the denoiser takes besides the text context (`added_cond_kwargs`)."""
        return {}

