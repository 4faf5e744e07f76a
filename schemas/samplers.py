"""The one table of A1111 sampler and schedule names and what each runs as in diffusers.

Pure data plus name resolution: the request schema resolves names here, the engine builds the
diffusers scheduler from the resolved entries. Facts from ../shared/a1111-api.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import quoted

AUTOMATIC = "automatic"


@dataclass(frozen=True)
class Schedule:
    """An A1111 schedule type ("Schedule type" in the infotext)."""

    name: str
    label: str
    diffusers: dict | None  # scheduler config overrides; None: no diffusers equivalent


@dataclass(frozen=True)
class Sampler:
    """An A1111 sampler and the diffusers scheduler class and settings it runs as."""

    name: str
    aliases: tuple[str, ...]
    scheduler_class: str | None  # diffusers class name (or its base: engine/sampling/samplers.py); None: none
    config: dict = field(default_factory=dict)
    default_schedule: str = AUTOMATIC  # what "Automatic" means for this sampler
    sigma_schedules: bool = True  # accepts Karras/Exponential/Beta sigma schedules
    function: str | None = None  # A1111's sampling function (k-diffusion's sample_*, or its own ddim/plms/unipc)

    @property
    def eta_option(self) -> str | None:
        """The option giving the sampler's eta when a request sends none; None: the sampler takes no eta."""
        return ETA_OPTIONS.get(self.function)

    @property
    def extra_params(self) -> tuple[str, ...]:
        """The s_* parameters A1111 passes to the sampler (it ignores the others)."""
        return EXTRA_PARAMS.get(self.function, ())

    @property
    def guided_by_timestep(self) -> bool:
        """A1111's CFG denoiser sees the UNet timestep rather than sigma (its DDIM, PLMS, UniPC): s_min_uncond
        is compared with the timestep."""
        return self.function in TIMESTEP_FUNCTIONS

    @property
    def adds_noise(self) -> bool:
        """Whether steps draw fresh noise (at an eta above 0): the samplers eta_noise_seed_delta (ENSD) affects."""
        return self.eta_option == "eta_ancestral"


SCHEDULES: tuple[Schedule, ...] = (
    Schedule(AUTOMATIC, "Automatic", {"timestep_spacing": "linspace"}),  # the model's own sigmas
    Schedule("uniform", "Uniform", {"timestep_spacing": "linspace"}),
    Schedule("karras", "Karras", {"timestep_spacing": "linspace", "use_karras_sigmas": True}),
    Schedule("exponential", "Exponential", {"timestep_spacing": "linspace", "use_exponential_sigmas": True}),
    Schedule("polyexponential", "Polyexponential", None),
    Schedule("sgm_uniform", "SGM Uniform", {"timestep_spacing": "trailing"}),
    Schedule("kl_optimal", "KL Optimal", None),
    Schedule("align_your_steps", "Align Your Steps", None),
    Schedule("simple", "Simple", {"timestep_spacing": "trailing"}),
    Schedule("normal", "Normal", {"timestep_spacing": "linspace"}),
    Schedule("ddim", "DDIM", {"timestep_spacing": "leading", "steps_offset": 1}),
    Schedule("beta", "Beta", {"timestep_spacing": "linspace", "use_beta_sigmas": True}),
)

# A1111 1.10's rules, by sampling function: the option that gives eta when a request sends none (for the
# functions that take eta), and the s_* parameters it passes (sd_samplers_kdiffusion.sampler_extra_params).
ETA_OPTIONS = {f: "eta_ancestral" for f in ("sample_euler_ancestral", "sample_dpm_2_ancestral",
                                             "sample_dpmpp_2s_ancestral", "sample_dpmpp_sde",
                                             "sample_dpmpp_2m_sde", "sample_dpmpp_3m_sde")} | {"ddim": "eta_ddim"}
CHURN = ("s_churn", "s_tmin", "s_tmax", "s_noise")
EXTRA_PARAMS = {"sample_euler": CHURN, "sample_heun": CHURN, "sample_dpm_2": CHURN} | {
    f: ("s_noise",) for f in ("sample_dpm_2_ancestral", "sample_dpmpp_2s_ancestral", "sample_dpmpp_sde",
                              "sample_dpmpp_2m_sde", "sample_dpmpp_3m_sde")}
TIMESTEP_FUNCTIONS = ("ddim", "plms", "unipc")  # A1111's timestep samplers (the others are k-diffusion's)

_DPMPP = "DPMSolverMultistepScheduler"
_SDE = {"algorithm_type": "sde-dpmsolver++"}

SAMPLERS: tuple[Sampler, ...] = (
    Sampler("DPM++ 2M", ("k_dpmpp_2m",), _DPMPP, {"algorithm_type": "dpmsolver++", "solver_order": 2}, "karras",
            function="sample_dpmpp_2m"),
    Sampler("DPM++ SDE", ("k_dpmpp_sde",), "DPMSolverSDEScheduler", {"use_karras_sigmas": True}, "karras",
            sigma_schedules=False, function="sample_dpmpp_sde"),
    Sampler("DPM++ 2M SDE", ("k_dpmpp_2m_sde",), _DPMPP, {**_SDE, "solver_order": 2}, "exponential",
            function="sample_dpmpp_2m_sde"),
    Sampler("DPM++ 2M SDE Heun", ("k_dpmpp_2m_sde_heun",), _DPMPP,
            {**_SDE, "solver_order": 2, "solver_type": "heun"}, "exponential", function="sample_dpmpp_2m_sde"),
    Sampler("DPM++ 2S a", ("k_dpmpp_2s_a",), "KDPM2AncestralDiscreteScheduler", default_schedule="karras",
            function="sample_dpmpp_2s_ancestral"),
    Sampler("DPM++ 3M SDE", ("k_dpmpp_3m_sde",), _DPMPP, {**_SDE, "solver_order": 3}, "exponential",
            function="sample_dpmpp_3m_sde"),
    Sampler("Euler a", ("k_euler_a", "k_euler_ancestral"), "EulerAncestralDiscreteScheduler",
            sigma_schedules=False, function="sample_euler_ancestral"),
    Sampler("Euler", ("k_euler",), "EulerDiscreteScheduler", function="sample_euler"),
    Sampler("LMS", ("k_lms",), "LMSDiscreteScheduler", function="sample_lms"),
    Sampler("Heun", ("k_heun",), "HeunDiscreteScheduler", function="sample_heun"),
    Sampler("DPM2", ("k_dpm_2",), "KDPM2DiscreteScheduler", default_schedule="karras", function="sample_dpm_2"),
    Sampler("DPM2 a", ("k_dpm_2_a",), "KDPM2AncestralDiscreteScheduler", default_schedule="karras",
            function="sample_dpm_2_ancestral"),
    Sampler("DPM fast", ("k_dpm_fast",), None),
    Sampler("DPM adaptive", ("k_dpm_ad",), None),
    Sampler("Restart", ("restart",), None, default_schedule="karras"),
    Sampler("DDIM", ("ddim",), "DDIMScheduler", {"timestep_spacing": "leading", "steps_offset": 1},
            sigma_schedules=False, function="ddim"),
    Sampler("DDIM CFG++", ("ddim_cfgpp",), None, sigma_schedules=False),
    Sampler("PLMS", ("plms",), "PNDMScheduler",
            {"skip_prk_steps": True, "timestep_spacing": "leading", "steps_offset": 1},
            sigma_schedules=False, function="plms"),
    Sampler("UniPC", ("unipc",), "UniPCMultistepScheduler", sigma_schedules=False, function="unipc"),
    Sampler("LCM", ("k_lcm",), "LCMScheduler", sigma_schedules=False, function="sample_lcm"),
)

DEFAULT_SAMPLER = "Euler"  # A1111's API default (sampler_index) when sampler_name is null

_SAMPLERS_BY_KEY = {key.lower(): s for s in SAMPLERS for key in (s.name, *s.aliases)}
_SCHEDULES_BY_KEY = {key.lower(): s for s in SCHEDULES for key in (s.name, s.label)}


def supported_sampler_names() -> list[str]:
    return [s.name for s in SAMPLERS if s.scheduler_class]


def supported_schedule_labels() -> list[str]:
    return [s.label for s in SCHEDULES if s.diffusers is not None]


def find_schedule(name: str | None) -> Schedule:
    """A schedule by name or label, case-insensitive; None and "" mean Automatic."""
    schedule = _SCHEDULES_BY_KEY.get((name or AUTOMATIC).strip().lower())
    if schedule is None:
        raise ValueError(
            f"unknown scheduler {quoted(name or '')}; valid: {', '.join(supported_schedule_labels())}"
        )
    if schedule.diffusers is None:
        raise ValueError(
            f"scheduler {schedule.label!r} has no diffusers equivalent in this worker; "
            f"valid: {', '.join(supported_schedule_labels())}"
        )
    return schedule


def find_sampler(name: str) -> tuple[Sampler, Schedule | None]:
    """A sampler by name or alias, or an old combined name such as "DPM++ 2M Karras".

    Returns the sampler and the schedule the combined name carried (None if it carried none).
    """
    key = name.strip().lower()
    if key in _SAMPLERS_BY_KEY:
        return _check_supported(_SAMPLERS_BY_KEY[key]), None
    for schedule in SCHEDULES:
        for suffix in {schedule.label.lower(), schedule.name.lower()}:
            base = key.removesuffix(" " + suffix)
            if base != key and base in _SAMPLERS_BY_KEY:
                return _check_supported(_SAMPLERS_BY_KEY[base]), find_schedule(schedule.name)
    raise ValueError(f"unknown sampler {quoted(name)}; valid: {', '.join(supported_sampler_names())}")


def _check_supported(sampler: Sampler) -> Sampler:
    if sampler.scheduler_class is None:
        raise ValueError(
            f"sampler {sampler.name!r} has no diffusers equivalent in this worker; "
            f"valid: {', '.join(supported_sampler_names())}"
        )
    return sampler


def resolve(sampler_name: str, scheduler: str | None) -> tuple[Sampler, Schedule]:
    """The sampler and the concrete schedule (Automatic resolved) a request asks for.

    A schedule in a combined sampler name applies only when `scheduler` is Automatic, as in A1111.
    """
    sampler, combined = find_sampler(sampler_name)
    schedule = find_schedule(scheduler)
    if schedule.name == AUTOMATIC:
        schedule = combined or find_schedule(sampler.default_schedule)
    if not sampler.sigma_schedules and schedule.name not in (AUTOMATIC, sampler.default_schedule):
        raise ValueError(
            f"sampler {sampler.name!r} does not take a schedule type; "
            f"send scheduler 'Automatic' (got {schedule.label!r})"
        )
    return sampler, schedule
