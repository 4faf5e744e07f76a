"""Build the diffusers scheduler for an A1111 sampler and schedule (the table is schemas.samplers)."""

from __future__ import annotations

import inspect
from typing import Any

import diffusers

from schemas.sampler_params import SamplerParams
from schemas.samplers import Sampler, Schedule

from . import ancestral

from . import churn

# the samplers that take A1111's sampler parameters, by A1111's sampling function: diffusers' scheduler with them
WITH_PARAMS = {
    "sample_euler_ancestral": ancestral.EulerAncestral,
    "sample_dpm_2_ancestral": ancestral.DPM2Ancestral,
    "sample_dpmpp_2s_ancestral": ancestral.DPMPP2SAncestral,
    "sample_dpmpp_sde": ancestral.DPMPPSDE,
    "sample_dpmpp_2m_sde": ancestral.DPMPPMultistepSDE,
    "sample_dpmpp_3m_sde": ancestral.DPMPPMultistepSDE,
    "sample_euler": churn.Euler,
    "sample_heun": churn.Heun,
    "sample_dpm_2": churn.DPM2,
}


def make_scheduler(model_config: dict[str, Any], sampler: Sampler, schedule: Schedule, noise_seeds: list[int],
                   params: SamplerParams | None = None):
    """The sampler's scheduler on the checkpoint's noise schedule (betas, prediction type), running `params`.

    Settings apply in order: the checkpoint's scheduler config, the schedule's sigma spacing, then
    the sampler's own settings (which win, e.g. DDIM's "leading" spacing). Schedulers that draw
    their step noise themselves (DPM++ SDE's Brownian tree) get one seed per image, so they are
    deterministic per seed like the others. DDIM takes its eta at each step (the sampling loop passes it).
    """
    scheduler_class = WITH_PARAMS.get(sampler.function) or getattr(diffusers, sampler.scheduler_class)
    settings = {**schedule.diffusers, **sampler.config}
    if "noise_sampler_seed" in inspect.signature(scheduler_class.__init__).parameters:
        settings["noise_sampler_seed"] = list(noise_seeds)
    scheduler = scheduler_class.from_config(model_config, **settings)
    if params is not None and sampler.function in WITH_PARAMS:
        scheduler.params = params
    return scheduler
