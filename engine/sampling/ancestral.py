"""A1111's eta and s_noise on the samplers that add fresh noise every step (ancestral and SDE samplers).

diffusers runs them as k-diffusion does with eta 1 and s_noise 1 (DPM++ 2S a: not at all). Each scheduler here
is the diffusers one with `params` (schemas.sampler_params.SamplerParams) applied as the k-diffusion function
of the same name applies eta and s_noise (k_diffusion/sampling.py): eta scales the fresh noise each step adds
(`ancestral_step`; eta 0 makes the sampler deterministic), s_noise multiplies it. Euler a takes no s_noise,
as A1111 passes it none.
"""

from __future__ import annotations

import torch
from diffusers import (DPMSolverMultistepScheduler, DPMSolverSDEScheduler, EulerAncestralDiscreteScheduler,
                       KDPM2AncestralDiscreteScheduler)
from diffusers.schedulers.scheduling_dpmsolver_sde import BrownianTreeNoiseSampler
from diffusers.utils.torch_utils import randn_tensor

from schemas.sampler_params import SamplerParams

from .kdiffusion import ancestral_step, denoised, euler_step, output, sigma_to_timestep

ETA_1 = SamplerParams(eta=1.0)  # what diffusers runs: the schedulers' params until make_scheduler sets them


def _noise(model_output: torch.Tensor, generator) -> torch.Tensor:
    return randn_tensor(model_output.shape, generator=generator, device=model_output.device, dtype=model_output.dtype)


class EulerAncestral(EulerAncestralDiscreteScheduler):
    """Euler a: k-diffusion's sample_euler_ancestral."""

    params = ETA_1

    def step(self, model_output, timestep, sample, generator=None, return_dict=True):
        if self.step_index is None:
            self._init_step_index(timestep)
        sigma, sigma_next = self.sigmas[self.step_index], self.sigmas[self.step_index + 1]
        sample = sample.to(torch.float32)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, self.params.eta)
        prev = euler_step(sample, denoised(self, model_output, sample, sigma), sigma, sigma_down)
        if sigma_next > 0:
            prev = prev + _noise(model_output, generator) * sigma_up
        self._step_index += 1
        return output(prev.to(model_output.dtype), return_dict)


def _doubled(values: torch.Tensor) -> torch.Tensor:
    """Per-step values in the layout of diffusers' two-stage schedulers: the inner entries twice."""
    return torch.cat([values[:1], values[1:].repeat_interleave(2), values[-1:]])


class DPM2Ancestral(KDPM2AncestralDiscreteScheduler):
    """DPM2 a: k-diffusion's sample_dpm_2_ancestral. eta and s_noise change only each step's split into a
    deterministic part (to sigma_down, through the midpoint the second model evaluation is at) and fresh noise
    (sigma_up), which diffusers computes in set_timesteps: they are computed again here with them."""

    params = ETA_1

    def set_timesteps(self, num_inference_steps, device=None, num_train_timesteps=None):
        super().set_timesteps(num_inference_steps, device, num_train_timesteps)
        sigmas = self.sigmas[0::2]  # the schedule, ending in 0
        sigma_down, sigma_up = ancestral_step(sigmas[:-1], sigmas[1:], self.params.eta)
        midpoint = (sigmas[:-1] * sigma_down) ** 0.5  # halfway in log sigma; 0 on the last step (a single Euler step)
        end = sigmas[-1:]
        self.sigmas_down = _doubled(torch.cat([sigma_down, end]))
        self.sigmas_up = _doubled(torch.cat([sigma_up * self.params.s_noise, end]))
        self.sigmas_interpol = _doubled(torch.cat([midpoint, end]))
        self.timesteps[1::2] = sigma_to_timestep(self, midpoint[:-1]).to(self.timesteps)


class DPMPP2SAncestral(DPM2Ancestral):
    """DPM++ 2S a: k-diffusion's sample_dpmpp_2s_ancestral. Its steps have DPM2 a's structure and first half
    (an Euler step to the midpoint); the second half is DPM-Solver++'s (an exponential-integrator step to
    sigma_down with the midpoint's prediction), then the fresh noise."""

    def step(self, model_output, timestep, sample, generator=None, return_dict=True):
        if self.step_index is None:
            self._init_step_index(timestep)
        if self.state_in_first_order:
            return super().step(model_output, timestep, sample, generator, return_dict)
        i = self.step_index - 1
        prediction = denoised(self, model_output, sample, self.sigmas_interpol[i])
        prev = euler_step(self.sample, prediction, self.sigmas[i], self.sigmas_down[i])  # the DPM-Solver++ step
        prev = prev + _noise(model_output, generator) * self.sigmas_up[i]
        self.sample = None
        self._step_index += 1
        return output(prev, return_dict)


class DPMPPSDE(DPMSolverSDEScheduler):
    """DPM++ SDE: k-diffusion's sample_dpmpp_sde (midpoint r = 1/2), its Brownian-tree noise scaled by eta and
    s_noise in both half-steps."""

    params = ETA_1

    def step(self, model_output, timestep, sample, return_dict=True):
        if self.step_index is None:
            self._init_step_index(timestep)
        if self.noise_sampler is None:
            sigma_min, sigma_max = self.sigmas[self.sigmas > 0].min(), self.sigmas.max()
            self.noise_sampler = BrownianTreeNoiseSampler(sample, sigma_min.item(), sigma_max.item(),
                                                          self.noise_sampler_seed)
        first = self.state_in_first_order
        index = self.step_index if first else self.step_index - 1
        sigma, sigma_next = self.sigmas[index], self.sigmas[index + 1]
        prediction = denoised(self, model_output, sample, sigma if first else self.mid_point_sigma)
        if sigma_next == 0:
            prev = euler_step(sample, prediction, sigma, sigma_next)
        else:
            t, t_next = sigma.log().neg(), sigma_next.log().neg()  # k-diffusion steps in t = -log sigma
            if first:
                t_next = t + (t_next - t) / 2  # the midpoint
            sigma, target = t.neg().exp(), t_next.neg().exp()
            start = sample if first else self.sample
            sigma_down, sigma_up = ancestral_step(sigma, target, self.params.eta)
            prev = euler_step(start, prediction, sigma, sigma_down)  # the DPM-Solver++ step
            prev = prev + self.noise_sampler(sigma, target) * self.params.s_noise * sigma_up
            self.sample, self.mid_point_sigma = (sample, target) if first else (None, None)
        self._step_index += 1
        return output(prev, return_dict)


class DPMPPMultistepSDE(DPMSolverMultistepScheduler):
    """DPM++ 2M SDE (midpoint or Heun) and 3M SDE: k-diffusion's sample_dpmpp_2m_sde and sample_dpmpp_3m_sde.

    diffusers' updates are the same with eta 1 (its samples are variance-preserving, x * alpha, and its
    third-order term differs), so the three updates are k-diffusion's here.
    """

    params = ETA_1

    def dpm_solver_first_order_update(self, model_output, *args, sample=None, noise=None, **kwargs):
        return self._update([model_output], sample, noise)

    def multistep_dpm_solver_second_order_update(self, model_output_list, *args, sample=None, noise=None, **kwargs):
        return self._update(model_output_list[-2:], sample, noise)

    def multistep_dpm_solver_third_order_update(self, model_output_list, *args, sample=None, noise=None, **kwargs):
        return self._update(model_output_list[-3:], sample, noise)

    def _update(self, predictions: list[torch.Tensor], sample: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """One step with the clean-sample predictions of this and earlier steps (oldest first)."""
        i, eta = self.step_index, self.params.eta
        sigmas = self.sigmas  # variance-exploding
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        if sigma_next == 0:
            return predictions[-1]
        x = sample * (sigma**2 + 1) ** 0.5  # to the variance-exploding scale
        h = sigma.log() - sigma_next.log()
        h_eta = h * (eta + 1)
        x = sigma_next / sigma * (-eta * h).exp() * x - h_eta.neg().expm1() * predictions[-1]
        if len(predictions) == 2:
            d = (predictions[-1] - predictions[-2]) / ((sigmas[i - 1].log() - sigma.log()) / h)
            if self.config.solver_type == "heun" or self.config.solver_order == 3:
                x = x + (h_eta.neg().expm1() / h_eta + 1) * d
            else:
                x = x - 0.5 * h_eta.neg().expm1() * d
        elif len(predictions) == 3:
            r0 = (sigmas[i - 1].log() - sigma.log()) / h
            r1 = (sigmas[i - 2].log() - sigmas[i - 1].log()) / h
            d1_0 = (predictions[-1] - predictions[-2]) / r0
            d1_1 = (predictions[-2] - predictions[-3]) / r1
            d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            phi_2 = h_eta.neg().expm1() / h_eta + 1
            phi_3 = phi_2 / h_eta - 0.5
            x = x + phi_2 * d1 - phi_3 * d2
        if eta:
            x = x + noise * sigma_next * (-2 * eta * h).expm1().neg().sqrt() * self.params.s_noise
        return x / (sigma_next**2 + 1) ** 0.5
