"""The sampler parameters a generation runs with (eta, s_churn, s_tmin, s_tmax, s_noise, s_min_uncond), resolved
as A1111 1.10 resolves them, and the infotext keys that record them.

Each value is the request's, else the option of the same name (`eta`: `eta_ancestral` or `eta_ddim`, by
sampler). A sampler gets only the parameters A1111 passes to it (`Sampler.eta_option`,
`Sampler.extra_params`); the others stay neutral, so they are accepted and have no effect, as in A1111.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .options import Options
from .samplers import Sampler

# A1111's infotext keys for the s_* parameters, in its order
SIGMA_KEYS = {"s_churn": "Sigma churn", "s_tmin": "Sigma tmin", "s_tmax": "Sigma tmax", "s_noise": "Sigma noise"}
ETA_KEYS = {"eta_ancestral": "Eta", "eta_ddim": "Eta DDIM"}


@dataclass(frozen=True)
class SamplerParams:
    eta: float | None = None  # None: the sampler takes no eta
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = math.inf
    s_noise: float = 1.0
    s_min_uncond: float = 0.0  # every sampler: A1111 applies it in its CFG denoiser


NEUTRAL = SamplerParams()


def sampler_params(sampler: Sampler, request: Any, options: Options) -> SamplerParams:
    """What `sampler` runs with for `request` (a GenerationRequest) under `options`. s_tmax 0 means infinity."""
    def value(name: str) -> float:
        sent = getattr(request, name)
        return sent if sent is not None else getattr(options, name)

    taken = {name: value(name) for name in sampler.extra_params}
    if "s_tmax" in taken:
        taken["s_tmax"] = taken["s_tmax"] or math.inf
    eta = None
    if sampler.eta_option:
        eta = request.eta if request.eta is not None else getattr(options, sampler.eta_option)
    return SamplerParams(eta=eta, s_min_uncond=value("s_min_uncond"), **taken)


def infotext_params(sampler: Sampler, params: SamplerParams) -> dict[str, float]:
    """A1111's infotext keys for the parameters a sampler ran with: `Eta` (`Eta DDIM` for DDIM) when eta is not
    the option's default, then `Sigma churn`, `Sigma tmin`, `Sigma tmax`, `Sigma noise` for the values that are
    not neutral. (`NGMS`, s_min_uncond, is written by the sampling loop once it skipped a negative prompt.)"""
    keys = {}
    if params.eta is not None and params.eta != Options.model_fields[sampler.eta_option].default:
        keys[ETA_KEYS[sampler.eta_option]] = params.eta
    for name, key in SIGMA_KEYS.items():
        if getattr(params, name) != getattr(NEUTRAL, name):
            keys[key] = getattr(params, name)
    return keys
