"""Variation seeds, seed resize, override_settings (restored afterwards), ENSD and tiling."""

import json

import pytest
import torch

from engine.sampling.noise import batch_noise, image_noise, paste_centred
from engine.tasks.tiling import tiled
from handler.router import route
from handler.worker import make_handler

BASE = {"prompt": "a lighthouse", "steps": 4, "width": 64, "height": 64, "seed": 77}
SHAPE = (4, 8, 8)


def run(engine, **extra):
    return route(engine, "POST", "txt2img", {**BASE, **extra})


def test_subseed_strength_0_is_no_variation_and_1_is_the_subseed():
    plain, _ = image_noise(1, 2, 0, SHAPE)
    assert torch.equal(plain, torch.randn(SHAPE, generator=torch.Generator().manual_seed(1)))
    full, _ = image_noise(1, 2, 1.0, SHAPE)
    torch.testing.assert_close(full, torch.randn(SHAPE, generator=torch.Generator().manual_seed(2)))
    half, _ = image_noise(1, 2, 0.5, SHAPE)
    assert not torch.allclose(half, plain) and not torch.allclose(half, full)


def test_variation_in_images_info_and_infotext(engine):
    plain = run(engine)
    assert run(engine, subseed=5, subseed_strength=0)["images"] == plain["images"]
    varied = run(engine, subseed=5, subseed_strength=0.3, batch_size=2)
    info = json.loads(varied["info"])
    assert info["all_seeds"] == [77, 77] and info["all_subseeds"] == [5, 6]  # A1111: the subseed varies
    assert "Variation seed: 5, Variation seed strength: 0.3" in info["infotexts"][0]
    assert "Variation seed: 6" in info["infotexts"][1]
    assert varied["images"][0] != plain["images"][0] and varied["images"][0] != varied["images"][1]


def test_seed_resize_pastes_the_old_sizes_noise_centred():
    noise, _ = image_noise(3, 0, 0, (4, 8, 12), resize_from=(4, 8, 8))
    old = torch.randn((4, 8, 8), generator=torch.Generator().manual_seed(3))
    assert torch.equal(noise[:, :, 2:10], old)
    assert torch.equal(paste_centred(torch.zeros(1, 4, 4), torch.ones(1, 6, 2))[0, :, 1:3], torch.ones(4, 2))


def test_seed_resize_in_infotext(engine):
    output = run(engine, seed_resize_from_w=48, seed_resize_from_h=32)
    assert "Seed resize from: 48x32" in json.loads(output["info"])["infotexts"][0]
    assert output["images"] != run(engine)["images"]


def test_noise_seed_delta_reseeds_only_the_step_noise():
    noise, generators = batch_noise([4], [0], 0, SHAPE, None, 31337)
    assert torch.equal(noise[0], torch.randn(SHAPE, generator=torch.Generator().manual_seed(4)))
    assert torch.equal(torch.randn(3, generator=generators[0]),
                       torch.randn(3, generator=torch.Generator().manual_seed(4 + 31337)))


def test_ensd_changes_ancestral_samplers_only(engine):
    ensd = {"override_settings": {"eta_noise_seed_delta": 31337}}
    ancestral = run(engine, sampler_name="Euler a", **ensd)
    assert ancestral["images"] != run(engine, sampler_name="Euler a")["images"]
    assert "ENSD: 31337" in json.loads(ancestral["info"])["infotexts"][0]
    plain = run(engine, sampler_name="Euler", **ensd)
    assert plain["images"] == run(engine, sampler_name="Euler")["images"]
    assert "ENSD" not in json.loads(plain["info"])["infotexts"][0]


def test_checkpoint_override_is_restored_afterwards(engine):
    other = run(engine, override_settings={"sd_model_checkpoint": "tiny-sd15-inpainting"})
    assert json.loads(other["info"])["sd_model_name"] == "tiny-sd15-inpainting"
    assert json.loads(run(engine)["info"])["sd_model_name"] == "tiny-sd15"


def test_override_kept_when_restore_afterwards_is_false(engine):
    default = engine.options
    try:
        run(engine, override_settings={"CLIP_stop_at_last_layers": 2}, override_settings_restore_afterwards=False)
        assert json.loads(run(engine)["info"])["clip_skip"] == 2
    finally:
        engine.options = default


@pytest.mark.parametrize("overrides, message", [
    ({"sd_model_checkpoint": "missing-model"}, "override_settings.sd_model_checkpoint: no checkpoint 'missing-model'"),
    ({"sd_vae": "x.safetensors"}, "override_settings.sd_vae: unknown VAE 'x.safetensors'; available: Automatic, None"),
    ({"CLIP_stop_at_last_layers": 0}, "override_settings: CLIP_stop_at_last_layers: "),
])
def test_bad_overrides_are_clear_errors(engine, overrides, message):
    result = make_handler(engine)({"input": {**BASE, "override_settings": overrides}})
    assert result["error"].startswith(message), result


def test_tiling_pads_circularly_during_generation_only(engine):
    convs = [m for m in engine.model.unet.modules() if isinstance(m, torch.nn.Conv2d)]
    with tiled(engine.model.unet):
        assert all(c.padding_mode == "circular" for c in convs)
    assert all(c.padding_mode == "zeros" for c in convs)
    output = run(engine, tiling=True)
    assert "Tiling: True" in json.loads(output["info"])["infotexts"][0]
    assert output["images"] != run(engine)["images"]


@pytest.mark.parametrize("name, adds_noise", [
    ("Euler a", True), ("DPM2 a", True), ("DPM++ 2S a", True), ("DPM++ SDE", True), ("DPM++ 2M SDE", True),
    ("DPM++ 2M SDE Heun", True), ("DPM++ 3M SDE", True), ("Euler", False), ("DPM++ 2M", False), ("DDIM", False),
    ("UniPC", False),
])
def test_ensd_applies_to_the_samplers_that_draw_step_noise(name, adds_noise):
    from schemas.samplers import find_sampler

    assert find_sampler(name)[0].adds_noise is adds_noise


def test_sde_sampler_is_deterministic_and_follows_ensd(engine):
    sde = {"sampler_name": "DPM++ SDE"}
    first = run(engine, **sde)["images"]
    assert run(engine, **sde)["images"] == first
    assert run(engine, override_settings={"eta_noise_seed_delta": 1}, **sde)["images"] != first
