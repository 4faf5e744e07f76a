"""Seeds and initial noise: one CPU generator per image, so one seed gives one image on any device."""

from __future__ import annotations

import random

import torch

from schemas.limits import SEED_RANGE

LATENT_CHANNELS = 4


def resolve_seed(seed: int) -> int:
    """-1 picks a random seed in A1111's range."""
    return random.randrange(SEED_RANGE) if seed == -1 else seed


def image_generators(seeds: list[int]) -> list[torch.Generator]:
    return [torch.Generator("cpu").manual_seed(seed) for seed in seeds]


def initial_latents(generators: list[torch.Generator], height: int, width: int, scale_factor: int) -> torch.Tensor:
    """Each image's starting noise, (4, H/8, W/8), drawn from its own generator on the CPU."""
    shape = (LATENT_CHANNELS, height // scale_factor, width // scale_factor)
    return torch.stack([torch.randn(shape, generator=g, dtype=torch.float32) for g in generators])
