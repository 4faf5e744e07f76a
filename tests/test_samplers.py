"""Sampler and schedule names as A1111 knows them (../shared/a1111-api.md), their resolution, and the
diffusers schedulers they build."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from handler.errors import describe
from schemas import Txt2ImgRequest
from schemas.samplers import find_sampler, find_schedule, resolve

# a1111-api.md "Samplers": name -> (aliases, the schedule "Automatic" means, diffusers class (or the one the
# scheduler subclasses) or None)
A1111_SAMPLERS = {
    "DPM++ 2M": (["k_dpmpp_2m"], "karras", "DPMSolverMultistepScheduler"),
    "DPM++ SDE": (["k_dpmpp_sde"], "karras", "DPMSolverSDEScheduler"),
    "DPM++ 2M SDE": (["k_dpmpp_2m_sde"], "exponential", "DPMSolverMultistepScheduler"),
    "DPM++ 2M SDE Heun": (["k_dpmpp_2m_sde_heun"], "exponential", "DPMSolverMultistepScheduler"),
    "DPM++ 2S a": (["k_dpmpp_2s_a"], "karras", "KDPM2AncestralDiscreteScheduler"),  # with DPM++'s second half
    "DPM++ 3M SDE": (["k_dpmpp_3m_sde"], "exponential", "DPMSolverMultistepScheduler"),
    "Euler a": (["k_euler_a", "k_euler_ancestral"], "automatic", "EulerAncestralDiscreteScheduler"),
    "Euler": (["k_euler"], "automatic", "EulerDiscreteScheduler"),
    "LMS": (["k_lms"], "automatic", "LMSDiscreteScheduler"),
    "Heun": (["k_heun"], "automatic", "HeunDiscreteScheduler"),
    "DPM2": (["k_dpm_2"], "karras", "KDPM2DiscreteScheduler"),
    "DPM2 a": (["k_dpm_2_a"], "karras", "KDPM2AncestralDiscreteScheduler"),
    "DPM fast": (["k_dpm_fast"], None, None),
    "DPM adaptive": (["k_dpm_ad"], None, None),
    "Restart": (["restart"], None, None),
    "DDIM": (["ddim"], None, "DDIMScheduler"),
    "DDIM CFG++": (["ddim_cfgpp"], None, None),
    "PLMS": (["plms"], None, "PNDMScheduler"),
    "UniPC": (["unipc"], None, "UniPCMultistepScheduler"),
    "LCM": (["k_lcm"], None, "LCMScheduler"),
}
SUPPORTED_SAMPLERS = [name for name, (_, _, cls) in A1111_SAMPLERS.items() if cls]
UNSUPPORTED_SAMPLERS = [name for name, (_, _, cls) in A1111_SAMPLERS.items() if not cls]

# a1111-api.md "Schedules (name / label)"
A1111_SCHEDULES = {
    "automatic": "Automatic",
    "uniform": "Uniform",
    "karras": "Karras",
    "exponential": "Exponential",
    "polyexponential": "Polyexponential",
    "sgm_uniform": "SGM Uniform",
    "kl_optimal": "KL Optimal",
    "align_your_steps": "Align Your Steps",
    "simple": "Simple",
    "normal": "Normal",
    "ddim": "DDIM",
    "beta": "Beta",
}
UNSUPPORTED_SCHEDULES = ["polyexponential", "kl_optimal", "align_your_steps"]
SUPPORTED_SCHEDULES = [name for name in A1111_SCHEDULES if name not in UNSUPPORTED_SCHEDULES]

# Old combined names (A1111 before v1.9) -> (sampler, schedule). The first five are the doc's examples.
COMBINED_NAMES = {
    "DPM++ 2M Karras": ("DPM++ 2M", "karras"),
    "DPM++ SDE Karras": ("DPM++ SDE", "karras"),
    "LMS Karras": ("LMS", "karras"),
    "DPM2 a Karras": ("DPM2 a", "karras"),
    "DPM++ 2M SDE Exponential": ("DPM++ 2M SDE", "exponential"),
    "DPM2 Karras": ("DPM2", "karras"),
    "DPM++ 2S a Karras": ("DPM++ 2S a", "karras"),
    "DPM++ 2M SDE Karras": ("DPM++ 2M SDE", "karras"),
    "DPM++ 2M SDE Heun Karras": ("DPM++ 2M SDE Heun", "karras"),
    "DPM++ 2M SDE Heun Exponential": ("DPM++ 2M SDE Heun", "exponential"),
    "DPM++ 3M SDE Karras": ("DPM++ 3M SDE", "karras"),
    "DPM++ 3M SDE Exponential": ("DPM++ 3M SDE", "exponential"),
    "k_dpmpp_2m karras": ("DPM++ 2M", "karras"),  # alias + schedule name
    "dpm++ 2m karras": ("DPM++ 2M", "karras"),  # case-insensitive
}

# the diffusers settings each sampler must run with (beyond its class)
SAMPLER_SETTINGS = {
    "DPM++ 2M": {"algorithm_type": "dpmsolver++", "solver_order": 2},
    "DPM++ 2M SDE": {"algorithm_type": "sde-dpmsolver++", "solver_order": 2},
    "DPM++ 2M SDE Heun": {"algorithm_type": "sde-dpmsolver++", "solver_type": "heun"},
    "DPM++ 3M SDE": {"algorithm_type": "sde-dpmsolver++", "solver_order": 3},
    "PLMS": {"skip_prk_steps": True},
}

SCHEDULE_FLAGS = {  # schedule -> the diffusers config it must set
    "karras": {"use_karras_sigmas": True},
    "exponential": {"use_exponential_sigmas": True},
    "beta": {"use_beta_sigmas": True},
    "sgm_uniform": {"timestep_spacing": "trailing"},
    "simple": {"timestep_spacing": "trailing"},
    "automatic": {"timestep_spacing": "linspace"},
}
SIGMA_FLAGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")


def request_error(**payload) -> str:
    with pytest.raises(ValidationError) as caught:
        Txt2ImgRequest.model_validate(payload)
    message = describe(caught.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------- names

def test_doc_lists_match_the_table():
    from schemas.samplers import SAMPLERS, SCHEDULES

    assert {s.name for s in SAMPLERS} == set(A1111_SAMPLERS)
    assert {(s.name, s.label) for s in SCHEDULES} == set(A1111_SCHEDULES.items())


@pytest.mark.parametrize("name", SUPPORTED_SAMPLERS)
def test_supported_sampler_resolves_by_name_and_aliases(name):
    aliases, _, _ = A1111_SAMPLERS[name]
    for key in (name, *aliases, name.lower(), name.upper(), f"  {name} "):
        sampler, combined = find_sampler(key)
        assert sampler.name == name, key
        assert combined is None
    assert Txt2ImgRequest(sampler_name=name).sampler[0].name == name
    assert Txt2ImgRequest(sampler_index=aliases[0]).sampler[0].name == name


@pytest.mark.parametrize("name", SUPPORTED_SAMPLERS)
def test_automatic_schedule_is_the_samplers_default(name):
    _, default, _ = A1111_SAMPLERS[name]
    for scheduler in (None, "", "automatic", "Automatic"):
        sampler, schedule = resolve(name, scheduler)
        assert sampler.name == name
        if default is not None:
            assert schedule.name == default


@pytest.mark.parametrize("name", UNSUPPORTED_SAMPLERS)
def test_sampler_without_diffusers_equivalent_is_refused(name):
    aliases, _, _ = A1111_SAMPLERS[name]
    for key in (name, *aliases):
        with pytest.raises(ValueError, match="no diffusers equivalent") as caught:
            find_sampler(key)
        assert repr(name) in str(caught.value)
    message = request_error(sampler_name=name)
    assert message.startswith("sampler_name:") and "no diffusers equivalent" in message


@pytest.mark.parametrize("name", SUPPORTED_SCHEDULES)
def test_supported_schedule_found_by_name_and_label(name):
    label = A1111_SCHEDULES[name]
    for key in (name, label, label.lower(), name.upper()):
        schedule = find_schedule(key)
        assert (schedule.name, schedule.label) == (name, label), key


def test_no_schedule_means_automatic():
    assert find_schedule(None).name == "automatic"
    assert find_schedule("").name == "automatic"


@pytest.mark.parametrize("name", UNSUPPORTED_SCHEDULES)
def test_schedule_without_diffusers_equivalent_is_refused(name):
    for key in (name, A1111_SCHEDULES[name]):
        with pytest.raises(ValueError, match="no diffusers equivalent"):
            find_schedule(key)
    message = request_error(scheduler=A1111_SCHEDULES[name])
    assert message.startswith("scheduler:") and "no diffusers equivalent" in message


@pytest.mark.parametrize("combined", list(COMBINED_NAMES))
def test_old_combined_name_is_split_into_sampler_and_schedule(combined):
    expected_sampler, expected_schedule = COMBINED_NAMES[combined]
    sampler, schedule = resolve(combined, None)
    assert (sampler.name, schedule.name) == (expected_sampler, expected_schedule)
    request = Txt2ImgRequest(sampler_name=combined, scheduler="automatic")
    assert (request.sampler[0].name, request.sampler[1].name) == (expected_sampler, expected_schedule)


def test_unknown_sampler_error_lists_the_valid_names():
    with pytest.raises(ValueError) as caught:
        find_sampler("Nonexistent Sampler")
    message = str(caught.value)
    assert "'Nonexistent Sampler'" in message
    for name in SUPPORTED_SAMPLERS:
        assert name in message
    assert "DPM fast" not in message and "Restart" not in message  # only names that work are offered
    request_message = request_error(sampler_name="Nonexistent Sampler")
    assert request_message.startswith("sampler_name:") and "DPM++ 2M" in request_message


def test_unknown_scheduler_error_lists_the_valid_labels():
    message = request_error(scheduler="wiggly")
    assert message.startswith("scheduler:") and "'wiggly'" in message
    for name in SUPPORTED_SCHEDULES:
        assert A1111_SCHEDULES[name] in message
    assert "Polyexponential" not in message


def test_schedule_for_a_sampler_that_takes_none_is_refused():
    message = request_error(sampler_name="Euler a", scheduler="Karras")
    assert message.startswith("scheduler:") and "Euler a" in message


@pytest.mark.parametrize("payload, field", [
    ({"eta": 1.5}, "eta"), ({"eta": -0.1}, "eta"), ({"s_churn": -1}, "s_churn"), ({"s_noise": -0.5}, "s_noise"),
    ({"s_tmin": -1}, "s_tmin"), ({"s_tmax": -1}, "s_tmax"), ({"s_min_uncond": -2}, "s_min_uncond"),
])
def test_sampler_parameters_out_of_range_are_refused_by_name(payload, field):
    assert request_error(sampler_name="Euler a", **payload).startswith(f"{field}:")


# ---------------------------------------------------------------- diffusers schedulers

@pytest.fixture(scope="module")
def scheduler_config(engine):
    """The tiny checkpoint's own noise schedule (its scheduler config)."""
    return engine.model.scheduler_config


def _config_has(scheduler, expected: dict):
    for key, value in expected.items():
        assert scheduler.config[key] == value, f"{type(scheduler).__name__}.{key}"


@pytest.mark.parametrize("name", SUPPORTED_SAMPLERS)
def test_make_scheduler_builds_the_expected_diffusers_class(name, scheduler_config):
    import diffusers

    from engine.sampling.samplers import make_scheduler

    sampler, schedule = resolve(name, None)
    scheduler = make_scheduler(scheduler_config, sampler, schedule, [0])
    assert isinstance(scheduler, getattr(diffusers, A1111_SAMPLERS[name][2]))
    _config_has(scheduler, SAMPLER_SETTINGS.get(name, {}))
    # the checkpoint's noise schedule is kept
    for key in ("beta_start", "beta_end", "beta_schedule", "num_train_timesteps", "prediction_type"):
        assert scheduler.config[key] == scheduler_config[key], key
    default = A1111_SAMPLERS[name][1]
    if default in ("karras", "exponential"):
        _config_has(scheduler, SCHEDULE_FLAGS[default])
    scheduler.set_timesteps(5)  # the settings are ones this class can run with
    assert len(scheduler.timesteps) >= 5


@pytest.mark.parametrize("schedule_name", SUPPORTED_SCHEDULES)
@pytest.mark.parametrize("sampler_name", ["DPM++ 2M", "Euler"])
def test_schedule_sets_the_diffusers_flags(sampler_name, schedule_name, scheduler_config):
    from engine.sampling.samplers import make_scheduler

    sampler, schedule = resolve(sampler_name, A1111_SCHEDULES[schedule_name])
    if schedule_name != "automatic":
        assert schedule.name == schedule_name
    scheduler = make_scheduler(scheduler_config, sampler, schedule, [0])
    expected = SCHEDULE_FLAGS.get(schedule.name, {})
    _config_has(scheduler, expected)
    for flag in SIGMA_FLAGS:  # exactly one sigma schedule, or none
        if flag not in expected:
            assert not scheduler.config.get(flag), f"{flag} set for {schedule.label}"
    scheduler.set_timesteps(6)
    assert len(scheduler.timesteps) >= 6


@pytest.mark.parametrize("combined", ["LMS Karras", "DPM2 a Karras", "DPM++ SDE Karras", "DPM++ 2M SDE Exponential"])
def test_combined_names_build_schedulers_with_their_schedule(combined, scheduler_config):
    from engine.sampling.samplers import make_scheduler

    sampler, schedule = resolve(combined, None)
    scheduler = make_scheduler(scheduler_config, sampler, schedule, [0])
    _config_has(scheduler, SCHEDULE_FLAGS[schedule.name])
    scheduler.set_timesteps(5)
