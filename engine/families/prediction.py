"""v-prediction and zero terminal SNR: what a checkpoint's denoiser was trained for, beyond its architecture's
config, found as A1111 finds it.

- SD 2.x 768-v checkpoints carry no marker: A1111 runs the UNet on a fixed input (engine/families/sd2.py,
  `v_parameterized`); v ones load with the 768-v config (`V_TWINS`), whose scheduler predicts v.
- SDXL files with a `v_pred` tensor (NoobAI-XL v-pred, and files people mark so) predict v: A1111 loads them with
  its sd_xl_v config, base checkpoints only (an inpainting or refiner file keeps its own config).
- Files of any family with a `ztsnr` tensor were trained with zero terminal SNR: A1111 rescales the model's noise
  schedule (alphas_cumprod) so that its last step is pure noise, clamping the last value to a tiny positive one
  so that the largest sigma stays finite (about 4519). Every sampler sees the rescaled schedule; here it becomes
  the scheduler config's `trained_betas`, which every diffusers scheduler takes (diffusers' own
  `rescale_betas_zero_snr` is not, and it clamps to another value).

The markers' values are never read (they are empty tensors). The samplers only read the scheduler config.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from .sd2 import V_TWINS

V_PRED_KEY = "v_pred"
ZTSNR_KEY = "ztsnr"
V_PRED_MARKED = frozenset({"sdxl", "tiny-sdxl"})  # the configs A1111 swaps for sd_xl_v.yaml on a v_pred marker
TERMINAL_ALPHA_BAR = 4.8973451890853435e-08  # A1111's alphas_cumprod[-1] after the zero-terminal-SNR rescale


@dataclass(frozen=True)
class Prediction:
    """What a checkpoint's denoiser predicts and on which noise schedule, where its config doesn't say."""

    v_prediction: bool = False
    zero_terminal_snr: bool = False

    def scheduler_config(self, config: dict) -> dict:
        """A scheduler config with this prediction: the same for a checkpoint its config already describes."""
        config = dict(config)
        if self.v_prediction:
            config["prediction_type"] = "v_prediction"
        if self.zero_terminal_snr:
            config["trained_betas"] = zero_terminal_snr_betas(config)
        return config


def single_file_prediction(architecture: str, keys: Iterable[str],
                           v_tested: Callable[[str], bool]) -> tuple[str, Prediction]:
    """(the shipped config to load a single file with, its Prediction) from the config its shapes name, its
    tensor names, and `v_tested(architecture)`: A1111's UNet test of the file, where its family has one."""
    keys = set(keys)
    v_prediction = V_PRED_KEY in keys and architecture in V_PRED_MARKED
    if architecture in V_TWINS and v_tested(architecture):
        architecture, v_prediction = V_TWINS[architecture], True
    return architecture, Prediction(v_prediction, ZTSNR_KEY in keys)


def zero_terminal_snr_betas(config: dict) -> list[float]:
    """The betas of the config's noise schedule rescaled to zero terminal SNR as A1111 rescales it: sqrt(alpha bar)
    shifted so that its last value is 0 and scaled so that its first is unchanged; the last alpha bar then set to
    TERMINAL_ALPHA_BAR. From the config's beta range (not any trained_betas), so applying it twice changes nothing."""
    alpha_bar = torch.cumprod(1 - _betas(config), dim=0)
    root = alpha_bar.sqrt()
    first, last = root[0].item(), root[-1].item()
    alpha_bar = ((root - last) * first / (first - last)) ** 2
    alpha_bar[-1] = TERMINAL_ALPHA_BAR
    previous = torch.cat([torch.ones(1, dtype=alpha_bar.dtype), alpha_bar[:-1]])
    return (1 - alpha_bar / previous).tolist()


def _betas(config: dict) -> torch.Tensor:
    start, end, count = config["beta_start"], config["beta_end"], config["num_train_timesteps"]
    if config["beta_schedule"] == "scaled_linear":
        return torch.linspace(start**0.5, end**0.5, count, dtype=torch.float64) ** 2
    if config["beta_schedule"] == "linear":
        return torch.linspace(start, end, count, dtype=torch.float64)
    raise ValueError(f"no zero-terminal-SNR rescale for a {config['beta_schedule']!r} beta schedule")
