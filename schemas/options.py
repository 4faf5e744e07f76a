"""Server options (A1111's /sdapi/v1/options names) that change generation, with A1111's defaults.

A request's `override_settings` may set any of them for that request; a key this worker does not
implement is refused rather than ignored.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from . import limits


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    sd_model_checkpoint: str = Field("", description="checkpoint title, name or short hash")
    sd_vae: str = Field("Automatic", description="VAE file name in VAE/, 'Automatic' or 'None' (the checkpoint's)")
    CLIP_stop_at_last_layers: int = Field(1, ge=1, description="clip skip: at most the text encoder's layer count")
    eta_noise_seed_delta: int = Field(0, ge=0, le=limits.MAX_SEED_DELTA,
                                      description="added to seeds for samplers' step noise (ENSD)")
    img2img_fix_steps: bool = Field(False, description="img2img runs exactly `steps` steps")
    samples_format: Literal["png", "jpg", "jpeg", "webp"] = Field("png", description="image format of results")
    jpeg_quality: int = Field(80, ge=1, le=100, description="JPEG and WebP quality")
    face_restoration: bool = Field(False, description="restore faces when a request leaves restore_faces unset")
    face_restoration_model: Literal["CodeFormer", "GFPGAN"] = Field("CodeFormer", description="restore_faces' restorer")
    code_former_weight: float = Field(0.5, ge=0, le=1, description="CodeFormer's weight for restore_faces (0 = "
                                                                   "the most effect)")
    # sampler parameters: the defaults of the request fields of the same name (eta: by sampler)
    eta_ancestral: float = Field(1.0, ge=0, le=1, description="eta of the ancestral and SDE samplers")
    eta_ddim: float = Field(0.0, ge=0, le=1, description="eta of DDIM")
    s_churn: float = Field(0.0, ge=0, description="sigma churn (Euler, Heun, DPM2)")
    s_tmin: float = Field(0.0, ge=0, description="sigma tmin (Euler, Heun, DPM2)")
    s_tmax: float = Field(0.0, ge=0, description="sigma tmax (Euler, Heun, DPM2); 0 = infinity")
    s_noise: float = Field(1.0, ge=0, description="sigma noise (Euler, Heun, DPM2, ancestral and SDE samplers)")
    s_min_uncond: float = Field(0.0, ge=0, description="NGMS: below this sigma, every other step skips the "
                                                       "negative prompt")

    def merged(self, overrides: dict | None) -> Options:
        """These options with a request's overrides applied (validated)."""
        return Options.model_validate({**self.model_dump(), **(overrides or {})})
