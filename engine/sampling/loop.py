"""The denoising loop: a diffusers scheduler driving the UNet with A1111's conditioning rules.

Written out (rather than calling a diffusers pipeline) because A1111 semantics need control of every
step: prompt editing changes the conditioning per step, AND sub-prompts are combined as composable
diffusion, img2img runs A1111's exact step count, and inpainting blends or conditions on the mask.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from collections.abc import Sequence
from typing import Protocol

import torch

from ..prompts.conditioning import Conditioning
from .kdiffusion import timestep_to_sigma
from ..tasks.progress import Progress


@dataclass
class Inpainting:
    """What an inpainting pass keeps: 1 in `mask` = repaint (latent resolution)."""

    init_latents: torch.Tensor  # the image being inpainted, encoded
    mask: torch.Tensor  # (B, 1, h, w)
    noise: torch.Tensor  # the starting noise, to re-noise the kept area at each step
    unet_extra: torch.Tensor | None = None  # 9-channel UNets: mask + masked-image latents, concatenated


def img2img_steps(steps: int, denoising_strength: float, exact: bool) -> tuple[int, int]:
    """(schedule length, steps run) for img2img, as A1111 counts them.

    Default: a `steps` schedule of which int(min(d, 0.999) * steps) + 1 steps run. `exact`
    (img2img_fix_steps, and every hires pass): exactly `steps` run, on a schedule stretched to fit.
    """
    strength = min(denoising_strength, 0.999)
    if exact and strength > 0:
        return max(int(steps / strength), steps), steps
    return steps, int(strength * steps) + 1


def set_schedule(scheduler, length: int, run: int, device) -> torch.Tensor:
    """The timesteps to run: the last `run` steps of a `length`-step schedule."""
    scheduler.set_timesteps(length, device=device)
    start = (length - run) * scheduler.order
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start)
    return scheduler.timesteps[start:]


class Control(Protocol):
    """What adds to the UNet's skip connections at each step (ControlNet units, engine/controlnet)."""

    def residuals(self, done: float, sample: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                  added: dict[str, torch.Tensor], uncond_rows: int) -> dict[str, object]:
        """The UNet's extra keyword arguments for a step `done` of the way through its pass (none: {}); `sample` is
        the scaled latents of every row, the first `uncond_rows` rows the negative prompt's."""


@dataclass
class Switch:
    """A1111's refiner: the same sampling run continues on another model (its UNet and its own conditioning) once
    `at` of it is done, by the step count (refiner_switch_by_sample_steps) or, by default, by the noise level: the
    timestep the step's sigma is nearest to, as (999 - timestep) / 1000."""

    unet: torch.nn.Module
    conditioning: Conditioning
    at: float
    by_steps: bool = False
    switched: bool = False  # set once the run switched

    def due(self, index: int, total: int, timestep: torch.Tensor) -> bool:
        done = index / total if self.by_steps else (999 - round(float(timestep))) / 1000
        return done >= self.at


@dataclass
class Guidance:
    """Classifier-free guidance of a sampling pass, with A1111's "negative guidance minimum sigma" (s_min_uncond,
    infotext NGMS): every other model evaluation (the odd ones) whose noise level is below s_min_uncond runs
    without the negative prompt, the prompt alone guiding (scale 1). A1111's timestep samplers (DDIM, PLMS,
    UniPC) compare the UNet timestep instead of sigma, as A1111's do."""

    cfg_scale: float
    s_min_uncond: float = 0.0
    by_timestep: bool = False
    skipped_uncond: bool = False  # set once an evaluation ran without the negative prompt

    def skips_uncond(self, index: int, scheduler, timestep: torch.Tensor) -> bool:
        if not (index % 2 and self.s_min_uncond > 0):
            return False
        level = float(timestep) if self.by_timestep else timestep_to_sigma(scheduler, timestep)
        skip = level < self.s_min_uncond
        self.skipped_uncond |= skip
        return skip


def _step_kwargs(scheduler, generators, eta: float) -> dict:
    accepted = inspect.signature(scheduler.step).parameters
    kwargs = {}
    if "generator" in accepted:
        kwargs["generator"] = generators
    if "eta" in accepted:
        kwargs["eta"] = eta
    return kwargs


@dataclass
class Group:
    """Rows of a batch that share their conditioning and guidance: one request's images. Requests that can share
    the denoiser's calls run as one batch of several groups."""

    rows: int
    conditioning: Conditioning
    guidance: Guidance


@torch.inference_mode()
def denoise(unet, scheduler, timesteps: torch.Tensor, latents: torch.Tensor, groups: Sequence[Group],
            generators: list[torch.Generator], eta: float = 0.0, inpainting: Inpainting | None = None,
            progress: Progress | None = None, switch: Switch | None = None,
            control: Control | None = None) -> torch.Tensor:
    """Run `timesteps` from `latents` (already noised to the first timestep's level; the groups' rows in order).

    `eta` goes to schedulers whose step takes it (DDIM); schedulers with A1111's churn (engine/sampling/churn.py)
    lift the latents before the model evaluates a step. The text context and the family's other per-prompt inputs
    (SDXL's pooled embedding and size ids) go to the UNet with each evaluation, with `control`'s residuals; `switch`
    moves the run to another model part way (without the control, made for the first). `inpainting`, `switch` and
    `control` belong to a single group. Reports each step, with the latents it starts from (for live previews), to
    `progress` and stops early when it is interrupted or skipped.
    """
    if len(groups) > 1 and (inpainting or switch or control):
        raise ValueError("inpainting, a refiner switch and ControlNet apply to a batch of one group only")
    step_kwargs = _step_kwargs(scheduler, generators, eta)
    churn = getattr(scheduler, "churn", None)
    for index, timestep in enumerate(timesteps):
        if progress is not None:
            if progress.stopping:
                break
            progress.step(index, len(timesteps), latents)
        if switch is not None and not switch.switched and switch.due(index, len(timesteps), timestep):
            unet, control, switch.switched = switch.unet, None, True
            groups = [Group(groups[0].rows, switch.conditioning, groups[0].guidance)]
        if churn is not None:
            latents, timestep = churn(latents, timestep, generators)
        blocks = _blocks(groups, latents, index // scheduler.order, index, scheduler, timestep)
        predictions: dict[int, torch.Tensor] = {}
        for length in {block.contexts.shape[1] for block in blocks}:  # padding a context would change its result
            same = [i for i, block in enumerate(blocks) if block.contexts.shape[1] == length]
            model_input = scheduler.scale_model_input(torch.cat([blocks[i].latents for i in same]), timestep)
            if inpainting is not None and inpainting.unet_extra is not None:
                model_input = torch.cat([model_input, inpainting.unet_extra.repeat(blocks[0].parts, 1, 1, 1)], dim=1)
            context = torch.cat([blocks[i].contexts for i in same]).to(unet.dtype)
            added = {key: torch.cat([blocks[i].added[key] for i in same]).to(unet.dtype) for key in blocks[0].added}
            residuals = {} if control is None else control.residuals(
                index / len(timesteps), model_input[:, :latents.shape[1]], timestep, context, added,
                0 if blocks[0].skip_uncond else blocks[0].group.rows)
            output = unet(model_input.to(unet.dtype), timestep, encoder_hidden_states=context,
                          added_cond_kwargs=added or None, **residuals).sample.float()
            predictions.update(zip(same, output.split([blocks[i].latents.shape[0] for i in same])))
        guided = torch.cat([
            _guided(predictions[i].chunk(block.parts), block.group.conditioning.weights,
                    block.group.guidance.cfg_scale, block.skip_uncond)
            for i, block in enumerate(blocks)])
        latents = scheduler.step(guided, timestep, latents, **step_kwargs).prev_sample
        if inpainting is not None and inpainting.unet_extra is None:
            latents = _keep_unmasked(scheduler, timesteps, index, latents, inpainting)
    return latents


@dataclass
class _Block:
    """A group's rows for one model evaluation: its latents once per condition (uncond first, then each AND part),
    their contexts (padded to one length within the group, as A1111 pads a request's) and other inputs."""

    group: Group
    parts: int
    skip_uncond: bool
    latents: torch.Tensor
    contexts: torch.Tensor
    added: dict[str, torch.Tensor]


def _blocks(groups: Sequence[Group], latents: torch.Tensor, step: int, index: int, scheduler,
            timestep: torch.Tensor) -> list[_Block]:
    blocks, start = [], 0
    for group in groups:
        rows = latents[start:start + group.rows]
        start += group.rows
        uncond, conds = group.conditioning.at(step)
        skip_uncond = group.guidance.skips_uncond(index, scheduler, timestep)
        conditions = conds if skip_uncond else (uncond, *conds)
        contexts = torch.cat([c.context.expand(group.rows, -1, -1) for c in conditions])
        added = {key: torch.cat([c.inputs[key].expand(group.rows, -1) for c in conditions])
                 for key in conditions[0].inputs}
        blocks.append(_Block(group, len(conditions), skip_uncond, torch.cat([rows] * len(conditions)), contexts,
                             added))
    return blocks


def _guided(predictions: tuple[torch.Tensor, ...], weights, cfg_scale: float, skip_uncond: bool) -> torch.Tensor:
    """The UNet's predictions (uncond first, then each AND part) combined by CFG and composable diffusion.
    Without the uncond prediction, the first part's stands in for it at scale 1, as in A1111."""
    if skip_uncond:
        base, conds, scale = predictions[0], predictions, 1.0
    else:
        (base, *conds), scale = predictions, cfg_scale
    return base + sum(weight * scale * (cond - base) for weight, cond in zip(weights, conds))


def _keep_unmasked(scheduler, timesteps, index: int, latents: torch.Tensor, inpainting: Inpainting) -> torch.Tensor:
    """Ordinary (4-channel) UNets: outside the mask, the original re-noised to the next step's level."""
    if index + 1 < len(timesteps):
        kept = scheduler.add_noise(inpainting.init_latents, inpainting.noise, timesteps[index + 1:index + 2])
    else:
        kept = inpainting.init_latents
    return kept * (1 - inpainting.mask) + latents * inpainting.mask
