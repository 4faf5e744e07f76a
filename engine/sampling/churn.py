"""A1111's s_churn, s_tmin, s_tmax and s_noise on Euler, Heun and DPM2 (Karras et al.'s "churn").

As k-diffusion's sample_euler, sample_heun and sample_dpm_2 do, a step from sigma whose sigma lies within
[s_tmin, s_tmax] first adds fresh noise (times s_noise) that lifts the sample to sigma_hat = sigma * (1 + gamma),
gamma = min(s_churn / steps, sqrt(2) - 1), and the model then evaluates the step from sigma_hat. diffusers' Euler
adds such noise only after the model has run, and Heun and DPM2 have none, so the schedulers here add it in
`churn`, which the sampling loop calls before each model evaluation, and step from sigma_hat. Steps without
churn are diffusers' own.
"""

from __future__ import annotations

import torch
from diffusers import EulerDiscreteScheduler, HeunDiscreteScheduler, KDPM2DiscreteScheduler
from diffusers.utils.torch_utils import randn_tensor

from schemas.sampler_params import NEUTRAL

from .kdiffusion import denoised, euler_step, output, sigma_to_timestep

MAX_GAMMA = 2**0.5 - 1


class _Churn:
    params = NEUTRAL
    sigma_hat: torch.Tensor | None = None  # the noise level the current step starts from, while it has churn

    def churn(self, sample: torch.Tensor, timestep: torch.Tensor, generators) -> tuple[torch.Tensor, torch.Tensor]:
        """Before a model evaluation: the sample and the UNet timestep to evaluate it at; lifted to sigma_hat at the
        start of a step with churn."""
        if self.step_index is None:
            self._init_step_index(timestep)
        if not self._starts_step:
            return sample, self._timestep(self._model_sigma, timestep)
        sigma = self.sigmas[self.step_index]
        gamma = self._gamma(float(sigma))
        self.sigma_hat = sigma * (1 + gamma) if gamma > 0 else None
        if self.sigma_hat is None:
            return sample, timestep
        noise = randn_tensor(sample.shape, generator=generators, device=sample.device, dtype=sample.dtype)
        sample = sample + noise * self.params.s_noise * (self.sigma_hat**2 - sigma**2) ** 0.5
        return sample, self._timestep(self.sigma_hat, timestep)

    def _gamma(self, sigma: float) -> float:
        params = self.params
        if not params.s_churn or not params.s_tmin <= sigma <= params.s_tmax:
            return 0.0
        steps = self.num_inference_steps - (self.begin_index or 0) // self.order  # the steps this run takes
        return min(params.s_churn / steps, MAX_GAMMA)

    def _timestep(self, sigma: torch.Tensor | None, timestep: torch.Tensor) -> torch.Tensor:
        if sigma is None:
            return timestep
        return sigma_to_timestep(self, sigma.reshape(1))[0].to(timestep)

    @property
    def _starts_step(self) -> bool:
        return self.state_in_first_order

    @property
    def _model_sigma(self) -> torch.Tensor | None:
        """The noise level the model evaluates at, where churn changed it."""
        return self.sigma_hat if self._starts_step else None

    def scale_model_input(self, sample: torch.Tensor, timestep) -> torch.Tensor:
        sigma = self._model_sigma
        if sigma is None:
            return super().scale_model_input(sample, timestep)
        return sample / (sigma**2 + 1) ** 0.5

    def step(self, model_output, timestep, sample, return_dict=True):
        if self.sigma_hat is None:
            return super().step(model_output, timestep, sample, return_dict=return_dict)
        prev = self._churned_step(model_output, sample)
        self._step_index += 1
        return output(prev, return_dict)


class Euler(_Churn, EulerDiscreteScheduler):
    """Euler: k-diffusion's sample_euler."""

    _starts_step = True

    def _churned_step(self, model_output, sample):
        sigma_hat, self.sigma_hat = self.sigma_hat, None
        prediction = denoised(self, model_output, sample, sigma_hat)
        return euler_step(sample, prediction, sigma_hat, self.sigmas[self.step_index + 1])


class Heun(_Churn, HeunDiscreteScheduler):
    """Heun: k-diffusion's sample_heun. A churned step's first evaluation is from sigma_hat; the second, at the
    next sigma, is diffusers' own."""

    def _churned_step(self, model_output, sample):
        sigma_hat, self.sigma_hat = self.sigma_hat, None
        derivative = (sample - denoised(self, model_output, sample, sigma_hat)) / sigma_hat
        self.prev_derivative, self.dt, self.sample = derivative, self.sigmas[self.step_index + 1] - sigma_hat, sample
        return sample + derivative * self.dt


class DPM2(_Churn, KDPM2DiscreteScheduler):
    """DPM2: k-diffusion's sample_dpm_2. A churned step's second evaluation is halfway (in log sigma) from
    sigma_hat to the next sigma, and it steps from sigma_hat."""

    sigma_mid: torch.Tensor | None = None

    @property
    def _model_sigma(self) -> torch.Tensor | None:
        if self.sigma_hat is None:
            return None
        return self.sigma_hat if self._starts_step else self.sigma_mid

    def _churned_step(self, model_output, sample):
        sigma_hat = self.sigma_hat
        if self._starts_step:
            sigma_next = self.sigmas[self.step_index + 1]
            self.sigma_mid = (sigma_hat * sigma_next) ** 0.5  # 0 on the last step: an Euler step to 0
            self.sample = sample
            return euler_step(sample, denoised(self, model_output, sample, sigma_hat), sigma_hat, self.sigma_mid)
        sigma_next = self.sigmas[self.step_index]
        derivative = (sample - denoised(self, model_output, sample, self.sigma_mid)) / self.sigma_mid
        prev = self.sample + derivative * (sigma_next - sigma_hat)
        self.sample = self.sigma_hat = self.sigma_mid = None
        return prev
