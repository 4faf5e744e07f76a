"""Build the diffusers scheduler for an A1111 sampler and schedule (the table is schemas.samplers)."""

from __future__ import annotations

from typing import Any

import diffusers

from schemas.samplers import Sampler, Schedule


def make_scheduler(model_config: dict[str, Any], sampler: Sampler, schedule: Schedule):
    """The sampler's scheduler on the checkpoint's noise schedule (betas, prediction type).

    Settings apply in order: the checkpoint's scheduler config, the schedule's sigma spacing, then
    the sampler's own settings (which win, e.g. DDIM's "leading" spacing).
    """
    scheduler_class = getattr(diffusers, sampler.scheduler_class)
    return scheduler_class.from_config(model_config, **{**schedule.diffusers, **sampler.config})
