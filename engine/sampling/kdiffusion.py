"""k-diffusion's sampling arithmetic (k_diffusion/sampling.py, what A1111 samples with), shared by the schedulers
that add A1111's sampler parameters to diffusers' (engine/sampling/ancestral.py, engine/sampling/churn.py).

Noise levels are sigmas on the variance-exploding scale (the sample is x0 + sigma * noise), as in k-diffusion
and in diffusers' Euler-family schedulers.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from diffusers.schedulers.scheduling_utils import SchedulerOutput


def ancestral_step(sigma_from, sigma_to, eta: float):
    """(sigma_down, sigma_up): an ancestral step from sigma_from to sigma_to lands on sigma_down, then adds fresh
    noise of scale sigma_up; eta 0 adds none (the step is deterministic), 1 as much as the step allows."""
    if not eta:
        return sigma_to, sigma_to * 0
    sigma_up = torch.minimum(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    return (sigma_to**2 - sigma_up**2) ** 0.5, sigma_up


def denoised(scheduler, model_output: torch.Tensor, sample: torch.Tensor, sigma) -> torch.Tensor:
    """The clean sample the model predicts for `sample` at noise level sigma (epsilon or v-prediction)."""
    if scheduler.config.prediction_type == "v_prediction":
        return model_output * (-sigma / (sigma**2 + 1) ** 0.5) + sample / (sigma**2 + 1)
    return sample - sigma * model_output


def euler_step(sample: torch.Tensor, denoised: torch.Tensor, sigma, sigma_to) -> torch.Tensor:
    """An Euler step of the probability-flow ODE from sigma to sigma_to."""
    return sample + (sample - denoised) / sigma * (sigma_to - sigma)


def _log_sigmas(scheduler) -> np.ndarray:
    """log sigma of each training timestep (increasing)."""
    alphas = scheduler.alphas_cumprod.double().cpu().numpy()
    return np.log(((1 - alphas) / alphas) ** 0.5)


def sigma_to_timestep(scheduler, sigmas: torch.Tensor) -> torch.Tensor:
    """The (fractional) UNet timesteps of noise levels: log sigma interpolated between training timesteps, as
    k-diffusion's CompVisDenoiser does (clamped to the training range)."""
    log_sigmas = _log_sigmas(scheduler)
    return torch.from_numpy(np.interp(np.log(sigmas.double().cpu().numpy()), log_sigmas, np.arange(len(log_sigmas))))


def timestep_to_sigma(scheduler, timestep) -> float:
    """The noise level of a (fractional) UNet timestep: the inverse of sigma_to_timestep."""
    log_sigmas = _log_sigmas(scheduler)
    return math.exp(np.interp(float(timestep), np.arange(len(log_sigmas)), log_sigmas))


def output(prev_sample: torch.Tensor, return_dict: bool):
    """What a scheduler's step returns."""
    return SchedulerOutput(prev_sample=prev_sample) if return_dict else (prev_sample,)
