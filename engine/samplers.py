"""Build the diffusers scheduler for an A1111 sampler and schedule (the table is schemas.samplers)."""

from __future__ import annotations

import inspect
from typing import Any

import diffusers

from schemas.samplers import Sampler, Schedule


def make_scheduler(model_config: dict[str, Any], sampler: Sampler, schedule: Schedule, noise_seeds: list[int]):
    """The sampler's scheduler on the checkpoint's noise schedule (betas, prediction type).

    Settings apply in order: the checkpoint's scheduler config, the schedule's sigma spacing, then
    the sampler's own settings (which win, e.g. DDIM's "leading" spacing). Schedulers that draw
    their step noise themselves (DPM++ SDE's Brownian tree) get one seed per image, so they are
    deterministic per seed like the others.
    """
    scheduler_class = getattr(diffusers, sampler.scheduler_class)
    settings = {**schedule.diffusers, **sampler.config}
    if "noise_sampler_seed" in inspect.signature(scheduler_class.__init__).parameters:
        settings["noise_sampler_seed"] = list(noise_seeds)
    return scheduler_class.from_config(model_config, **settings)
