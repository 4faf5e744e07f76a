"""engine/settings.py: every environment variable the engine obeys, read once into one object."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.settings import (DEFAULT_MAX_CONTROLNETS, DEFAULT_MAX_LORAS, DEFAULT_MAX_MODELS, DEFAULT_UPSCALE_TILE,
                             Settings, SettingsError)


def test_defaults_when_nothing_is_set():
    settings = Settings.from_env({})
    assert settings == Settings(models_dir=Path("./models"), sd_model=None, device=None, dtype=None, warmup=None,
                                max_models=DEFAULT_MAX_MODELS, max_loras=DEFAULT_MAX_LORAS,
                                upscale_tile=DEFAULT_UPSCALE_TILE, styles_file=None,
                                max_controlnets=DEFAULT_MAX_CONTROLNETS)
    assert settings.styles_path == Path("./models/styles.csv")


def test_every_variable_is_read():
    settings = Settings.from_env({
        "MODELS_DIR": "/m", "SD_MODEL": "x.safetensors", "WORKER_DEVICE": "cuda:1", "WORKER_DTYPE": "bf16",
        "WORKER_WARMUP": "0", "WORKER_MAX_MODELS": "3", "WORKER_MAX_LORAS": "4", "WORKER_UPSCALE_TILE": "0",
        "WORKER_STYLES_FILE": "/s.csv", "WORKER_MAX_CONTROLNETS": "5"})
    assert settings == Settings(Path("/m"), "x.safetensors", "cuda:1", "bf16", False, 3, 4, 0, Path("/s.csv"), 5)
    assert Settings.from_env({"WORKER_WARMUP": "1"}).warmup is True


@pytest.mark.parametrize("variable, value", [("WORKER_MAX_MODELS", "two"), ("WORKER_MAX_MODELS", "0"),
                                             ("WORKER_MAX_LORAS", "-1"), ("WORKER_UPSCALE_TILE", "1.5"),
                                             ("WORKER_MAX_CONTROLNETS", "0")])
def test_a_bad_value_is_an_error_naming_the_variable(variable, value):
    with pytest.raises(SettingsError, match=variable):
        Settings.from_env({variable: value})


def test_the_engine_takes_its_settings_from_the_object(engine_models_dir):
    from engine.runtime import Engine

    settings = Settings(models_dir=engine_models_dir, sd_model="tiny-sd15-inpainting", device="cpu",
                        dtype="float32", max_models=1, max_loras=3, upscale_tile=0)
    started = Engine.start(settings)
    assert started.model.checkpoint.name == "tiny-sd15-inpainting.safetensors"
    assert (started.max_models, started.loras.capacity, started.upscalers.tile) == (1, 3, 0)
    assert started.model.loras.capacity == 3
