"""Seeds and initial noise, as A1111 draws them with `randn_source: CPU`.

Each image has its own CPU generator seeded with its seed, so one seed gives one image on any
device and in any batch; the same generator then drives the sampler's step noise (reseeded with
seed + eta_noise_seed_delta when that option is set). Variation seeds blend the noise of the subseed
in by spherical interpolation; seed_resize_from_w/h draws the noise at another size and pastes it
centred.
"""

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


def latent_shape(width: int, height: int, scale_factor: int) -> tuple[int, int, int]:
    return LATENT_CHANNELS, height // scale_factor, width // scale_factor


def slerp(t: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation from `low` (t=0) to `high` (t=1), normalising along dim 1 as A1111 does."""
    low_unit = low / torch.norm(low, dim=1, keepdim=True)
    high_unit = high / torch.norm(high, dim=1, keepdim=True)
    cos = (low_unit * high_unit).sum(1)
    if cos.mean() > 0.9995:  # nearly parallel: linear interpolation is exact enough
        return low * (1 - t) + high * t
    angle = torch.acos(cos)
    sin = torch.sin(angle)
    return (torch.sin((1 - t) * angle) / sin).unsqueeze(1) * low + (torch.sin(t * angle) / sin).unsqueeze(1) * high


def paste_centred(target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """`source` pasted into the middle of `target` (both (C, H, W)), cropped where it is larger."""
    out = target.clone()
    (_, th, tw), (_, sh, sw) = target.shape, source.shape
    h, w = min(th, sh), min(tw, sw)
    ty, tx, sy, sx = max((th - sh) // 2, 0), max((tw - sw) // 2, 0), max((sh - th) // 2, 0), max((sw - tw) // 2, 0)
    out[:, ty:ty + h, tx:tx + w] = source[:, sy:sy + h, sx:sx + w]
    return out


def image_noise(seed: int, subseed: int, subseed_strength: float, shape: tuple[int, int, int],
                resize_from: tuple[int, int, int] | None = None) -> tuple[torch.Tensor, torch.Generator]:
    """One image's starting noise and its generator (left where the sampler's noise continues)."""
    draw_shape = resize_from or shape
    generator = torch.Generator("cpu").manual_seed(seed)
    noise = torch.randn(draw_shape, generator=generator)
    if subseed_strength:
        sub = torch.randn(draw_shape, generator=torch.Generator("cpu").manual_seed(subseed))
        noise = slerp(subseed_strength, noise, sub)
    if draw_shape != shape:
        generator = torch.Generator("cpu").manual_seed(seed)
        noise = paste_centred(torch.randn(shape, generator=generator), noise)
    return noise, generator


def batch_noise(seeds: list[int], subseeds: list[int], subseed_strength: float, shape: tuple[int, int, int],
                resize_from: tuple[int, int, int] | None, noise_seed_delta: int) -> tuple[torch.Tensor, list]:
    """Starting noise for a batch, (B, 4, H/8, W/8), and the generators for the sampler's step noise."""
    drawn = [image_noise(s, sub, subseed_strength, shape, resize_from) for s, sub in zip(seeds, subseeds)]
    generators = [g for _, g in drawn]
    if noise_seed_delta:
        generators = image_generators([s + noise_seed_delta for s in seeds])
    return torch.stack([n for n, _ in drawn]), generators
